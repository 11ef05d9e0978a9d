"""`groupo train RECIPE --smoke`: any recipe, shrunk to a run of seconds on a CPU with no files.

The smoke overrides are applied after the recipe and before the command line's own `key=value`
overrides (so `--smoke model.name=other` still wins). They are:

* `SMOKE` below: the built-in model, the transformers engine, two steps of two prompts x two
  completions of at most 16 new tokens, a two-problem evaluation before and after, no time
  budget, no warm-up and no periodic checkpoints;
* data: a recipe whose task reads files (`task.path`, or each path of `task.mix`) is pointed at
  the few hand-written problems bundled in `groupo/data/samples/` in that dataset's format
  (`SAMPLE_DIRS`); synthetic tasks keep their settings;
* `rewards.overlong_buffer`, where the recipe sets one, shrinks to `SMOKE_OVERLONG_BUFFER` so it
  still fits in the 16-token completions;
* a judge (`rewards.judge`), where the recipe has one, becomes the built-in model in this process,
  asked for the verdict alone (`think: false`) in at most `SMOKE_JUDGE_TOKENS` tokens: no server
  and no key is needed.

Everything else (the preset, beta, clip bounds, learning rate, LoRA, rewards, prompt style) stays
as the recipe says, so a smoke run exercises the recipe's own loss, rewards and data loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from groupo.config import Config, dump_yaml, load_config, quickstart_config

SMOKE: dict[str, Any] = {
    "model.name": "smollm2-135m-instruct",
    "model.dtype": "float32",
    "model.autocast": "auto",
    "model.revision": None,
    "rollout.engine": "hf",
    "rollout.group_size": 2,
    "rollout.max_new_tokens": 16,
    "rollout.batch_size": 8,
    "task.eval_size": 2,
    "task.train_size": 0,
    "train.steps": 2,
    "train.prompts_per_step": 2,
    "train.micro_batch_size": 4,
    "train.warmup_steps": 0,
    "train.eval_every": 0,
    "train.save_every": 0,
    "train.max_minutes": 0.0,
    "run.samples_per_step": 1,
}
SMOKE_OVERLONG_BUFFER = 4
SMOKE_JUDGE_TOKENS = 24

SAMPLES = Path(__file__).parent / "data" / "samples"
# task name -> the folder (under SAMPLES) holding its sample files; code_math reads the whole root.
SAMPLE_DIRS: dict[str, str] = {
    "gsm8k": "gsm8k", "gsm8k_code": "gsm8k", "math": "math", "math500": "math", "metamath": "metamath",
    "mgsm": "mgsm", "mgsm_code": "mgsm", "cmath": "cmath", "cmath_code": "cmath", "code_math": ".", "code_math_zh": ".",
    "mbpp": "mbpp", "humaneval": "humaneval", "mcq": "mcq",
}


def _sample(name: str, path: str | None) -> str | None:
    return str(SAMPLES / SAMPLE_DIRS[name]) if name in SAMPLE_DIRS else path


def smoke_settings(recipe: Config) -> dict[str, Any]:
    """The dotted key -> value overrides `--smoke` applies to `recipe` (see the module doc)."""
    out = dict(SMOKE)
    task = recipe.task
    if task.name == "mix":
        out["task.mix"] = {name: _sample(name, path) for name, path in task.mix.items()}
    elif task.name in SAMPLE_DIRS:
        out["task.path"] = _sample(task.name, task.path)
        if task.name == "mgsm" or task.name == "mgsm_code":
            out["task.language"] = "zh"  # the one MGSM language bundled
    if recipe.rewards.overlong_buffer > 0:
        out["rewards.overlong_buffer"] = SMOKE_OVERLONG_BUFFER
    if recipe.rewards.judge.url or recipe.rewards.judge.model:
        out |= {"rewards.judge.url": "", "rewards.judge.api_key_env": "", "rewards.judge.model": SMOKE["model.name"],
                "rewards.judge.max_tokens": SMOKE_JUDGE_TOKENS, "rewards.judge.think": False}
    out["run.name"] = f"{recipe.run.name}-smoke"
    return out


def smoke_overrides(path: str | None) -> list[str]:
    """`smoke_settings` of the recipe at `path` (None: the quickstart) as `key=value` overrides."""
    recipe = load_config(path) if path is not None else quickstart_config()
    return [f"{key}={json.dumps(value)}" for key, value in smoke_settings(recipe).items()]


def announce(path: str | None, smoke: list[str], overrides: list[str]) -> None:
    """Print what `--smoke` changed and the effective configuration the run will use."""
    cfg = load_config(path, smoke + overrides) if path is not None else quickstart_config(smoke + overrides)
    print(f"--smoke: {path or 'the quickstart'} with " + " ".join(smoke))
    print("effective configuration:\n" + dump_yaml(cfg))
