"""Verifiable rewards: text in, float out. TRL-compatible reward functions, their registry, and
the weighted combination the trainer logs per function."""

from groupo.rewards.base import RewardError
from groupo.rewards.choice import choice_reward, extract_choice
from groupo.rewards.combine import score, score_completions
from groupo.rewards.countdown import countdown_reward
from groupo.rewards.extract import extract_answer, parse_number
from groupo.rewards.format import answer_format_reward, format_reward, soft_format_reward, tag_count_reward
from groupo.rewards.length import cosine_reward, overlong_reward
from groupo.rewards.math import accuracy_reward, is_equivalent
from groupo.rewards.registry import REWARDS, resolve_rewards

__all__ = [
    "REWARDS", "RewardError", "accuracy_reward", "answer_format_reward", "choice_reward", "cosine_reward",
    "countdown_reward", "extract_answer", "extract_choice", "format_reward", "is_equivalent", "overlong_reward",
    "parse_number", "resolve_rewards", "score", "score_completions", "soft_format_reward", "tag_count_reward",
]

from groupo.rewards.code import (
    code_format_reward,
    code_tags_reward,
    compiles_reward,
    lint_clean_reward,
    python_number_reward,
    python_output_reward,
    python_runs_reward,
    tests_all_pass_reward,
    tests_pass_reward,
)

__all__ += [
    "code_format_reward", "code_tags_reward", "compiles_reward", "lint_clean_reward",
    "python_number_reward", "python_output_reward", "python_runs_reward", "tests_all_pass_reward",
    "tests_pass_reward",
]
