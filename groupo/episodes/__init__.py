"""Multi-turn episodes with tools: the driver over any rollout engine, and their metrics."""

from groupo.episodes.driver import EpisodeSettings, round_seed, run_episodes
from groupo.episodes.metrics import episode_metrics, episode_segments

__all__ = ["EpisodeSettings", "episode_metrics", "episode_segments", "round_seed", "run_episodes"]
