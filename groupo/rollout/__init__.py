"""Rollouts turn problems into completions: one turn per prompt, or multi-turn episodes with tools.

    sampler.py   `Sampler`: what the trainer's collect stage and evaluation call
    episodes.py  the episode driver over any engine (turns, tool calls, the token mask)
    metrics.py   what a batch of episodes did with its tools
"""

from groupo.rollout.episodes import EpisodeSettings, round_seed, run_episodes
from groupo.rollout.metrics import episode_metrics
from groupo.rollout.sampler import Sampler, make_sampler

__all__ = ["EpisodeSettings", "Sampler", "episode_metrics", "make_sampler", "round_seed", "run_episodes"]
