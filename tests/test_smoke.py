"""`--smoke` (groupo/smoke.py), the bundled sample data it uses, and `task.name: mix`."""

from pathlib import Path

import pytest
import yaml

from groupo.cli import main
from groupo.config import QUICKSTART_YAML, ConfigError, TaskConfig, load_config, quickstart_config
from groupo.data import DataError, load_task
from groupo.smoke import SAMPLE_DIRS, SAMPLES, SMOKE, smoke_settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def test_smoke_settings_swap_model_sizes_and_data_but_keep_the_recipe(tmp_path):
    cfg = load_config(ROOT / "configs" / "deepseekmath_grpo.yaml")
    s = smoke_settings(cfg)
    assert {k: s[k] for k in SMOKE} == SMOKE
    assert s["task.mix"] == {"gsm8k": str(SAMPLES / "gsm8k"), "math": str(SAMPLES / "math")}
    assert s["run.name"] == "deepseekmath-grpo-smoke"
    assert not any(k.startswith(("algorithm.", "lora.", "rewards.")) for k in s)  # the recipe's own
    s = smoke_settings(load_config(ROOT / "configs" / "dapo.yaml"))
    assert s["rewards.overlong_buffer"] == 4 and s["task.path"] == str(SAMPLES / "math")
    s = smoke_settings(quickstart_config())  # a synthetic task keeps its (absent) path
    assert "task.path" not in s and "task.mix" not in s


def test_smoke_makes_a_recipes_judge_the_built_in_model_in_process(tmp_path, capsys):
    recipe = tmp_path / "judged.yaml"
    recipe.write_text("rewards:\n  judge: {url: 'https://api.example.com/v1', model: big-judge, "
                      "api_key_env: EXAMPLE_KEY, weight: 0.3}\n")
    s = smoke_settings(load_config(recipe))
    assert {k: s[k] for k in s if k.startswith("rewards.judge")} == {
        "rewards.judge.url": "", "rewards.judge.api_key_env": "", "rewards.judge.model": "smollm2-135m-instruct",
        "rewards.judge.max_tokens": 24, "rewards.judge.think": False}
    assert main(["config", str(recipe), "--smoke"]) == 0  # no key variable needed
    judge = yaml.safe_load(capsys.readouterr().out.split("effective configuration:")[-1])["rewards"]["judge"]
    assert (judge["url"], judge["weight"]) == ("", 0.3)


def test_smoke_goes_before_the_command_line_overrides(capsys):
    assert main(["config", "configs/gsm8k.yaml", "--smoke", "train.steps=5", "task.eval_size=3"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert (out["train"]["steps"], out["task"]["eval_size"]) == (5, 3)  # the command line wins
    assert (out["rollout"]["group_size"], out["model"]["name"]) == (2, "smollm2-135m-instruct")
    assert out["algorithm"]["beta"] == 0.04 and out["task"]["path"] == str(SAMPLES / "gsm8k")
    assert main(["config", "configs/gsm8k.yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["rollout"]["group_size"] == 8


def test_smoke_refuses_resume(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("{}")
    assert main(["train", "--resume", str(tmp_path), "--smoke"]) == 2
    assert "--smoke applies to new runs only" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SAMPLE_DIRS))
def test_every_sample_folder_loads_with_its_task(name):
    language = "zh" if name.startswith("mgsm") else "en"
    split = "test" if name in ("math500", "mgsm", "mgsm_code", "cmath", "cmath_code", "humaneval") else "train"
    task = load_task(TaskConfig(name=name, path=str(SAMPLES / SAMPLE_DIRS[name]), language=language, split=split))
    assert len(task.train) >= 2 and len(task.test) >= 2
    assert all(p.answer for p in task.test)


def test_quickstart_default_is_the_packaged_yaml_file():
    assert (ROOT / "configs" / "quickstart.yaml").resolve() == QUICKSTART_YAML.resolve()
    assert quickstart_config() == load_config(QUICKSTART_YAML)
    assert quickstart_config().run.name == "quickstart" and quickstart_config().algorithm.beta == 0.0


def _mix(**kw) -> TaskConfig:
    return TaskConfig(name="mix", mix={"gsm8k": str(SAMPLES / "gsm8k"), "math": str(SAMPLES / "math")}, **kw)


def test_mix_pools_training_problems_and_alternates_the_test_sets():
    task = load_task(_mix(eval_size=0))
    gsm8k, math = load_task(TaskConfig(name="gsm8k", path=str(SAMPLES / "gsm8k"))), load_task(
        TaskConfig(name="math", path=str(SAMPLES / "math")))
    assert sorted(p.id for p in task.train) == sorted(p.id for p in [*gsm8k.train, *math.train])
    assert len(task.train) == 8 and {p.id.split("-")[0] for p in task.train[:8]} == {"gsm8k", "math"}
    assert [p.id for p in task.test] == ["gsm8k-test-0", "math-test-0", "gsm8k-test-1", "math-test-1"]
    assert task.rewards == gsm8k.rewards and task.name == "mix-gsm8k+math"
    assert [p.id for p in load_task(_mix(eval_size=3)).test] == ["gsm8k-test-0", "math-test-0", "gsm8k-test-1"]
    assert len(load_task(_mix(train_size=3)).train) == 3
    assert [p.id for p in load_task(_mix(seed=1)).train] != [p.id for p in task.train]  # seeded shuffle


def test_mix_errors_are_clear():
    with pytest.raises(DataError, match="at least two tasks"):
        load_task(TaskConfig(name="mix", mix={"gsm8k": str(SAMPLES / "gsm8k")}))
    with pytest.raises(DataError, match="different rewards"):
        load_task(TaskConfig(name="mix", mix={"gsm8k": str(SAMPLES / "gsm8k"), "countdown": None}))
    with pytest.raises(ConfigError, match=r"task\.mix = .*wrong type"):
        load_config(None, ["task.mix=[gsm8k, math]"])


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")
def test_mix_on_the_real_files():
    task = load_task(TaskConfig(name="mix", mix={"gsm8k": str(DATA / "gsm8k"), "svamp": str(DATA / "svamp")},
                                split="test", eval_size=4))
    assert len(task.train) == 1319 + 1000  # GSM8K test + SVAMP (both read as their test split)
    assert [p.id.split("-")[0] for p in task.test] == ["gsm8k", "svamp", "gsm8k", "svamp"]
    with pytest.raises(DataError, match=r"math.*test set and has no 'train' split"):
        load_task(TaskConfig(name="mix", mix={"gsm8k": str(DATA / "gsm8k"), "math": str(DATA / "math")}))


@pytest.mark.skipif(not DATA.is_dir(), reason=f"no shared data at {DATA}")
def test_code_math_zh_trains_on_cmath_and_evaluates_on_mgsm_zh():
    task = load_task(TaskConfig(name="code_math_zh", path=str(DATA), eval_size=0))
    assert (len(task.train), len(task.test)) == (600, 250)
    assert task.test[0].answer == "18" and task.test[0].question.startswith("珍妮特的鸭子每天下 16 颗蛋")
    assert "print" in task.train[0].question and task.eval_reward == "python_output"
    assert {p.columns["language"] for p in task.train} == {"zh"}
