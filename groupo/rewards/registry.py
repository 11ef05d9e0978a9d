"""The reward registry and the resolution of `rewards.funcs` names to functions.

A name in `rewards.funcs` is a registry key below, ``package.module:function``, or
``path/to/file.py:function``. User functions keep TRL's signature ``fn(prompts, completions,
**dataset_columns) -> list[float | None]`` and are called as TRL calls them
(`groupo.rewards.trl_compat`); built-in ones additionally get the run's settings (answer
extraction order, check time limit, length limits) bound from the config, where their signature
takes them. `rewards.column_aliases` renames columns in for every function;
`rewards.completion_format = "text"` hands user functions plain-string completions. An `async def`
function runs on the reward event loop under `rewards.max_concurrency` and `rewards.async_timeout_s`
(`groupo.rewards.aio`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from groupo.config import ConfigError
from groupo.rewards import aio
from groupo.rewards.choice import choice_reward
from groupo.rewards.combine import RewardFn
from groupo.rewards.countdown import countdown_reward
from groupo.rewards.extract import DEFAULT_ORDER, check_order
from groupo.rewards.format import answer_format_reward, format_reward, soft_format_reward, tag_count_reward
from groupo.rewards.length import cosine_reward, overlong_reward
from groupo.rewards.math import accuracy_reward
from groupo.rewards.trl_compat import adapt, metric_name

REWARDS: dict[str, RewardFn] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "soft_format": soft_format_reward,
    "tag_count": tag_count_reward,
    "answer_format": answer_format_reward,
    "overlong": overlong_reward,
    "cosine": cosine_reward,
    "countdown": countdown_reward,
    "choice": choice_reward,
}


def load_user_fn(spec: str) -> RewardFn:
    """``module:function`` or ``path/to/file.py:function`` -> the function."""
    if ":" not in spec:
        raise ConfigError(f"reward {spec!r} is unknown; valid: {', '.join(REWARDS)}, "
                          "or module:function, or path/to/file.py:function")
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"reward {spec!r}: file not found: {path}")
        mod_name = f"groupo_user_reward_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ConfigError(f"reward {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ConfigError(f"reward {spec!r}: cannot import module {target!r}: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward {spec!r}: {target} has no function {name!r}")
    return fn


def _bind(fn: RewardFn, options: dict[str, Any]) -> RewardFn:
    """Bind the options `fn`'s signature names (built-in rewards only)."""
    params = inspect.signature(fn).parameters
    given = {k: v for k, v in options.items() if k in params}
    return functools.partial(fn, **given) if given else fn


def reward_options(rewards: Any, max_completion_length: int | None, sandbox: Any = None) -> dict[str, Any]:
    """The settings built-in rewards take, from a `RewardsConfig` (and a `SandboxConfig`, for the
    rewards that run code)."""
    try:
        order = check_order(getattr(rewards, "extract_order", DEFAULT_ORDER))
    except ValueError as e:
        raise ConfigError(f"rewards.extract_order: {e}") from None
    options = {"extract_order": order, "timeout_s": rewards.timeout_s,
               "overlong_buffer": rewards.overlong_buffer}
    if sandbox is not None:
        options |= {"sandbox_workers": sandbox.workers, "sandbox_memory_mb": sandbox.memory_mb}
    if max_completion_length is not None:
        options["max_completion_length"] = max_completion_length
    return options


def resolve_rewards(rewards: Any, defaults: Any, max_completion_length: int | None = None,
                    sandbox: Any = None) -> dict[str, tuple[RewardFn, float]]:
    """name -> (function, weight) for the configured rewards, or the task's defaults.

    rewards: a `RewardsConfig` (its `funcs`, and settings bound into built-in rewards), or a plain
        mapping name -> weight.
    defaults: the `Task` (its `rewards`) or a mapping name -> weight, used when `funcs` is empty.
    max_completion_length: the generation limit in tokens (`rollout.max_new_tokens`), needed by
        the length rewards. With a RewardsConfig whose `overlong_buffer > 0`, DAPO's "overlong"
        reward is added with weight `overlong_penalty` unless `funcs` already names it.
    sandbox: a `SandboxConfig`, whose workers and memory limit the code rewards get (default: theirs).
    """
    is_cfg = not isinstance(rewards, dict)
    funcs = rewards.funcs if is_cfg else rewards
    spec = dict(funcs or (defaults if isinstance(defaults, dict) else defaults.rewards))
    options = reward_options(rewards, max_completion_length, sandbox) if is_cfg else {}
    if is_cfg and rewards.overlong_buffer > 0:
        if max_completion_length is None or rewards.overlong_buffer > max_completion_length:
            raise ConfigError(f"rewards.overlong_buffer = {rewards.overlong_buffer} needs "
                              f"max_completion_length (rollout.max_new_tokens = {max_completion_length}) "
                              "at least as large")
        spec.setdefault("overlong", rewards.overlong_penalty)
    aliases = dict(getattr(rewards, "column_aliases", {}) or {})
    as_text = getattr(rewards, "completion_format", "trl") == "text"
    lim = aio.limits(rewards.max_concurrency, rewards.async_timeout_s) if is_cfg else aio.DEFAULT_LIMITS
    out: dict[str, tuple[RewardFn, float]] = {}
    for name, weight in spec.items():
        if name in REWARDS:
            fn = adapt(_bind(REWARDS[name], options), aliases, False)
        else:
            fn = adapt(load_user_fn(name), aliases, as_text)
        out[name] = (aio.Limited(fn, lim) if aio.is_async(fn) else fn, float(weight))
    seen: dict[str, str] = {}
    for name in out:  # metric keys carry a file's name, not its path (trl_compat.metric_name)
        if (other := seen.setdefault(metric_name(name), name)) != name:
            raise ConfigError(f"rewards.funcs: {other!r} and {name!r} would share the metric name "
                              f"{metric_name(name)!r}; give the two files different names")
    return out


# Rewards that run or check code (groupo.rewards.code; programs run in groupo.sandbox.run).
from groupo.rewards.code import CODE_REWARDS  # noqa: E402

REWARDS.update(CODE_REWARDS)
