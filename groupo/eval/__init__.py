"""Held-out evaluation: greedy accuracy, pass@k, maj@k (`evaluate`), and the `groupo eval` command."""

from groupo.eval.evaluate import EvalResult, evaluate, majority_correct, pass_at_k

__all__ = ["EvalResult", "evaluate", "majority_correct", "pass_at_k"]
