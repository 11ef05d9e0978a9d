"""Config: YAML round trip, overrides, every user-facing error, every shipped recipe loads."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from groupo.cli import main
from groupo.commands.resolve import resolve_config
from groupo.config import AlgorithmConfig, ConfigError, dump_yaml, from_dict, load_config, quickstart_config

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_required_keys_exist():
    cfg = load_config(None)
    for key in ("model.name", "lora.rank", "task.name", "rollout.group_size", "rollout.max_new_tokens",
                "algorithm.preset", "algorithm.beta", "train.steps", "train.prompts_per_step",
                "train.seed", "run.dir"):
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key


def test_yaml_then_overrides(tmp_path):
    p = _write(tmp_path, "algorithm:\n  preset: dapo\n  beta: 0.01\ntrain:\n  steps: 5\n")
    cfg = load_config(p, ["train.steps=7", "lora.target_modules=[q_proj, v_proj]", "algorithm.eps_high=0.3"])
    assert cfg.algorithm.preset == "dapo"
    assert cfg.algorithm.beta == 0.01
    assert cfg.train.steps == 7  # the command line wins over the file
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.algorithm.eps_high == 0.3
    assert isinstance(load_config(None, ["train.lr=1"]).train.lr, float)  # int widens to float
    assert load_config(None, ["train.lr=3e-4"]).train.lr == 3e-4  # YAML 1.1 reads this as a string
    p = _write(tmp_path, "train:\n  lr: 5e-5\n", "lr.yaml")
    assert load_config(p).train.lr == 5e-5


def test_round_trip(tmp_path):
    cfg = load_config(None, ["algorithm.preset=gspo", "rewards.funcs={accuracy: 1.0, format: 0.5}",
                             "run.dir=/tmp/x", "algorithm.beta=null"])
    again = from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    p = _write(tmp_path, dump_yaml(cfg))
    assert load_config(p) == cfg


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"algorithm\.betaa.*did you mean algorithm\.beta\?"):
        load_config(None, ["algorithm.betaa=0.1"])
    with pytest.raises(ConfigError, match=r"did you mean train\.steps\?"):
        load_config(None, ["train.step=3"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = _write(tmp_path, "rollout:\n  group_sise: 4\n")
    with pytest.raises(ConfigError, match=rf"{p}.*rollout\.group_sise.*did you mean rollout\.group_size\?"):
        load_config(p)


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError, match=r"train\.steps = 'many'.*expected an integer"):
        load_config(None, ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"algorithm\.ratio_level = 'word'.*one of 'token'"):
        load_config(None, ["algorithm.ratio_level=word"])


def test_out_of_range_names_the_range():
    with pytest.raises(ConfigError, match=r"rollout\.group_size = 0 is out of range; allowed: \[2, inf\]"):
        load_config(None, ["rollout.group_size=0"])
    with pytest.raises(ConfigError, match=r"lora\.dropout = 1\.5 is out of range; allowed: \[0, 1\]"):
        load_config(None, ["lora.dropout=1.5"])
    with pytest.raises(ConfigError, match=r"rollout\.temperature = 0\.0 .*\(0, inf\]"):
        load_config(None, ["rollout.temperature=0"])


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid presets: grpo, dr_grpo, dapo, gspo, gspo_token, cispo"):
        resolve_config(None, ["algorithm.preset=ppo"])


def test_missing_and_malformed_yaml_name_file_and_line(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")
    p = _write(tmp_path, "train:\n  steps: 3\n  lr: [1e-4\nrun:\n  dir: x\n")
    with pytest.raises(ConfigError, match=rf"{p}, line \d+, column \d+: malformed YAML"):
        load_config(p)
    p = _write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_cli_errors_exit_nonzero_without_traceback():
    r = subprocess.run([sys.executable, "-m", "groupo", "config", "algorithm.betaa=1"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "did you mean algorithm.beta?" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_config_prints_resolved(capsys):
    assert main(["config", "train.steps=3"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["train"]["steps"] == 3
    assert out["algorithm"]["preset"] == "grpo"


def test_cli_presets_table(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("grpo", "dr_grpo", "dapo", "gspo", "gspo_token", "cispo", "2402.03300",
                 "2503.14476", "2507.18071", "2506.13585", "2503.20783"):
        assert name in out


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_quickstart_yaml_is_the_default():
    """`groupo train` with no config must be exactly configs/quickstart.yaml."""
    assert load_config(ROOT / "configs" / "quickstart.yaml") == quickstart_config()
    assert quickstart_config(["train.steps=2"]).train.steps == 2
    assert load_config(None).algorithm.beta is None  # plain defaults keep the preset's beta


def test_every_loss_setting_is_a_config_key_and_reaches_the_loss():
    """The run's LossSettings are built once from the config: each setting a user can set lands in
    it (no key silently ignored), and unset ones keep the preset's value."""
    from groupo.algorithms.presets import LossSettings, get_preset, loss_settings

    names = {f.name for f in dataclasses.fields(LossSettings)}
    assert names <= {f.name for f in dataclasses.fields(AlgorithmConfig)}
    assert loss_settings(load_config(None, ["algorithm.preset=dapo"]).algorithm) == get_preset("dapo")
    s = loss_settings(load_config(None, ["algorithm.preset=dapo", "algorithm.eps_high=0.3", "algorithm.beta=0.01",
                                         "algorithm.mask_truncated=true", "algorithm.adv_std=population"]).algorithm)
    assert (s.eps_high, s.beta, s.mask_truncated, s.adv_std, s.eps_low) == (0.3, 0.01, True, "population", 0.2)


def test_the_algorithm_section_is_the_loss_settings_declared_once():
    """Each LossSettings field is an `algorithm.` key of the same type or null, with the same help
    and range; the section's other keys are the ones that are not loss settings."""
    import typing

    from groupo.types import LossSettings

    keys = {f.name: f for f in dataclasses.fields(AlgorithmConfig)}
    hints = typing.get_type_hints(AlgorithmConfig)
    for f, tp in zip(dataclasses.fields(LossSettings), typing.get_type_hints(LossSettings).values(), strict=True):
        assert hints[f.name] == (tp | None), f.name
        assert keys[f.name].default is None
        for m in ("help", "min", "max"):
            assert keys[f.name].metadata.get(m) == f.metadata.get(m), (f.name, m)
    own = set(keys) - {f.name for f in dataclasses.fields(LossSettings)}
    assert own == {"preset", "num_iterations", "max_draws", "tis_cap", "is_correction", "is_upper", "is_lower",
                   "off_policy_mask_threshold", "entropy_target", "entropy_coef_delta", "entropy_coef_min",
                   "entropy_coef_max", "engine_old_logprobs"}


def test_config_module_imports_no_other_groupo_module_but_types():
    import ast

    tree = ast.parse((ROOT / "groupo" / "config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("groupo")} == {"groupo.types"}


def test_groupo_config_without_a_file_prints_what_train_without_a_file_runs(capsys):
    assert main(["config"]) == 0
    bare = capsys.readouterr().out
    assert main(["config", str(ROOT / "configs" / "quickstart.yaml")]) == 0
    assert capsys.readouterr().out == bare
    assert "max_minutes: 15" in bare  # the quickstart's, not the dataclass default


@pytest.mark.parametrize("override", ["train.lr=.nan", "rollout.temperature=.nan", "train.lr=.inf",
                                      "algorithm.beta=.nan", "rewards.timeout_s=.inf"])
def test_nan_and_inf_are_refused_by_name(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} = (nan|inf) is not a finite number"):
        load_config(None, [override])


def test_a_group_of_one_is_refused():
    with pytest.raises(ConfigError, match=r"rollout\.group_size = 1 is out of range; allowed: \[2, inf\]"):
        load_config(None, ["rollout.group_size=1"])


@pytest.mark.parametrize("stop", ['[""]', '["</answer>", " "]', '["\\n\\t"]'])
def test_an_empty_or_blank_stop_string_is_refused(stop):
    with pytest.raises(ConfigError, match=r"^rollout\.stop: '.*' is empty or whitespace only, so every completion "
                                          r"would end at its first token or line break; remove it$"):
        load_config(None, [f"rollout.stop={stop}"])
    assert load_config(None, ['rollout.stop=["</answer>", "x "]']).rollout.stop == ["</answer>", "x "]


def test_an_empty_stop_string_is_one_line_and_exit_status_2(capsys):
    from groupo.cli import main

    assert main(["train", 'rollout.stop=[""]']) == 2  # before: 0, and a run that learned nothing
    assert capsys.readouterr().err == ("groupo: error: rollout.stop: '' is empty or whitespace only, so every "
                                       "completion would end at its first token or line break; remove it\n")


def test_a_section_written_twice_is_an_error_naming_both_lines(tmp_path):
    p = _write(tmp_path, "train:\n  steps: 3\nrollout:\n  group_size: 4\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))}, line 5.*'train' appears twice.*line 1"):
        load_config(p)


def test_a_config_that_is_not_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("train:\n  steps: 3\nrun:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(p))}, line 4: not UTF-8 text.*save the file as UTF-8"):
        load_config(p)


def test_a_run_dir_left_by_a_failed_start_can_be_used_again(tmp_path):
    from groupo.commands.train import holds_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # the start failed before its first step
    (run / "config.yaml").write_text("train: {steps: 1}\n")
    assert not holds_run(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert holds_run(run)
    (run / "metrics.jsonl").write_text("")
    (run / "checkpoints" / "step-10").mkdir(parents=True)
    assert holds_run(run)


# Keys that moved into sections of their own: the old name, its new one, and a value to set.
OLD_KEYS = [("rollout.tool_format", "episodes.tool_format", "python_block"),
            ("rollout.tools", "episodes.tools", ["python"]), ("rollout.max_turns", "episodes.max_turns", 3),
            ("rollout.max_tool_output_tokens", "episodes.max_tool_output_tokens", 40),
            ("rollout.tool_timeout_s", "episodes.tool_timeout_s", 2.5),
            ("rewards.sandbox_workers", "sandbox.workers", 3), ("rewards.sandbox_memory_mb", "sandbox.memory_mb", 512),
            ("rollout.vllm_url", "rollout.vllm.url", "http://127.0.0.1:9"),
            ("rollout.vllm_kv_cache_gb", "rollout.vllm.kv_cache_gb", 2),
            ("rollout.vllm_memory_share", "rollout.vllm.memory_share", 0.5),
            ("rollout.vllm_max_model_len", "rollout.vllm.max_model_len", 256),
            ("rollout.vllm_timeout_s", "rollout.vllm.timeout_s", 30.0)]


def _get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize(("old", "new", "value"), OLD_KEYS)
def test_an_old_key_sets_its_new_one_with_one_warning_line(old, new, value, caplog):
    extra = {"vllm": ["rollout.engine=vllm"], "tools": ["episodes.tool_format=python_block"]}
    extra = next((v for k, v in extra.items() if k in old), [])
    with caplog.at_level("WARNING", logger="groupo"):
        cfg = load_config(None, [*extra, f"{old}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    assert _get(cfg, new) == value
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: command line: {old} is now {new} (the old name still works)"]


def test_a_run_saved_with_the_old_layout_loads_silently_and_the_new_layout_is_printed(tmp_path, caplog, capsys):
    """A config.yaml saved by an earlier version (flat tool, sandbox and vLLM keys) rebuilds the same
    Config as the new layout, without warnings (resume reads it back); `groupo config` prints the new."""
    new = load_config(None, ["episodes.tool_format=python_block", "episodes.max_turns=3", "sandbox.workers=2",
                             "rollout.vllm.kv_cache_gb=2"])
    saved = yaml.safe_load(dump_yaml(new))
    rollout = saved["rollout"]
    rollout.update({"tool_format": "python_block", "max_turns": 3, "tools": [], "environment": "",
                    "max_tool_output_tokens": 256, "tool_timeout_s": 10.0,
                    **{f"vllm_{k}": v for k, v in rollout.pop("vllm").items()}})
    saved["rewards"].update(sandbox_workers=2, sandbox_memory_mb=1024)
    del saved["episodes"], saved["sandbox"]
    with caplog.at_level("WARNING", logger="groupo"):
        assert from_dict(saved) == new
    assert caplog.records == []
    assert main(["config", "episodes.max_turns=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["episodes"]["max_turns"] == 3 and "vllm" in printed["rollout"] and "sandbox" in printed
    assert not {"tool_format", "vllm_url"} & set(printed["rollout"]) and "sandbox_workers" not in printed["rewards"]
