"""Checks of a configuration that involve more than one key; single keys are checked as they are
set (groupo.config.set_key). load_config runs these after the defaults, the YAML file and the
overrides are in place."""

from __future__ import annotations

import re

from groupo.config import Config, ConfigError


def validate(cfg: Config) -> None:
    """Checks that involve more than one key (single keys are checked as they are set)."""
    from groupo.algorithms.presets import PRESETS

    if cfg.algorithm.preset not in PRESETS:
        raise ConfigError(f"algorithm.preset = {cfg.algorithm.preset!r} is unknown; "
                          f"valid presets: {', '.join(PRESETS)}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.run.device):
        raise ConfigError(f"run.device = {cfg.run.device!r} is not a device; valid: auto, cpu, cuda, cuda:N")
    if cfg.rollout.engine not in ("hf", "vllm"):
        raise ConfigError(f"rollout.engine = {cfg.rollout.engine!r} is unknown; valid: hf, vllm")
    if cfg.rollout.vllm_url and cfg.rollout.engine != "vllm":
        raise ConfigError(f"rollout.vllm_url is set but rollout.engine = {cfg.rollout.engine!r}: "
                          "set rollout.engine=vllm to sample on that server, or leave the URL empty")
    if cfg.rollout.vllm_url and not re.match(r"https?://[^/\s]+", cfg.rollout.vllm_url):
        raise ConfigError(f"rollout.vllm_url = {cfg.rollout.vllm_url!r} is not a URL; "
                          "expected e.g. http://127.0.0.1:8000")
    if cfg.rollout.engine == "vllm" and cfg.train.parallel == "fsdp2":
        raise ConfigError("rollout.engine = 'vllm' runs beside train.parallel = 'ddp' only (each rank hands "
                          "its engine whole weights; FSDP2 would gather them first): use train.parallel=ddp")
    if cfg.algorithm.engine_old_logprobs and cfg.algorithm.num_iterations != 1:
        raise ConfigError(f"algorithm.engine_old_logprobs = true needs algorithm.num_iterations = 1, got "
                          f"{cfg.algorithm.num_iterations} (later updates need the trainer's own old log-probs)")
    if cfg.algorithm.adv_baseline == "loo" and cfg.rollout.group_size < 2:
        raise ConfigError("algorithm.adv_baseline = 'loo' needs rollout.group_size >= 2")
    if bad := [n for n in cfg.run.sinks if n not in ("tensorboard", "wandb", "trackio", "mlflow")]:
        raise ConfigError(f"run.sinks: unknown sink {bad[0]!r}; valid: tensorboard, wandb, trackio, mlflow")
    if len(cfg.train.adam_betas) != 2 or not all(0 <= b < 1 for b in cfg.train.adam_betas):
        raise ConfigError(f"train.adam_betas = {cfg.train.adam_betas} must be two numbers in [0, 1)")
