"""The checks of a configuration that read the registries: preset, engine and sink names are
valid when the registry that resolves them has them, so the lists are never copied here (the
judge's templates and parse rules too).

`groupo.config.load_config` checks single keys and the keys that depend on each other; these
checks run on top, in `resolve_config` (every command) and at the start of `train`.
"""

from __future__ import annotations

from groupo.config import Config, ConfigError, LoraConfig


def validate(cfg: Config) -> None:
    """Names that must be registered somewhere: algorithm.preset, rollout.engine, run.sinks, and the
    held-out splits of a generated task. An extra split that no generated task has (a typo) is an
    error; one that another has (the quickstart's `unseen`, under `task.name=countdown`) is skipped
    with one warning line when the task loads, as is one a file task lacks
    (groupo.data.extra_eval_sets). Then lora.init_from's adapter settings are taken into `cfg`
    (adopt_adapter)."""
    from groupo.algorithms.presets import PRESETS
    from groupo.data.builtin import EVAL_SPLITS, check_eval_split
    from groupo.engines import ENGINES
    from groupo.report.sinks import SINKS

    if cfg.algorithm.preset not in PRESETS:
        raise ConfigError(f"algorithm.preset = {cfg.algorithm.preset!r} is unknown; "
                          f"valid presets: {', '.join(PRESETS)}")
    if cfg.rollout.engine not in ENGINES:
        raise ConfigError(f"rollout.engine = {cfg.rollout.engine!r} is unknown; valid: {', '.join(ENGINES)}")
    if bad := [n for n in cfg.run.sinks if n not in SINKS]:
        raise ConfigError(f"run.sinks: unknown sink {bad[0]!r}; valid: {', '.join(SINKS)}")
    check_eval_split(cfg.task.name, cfg.task.eval_split)
    if cfg.task.next_level_share and cfg.task.name != "arithmetic":
        raise ConfigError(f"task.next_level_share applies to the arithmetic task only (task.name = "
                          f"{cfg.task.name!r}); set it to 0")
    if cfg.task.next_level_share and cfg.task.difficulty == 5:
        raise ConfigError("task.next_level_share: arithmetic difficulty 5 is the last level; lower "
                          "task.difficulty or set the share to 0")
    _check_judge(cfg)
    extra = cfg.task.extra_eval_splits
    if twice := next((s for i, s in enumerate(extra) if s in extra[:i] or s == cfg.task.eval_split), None):
        raise ConfigError(f"task.extra_eval_splits: split {twice!r} is already evaluated "
                          f"(task.eval_split = {cfg.task.eval_split!r}, extra: {', '.join(extra)})")
    known = {s for splits in EVAL_SPLITS.values() for s in splits}
    if cfg.task.name in EVAL_SPLITS and (typo := next((s for s in extra if s not in known), None)):
        check_eval_split(cfg.task.name, typo, key="task.extra_eval_splits")
    adopt_adapter(cfg)


def _check_judge(cfg: Config) -> None:
    """rewards.judge: its template and parse rule read, and the API key's variable exists (named without
    its value: had a key been pasted in place of the name, the message must not show it)."""
    import os

    from groupo.rewards.judging import load_template, parse_rule

    J = cfg.rewards.judge
    if not (J.url or J.model):
        return
    try:
        parse_rule(J.parse)
    except ValueError as e:
        raise ConfigError(f"rewards.judge.parse: {e}") from None
    try:
        load_template(J.template)
    except ValueError as e:
        raise ConfigError(f"rewards.judge.template: {e}") from None
    if J.api_key_env and J.api_key_env not in os.environ:
        raise ConfigError("rewards.judge.api_key_env names an environment variable this process does not have: "
                          "export it (export NAME=...) before starting")


def adopt_adapter(cfg: Config) -> None:
    """With lora.init_from: the adapter's rank, alpha, dropout, targets and variant become cfg.lora's, so
    that the saved config.yaml, `groupo config`, `groupo plan` and the vLLM engine's rank slot see them.
    A key the user set to something else (not the default, not the adapter's) is a ConfigError:
    silently training another rank than asked would be worse."""
    if not cfg.lora.init_from:
        return
    from groupo.models.lora import adapter_settings

    default = LoraConfig()
    for key, theirs in adapter_settings(cfg.lora.init_from).items():
        mine = getattr(cfg.lora, key)
        same = sorted(mine) == sorted(theirs) if isinstance(mine, list) else mine == theirs
        if not same and mine != getattr(default, key):
            raise ConfigError(f"lora.{key} = {mine!r} conflicts with the adapter of lora.init_from ({theirs!r}): leave "
                              f"lora.{key} unset, the adapter's is used")
        setattr(cfg.lora, key, theirs)
