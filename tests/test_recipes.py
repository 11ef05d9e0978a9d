"""Every recipe in configs/: its settings are the ones its header cites, and it trains in smoke
form (`groupo train RECIPE --smoke`, with the tiny test model instead of the built-in one) so
that none can rot. A smoke run takes about a second."""

import json
import math
from pathlib import Path

import pytest
import yaml
from tiny import save_tiny

from groupo.algorithms.presets import loss_settings
from groupo.cli import main
from groupo.config import load_config, to_dict
from groupo.smoke import SMOKE, smoke_settings

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
# (recipe, extra overrides): every recipe as written, plus the variants its header names.
# A random tiny model earns no reward on real tasks, so dynamic sampling (DAPO) drops every group;
# the dapo run with a reward that varies between samples also exercises its update.
VARYING = 'rewards.funcs={accuracy: 1.0, "{reward_file}:digit_share": 1.0}'
RUNS = [(p.name, []) for p in RECIPES] + [("gspo.yaml", ["algorithm.preset=gspo_token"]), ("dapo.yaml", [VARYING])]
REWARD_FILE = '''
def digit_share(prompts, completions, **kwargs):
    texts = [c[-1]["content"] for c in completions]  # chat prompts: completions are message lists
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]
'''


def _get(tree: dict, key: str):
    for part in key.split("."):
        tree = tree[part]
    return tree


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize(("name", "extra"), RUNS, ids=[" ".join([n, *e]) for n, e in RUNS])
def test_recipe_trains_in_smoke_form(name, extra, tiny_dir, tmp_path):
    recipe = ROOT / "configs" / name
    run = tmp_path / "run"
    (tmp_path / "reward.py").write_text(REWARD_FILE)
    extra = [e.replace("{reward_file}", str(tmp_path / "reward.py")) for e in extra]
    rc = main(["train", str(recipe), "--smoke", *extra, f"model.name={tiny_dir}", f"run.dir={run}",
               "run.progress=plain"])
    assert rc == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    full = load_config(recipe, extra)
    prompts = SMOKE["train.prompts_per_step"]
    for r in rows:
        if r["rollout/groups_used"] == 0:  # dynamic sampling found no group with a signal: all draws dropped
            assert loss_settings(full.algorithm).dynamic_sampling and r["rollout/zero_var_group_frac"] == 1.0
            assert r["reward/mean"] is None and r["data_position"] == r["step"] * full.algorithm.max_draws * prompts
            continue
        assert 0 < r["rollout/groups_used"] <= prompts  # dynamic sampling may keep fewer after its draws
        assert all(math.isfinite(r[k]) for k in ("reward/mean", "loss/total", "optim/grad_norm"))
        assert 0 < r["completion/len_max"] <= SMOKE["rollout.max_new_tokens"]
    varying = any("digit_share" in e for e in extra)
    if varying or not loss_settings(full.algorithm).dynamic_sampling:  # then every step updates on full groups
        assert all(r["rollout/groups_used"] == prompts for r in rows)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    smoke = smoke_settings(full)
    for key, value in smoke.items():
        if key != "model.name":  # the test swaps the tiny model in after --smoke
            assert _get(saved, key) == value, key
    assert saved["model"]["name"] == str(tiny_dir)
    assert (saved["rollout"]["group_size"], saved["train"]["steps"]) == (2, 2)
    # what --smoke leaves alone is the recipe's own: loss, rewards, LoRA, task, learning rate
    full_tree = to_dict(full)
    for key in ("algorithm", "lora", "rewards.funcs", "rewards.extract_order", "task.name", "task.prompt_style",
                "task.system_prompt", "train.lr", "train.adam_betas", "rollout.temperature"):
        assert _get(saved, key) == _get(full_tree, key), key
    if full.task.name == "mix" or full.task.path:
        assert "groupo/data/samples" in json.dumps(saved["task"])  # the bundled sample data


def _full(name: str, *extra: str):
    cfg = load_config(ROOT / "configs" / name, list(extra))
    return cfg, loss_settings(cfg.algorithm)


def test_deepseekmath_recipe_has_the_papers_settings():
    cfg, loss = _full("deepseekmath_grpo.yaml")
    assert cfg.model.name == "deepseek-ai/deepseek-math-7b-instruct"
    assert (cfg.rollout.group_size, cfg.rollout.max_new_tokens, cfg.train.lr) == (64, 1024, 1e-6)
    assert cfg.rollout.group_size * cfg.train.prompts_per_step == 1024  # completions per step
    assert (loss.beta, loss.kl_estimator, cfg.algorithm.num_iterations) == (0.04, "k3", 1)
    assert (loss.ratio_level, loss.aggregation, loss.adv_scale) == ("token", "seq_mean_token_mean", "group")
    assert cfg.task.name == "mix" and set(cfg.task.mix) == {"gsm8k", "math"}
    assert cfg.rewards.funcs == {"accuracy": 1.0}


def test_r1_zero_recipe_has_rule_rewards_and_no_kl():
    cfg, loss = _full("r1_zero.yaml")
    assert cfg.rewards.funcs == {"accuracy": 1.0, "format": 1.0}
    assert cfg.task.prompt_style == "r1" and cfg.task.system_prompt is None  # the R1-Zero template
    assert loss.beta == 0.0
    assert (cfg.rollout.group_size, cfg.rollout.temperature, cfg.train.lr) == (16, 1.0, 3e-6)
    assert not cfg.model.name.endswith("Instruct")  # R1-Zero starts from a base model


def test_gspo_recipe_and_its_token_variant():
    cfg, loss = _full("gspo.yaml")
    assert (loss.ratio_level, loss.eps_low, loss.eps_high, loss.beta) == ("sequence", 3e-4, 4e-4, 0.0)
    assert cfg.algorithm.num_iterations == 4  # off-policy updates, where the clipping acts
    _, token = _full("gspo.yaml", "algorithm.preset=gspo_token")
    assert (token.ratio_level, token.eps_low, token.eps_high) == ("sequence_token", 3e-4, 4e-4)


def test_unsloth_recipe_is_lora_on_attention_with_alpha_equal_rank():
    cfg, loss = _full("unsloth_lora_grpo.yaml")
    assert "Llama-3.2-1B-Instruct" in cfg.model.name
    assert cfg.lora.rank == cfg.lora.alpha == 32
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.task.name == "metamath"
    assert cfg.rewards.funcs["accuracy"] == 2.0 and {"format", "soft_format", "tag_count"} <= set(cfg.rewards.funcs)
    assert (cfg.rollout.group_size, cfg.rollout.max_new_tokens, cfg.train.lr, loss.beta) == (6, 200, 5e-6, 0.04)
    assert (cfg.train.max_grad_norm, cfg.train.weight_decay, cfg.train.adam_betas) == (0.1, 0.1, [0.9, 0.99])


def test_code_recipes():
    cfg, _ = _full("code_solver.yaml")
    assert cfg.model.name == "Qwen/Qwen2.5-Coder-1.5B-Instruct" and cfg.lora.rank > 0
    assert cfg.task.name == "code_math_zh" and cfg.task.prompt_style  # CMATH train, MGSM-zh eval
    assert cfg.rewards.funcs["python_output"] == 1.0
    assert {"code_format", "python_number", "code_tags"} <= set(cfg.rewards.funcs)  # format + partial credit
    cfg, _ = _full("code_solver_tir.yaml")  # the same problems as episodes with the python tool
    assert (cfg.model.name, cfg.task.name) == ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "code_math_zh")
    assert (cfg.episodes.tool_format, cfg.episodes.tools, cfg.task.prompt_style) == ("python_block", ["python"],
                                                                                     "python_tool")
    assert cfg.rewards.funcs == {"accuracy": 1.0, "answer_format": 0.1}
    cfg, _ = _full("tools_quickstart.yaml")
    assert (cfg.task.name, cfg.episodes.tool_format, cfg.model.name) == ("big_arithmetic", "python_block",
                                                                         "smollm2-135m-instruct")
    cfg, _ = _full("code_quality.yaml")
    assert cfg.task.name == "mbpp"
    assert set(cfg.rewards.funcs) == {"tests_pass", "compiles", "lint_clean"}


def test_mcq_recipe_scores_the_chosen_letter_on_the_example_set():
    cfg, loss = _full("mcq.yaml")
    assert (cfg.task.name, cfg.task.path, cfg.task.prompt_style) == ("mcq", "examples/mcq", "choice")
    assert cfg.rewards.funcs == {"choice": 1.0, "answer_format": 0.1}
    assert (cfg.lora.rank, cfg.lora.alpha, loss.beta) == (16, 32.0, 0.04)
    assert (ROOT / cfg.task.path / "train.jsonl").is_file() and (ROOT / cfg.task.path / "test.jsonl").is_file()


def test_dr_grpo_and_dapo_recipes():
    cfg, loss = _full("dr_grpo.yaml")
    assert (loss.adv_scale, loss.aggregation, loss.beta) == ("none", "seq_sum_norm", 0.0)
    cfg, loss = _full("dapo.yaml")
    assert (loss.eps_low, loss.eps_high, loss.aggregation, loss.dynamic_sampling, loss.beta) == (
        0.2, 0.28, "token_mean", True, 0.0)
    assert (cfg.rewards.overlong_buffer, cfg.rollout.max_new_tokens) == (4096, 16384 + 4096)
    assert cfg.train.warmup_steps == 20


def test_every_recipe_names_its_source_and_its_smoke_form():
    for path in RECIPES:
        header = path.read_text(encoding="utf-8").split("\n\n")[0]
        assert f"groupo train configs/{path.name}" in header, path.name
        assert "--smoke" in header, path.name
