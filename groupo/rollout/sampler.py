"""How a run samples its completions: one turn per prompt (the engine's `generate` on the prompt's
token ids), or multi-turn episodes with tools (`run_episodes`), as `episodes.tool_format` says. The
trainer's collect stage, its held-out evaluation and `groupo eval` all sample through this.
"""

from __future__ import annotations

import json
from typing import Any

from groupo.config import Config
from groupo.data.prompts import encode_prompt
from groupo.rollout.episodes import EpisodeSettings, Format, run_episodes
from groupo.tools import Toolbox, ToolSettings, load_environment, load_tools, make_format
from groupo.tools.toolbox import environment_rewards
from groupo.types import Completion, Problem, SamplingParams

PROMPT_CACHE = 4096  # encoded prompts kept: the held-out set's are reused, a generated task's never


class Sampler:
    """`sampler(problems, params)` -> for each problem, `params.n` completions (whole episodes
    when tools are on: `Completion.sampled_mask` then marks the policy's own tokens).

    engine: what makes the tokens; tokenizer: encodes one-turn prompts; episodes and fmt: with
    tools, the episode settings and the built tool format (it holds the toolbox); template_kwargs:
    rollout.chat_template_kwargs, for one-turn prompts (a format has its own)."""

    def __init__(self, engine, tokenizer, episodes: EpisodeSettings | None = None, fmt: Format | None = None,
                 template_kwargs: dict | None = None):
        self.engine, self.tokenizer, self.episodes, self.fmt = engine, tokenizer, episodes, fmt
        self.template_kwargs = dict(template_kwargs or {})
        self._prompts: dict[str, list[int]] = {}

    @property
    def toolbox(self) -> Toolbox | None:
        return self.fmt.toolbox if self.fmt is not None else None

    def _prompt_ids(self, problem: Problem) -> list[int]:
        """A one-turn prompt's token ids, encoded once per distinct chat (episodes encode their
        own, with the tools and an environment's text: groupo.rollout.episodes)."""
        key = json.dumps(problem.messages)
        if key not in self._prompts:
            if len(self._prompts) >= PROMPT_CACHE:  # bounded: generated tasks never repeat a prompt
                self._prompts.clear()
            self._prompts[key] = encode_prompt(self.tokenizer, problem.messages, self.template_kwargs)
        return self._prompts[key]

    def __call__(self, problems: list[Problem], params: SamplingParams) -> list[list[Completion]]:
        if self.fmt is None:
            return self.engine.generate([self._prompt_ids(p) for p in problems], params)
        return run_episodes(self.engine, self.fmt, [p.messages for p in problems], [p.columns for p in problems],
                            params, self.episodes or EpisodeSettings())


def make_sampler(cfg: Config, engine, tokenizer) -> Sampler:
    """The run's sampler: tools, environment and format loaded and checked (a ConfigError names
    the episodes.* key at fault before training starts)."""
    E, kwargs = cfg.episodes, cfg.rollout.chat_template_kwargs
    if not E.tool_format:
        return Sampler(engine, tokenizer, template_kwargs=kwargs)
    tools = load_tools(E.tools or (["python"] if E.tool_format == "python_block" else []))
    environment = load_environment(E.environment) if E.environment else None
    settings = ToolSettings(timeout_s=E.tool_timeout_s, max_output_tokens=E.max_tool_output_tokens,
                            python_memory_mb=cfg.sandbox.memory_mb, workers=cfg.sandbox.workers)
    toolbox = Toolbox(tools, environment, settings, tokenizer)
    fmt = make_format(E.tool_format, tokenizer, toolbox, kwargs)  # a template that cannot render tools: ConfigError
    return Sampler(engine, tokenizer, EpisodeSettings(max_turns=E.max_turns, workers=E.tool_workers), fmt)


def environment_reward(completions: list, environments: list | None = None, **_: Any) -> list[float | None]:
    """The reward an environment owns (its `get_reward()`), as TRL adds it: None where it has none."""
    return environment_rewards(environments) if environments is not None else [None] * len(completions)


def with_environment_reward(reward_fns: dict, sampler: Sampler) -> dict:
    """`reward_fns` plus, when the run's environment defines get_reward, its reward as `environment`
    (weight 1.0, as TRL adds it), unless `rewards.funcs` names one so already."""
    env = sampler.toolbox.environment if sampler.toolbox is not None else None
    if env is None or not env.has_reward or "environment" in reward_fns:
        return reward_fns
    return {**reward_fns, "environment": (environment_reward, 1.0)}
