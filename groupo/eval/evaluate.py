"""Held-out evaluation: greedy accuracy, pass@k, maj@k and mean@k over a task's problems.

The trainer calls `evaluate` before, during and after training; `groupo eval` calls it on a base
model or a trained run. Correctness is the task's `eval_reward` (e.g. "accuracy") equal to 1.0.

pass@k uses the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374): with n samples of
which c are correct, pass@k = 1 - C(n-c, k) / C(n, k), computed as the stable product
1 - prod_{i=n-c+1}^{n} (1 - k / i). maj@k (self-consistency, Wang et al. 2022) is the share of
problems whose most frequent extracted answer among the k = `samples` answers (normalised, so
"1,000" and "1000.0" agree; ties go to the answer seen first) is correct; for multiple choice, the
most frequent letter.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from groupo.data.task import Task
from groupo.rewards.choice import extract_choice, option_letters
from groupo.rewards.combine import score_completions
from groupo.rewards.countdown import find_expression
from groupo.rewards.extract import DEFAULT_ORDER, extract_answer
from groupo.rewards.math import answer_key
from groupo.rewards.registry import REWARDS, resolve_rewards
from groupo.rewards.trl_compat import Adapted
from groupo.types import Completion, Problem, SamplingParams


@dataclass
class EvalResult:
    """accuracy: greedy accuracy (None if no greedy pass ran); pass_at_k: {k: value} for k = 1, 2,
    4, ... up to `samples`; maj_at_k: maj@samples (None for samples = 1 or tasks without
    answer-style rewards); mean_at_k: the share of all sampled completions that are correct
    (mean@samples, equal to the unbiased pass@1); n: problems; records: one dict per generated sample."""

    accuracy: float | None
    pass_at_k: dict[int, float]
    maj_at_k: float | None
    n: int
    records: list[dict] = field(default_factory=list)
    mean_at_k: float | None = None

    def summary(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "pass_at_k": self.pass_at_k, "maj_at_k": self.maj_at_k,
                "mean_at_k": self.mean_at_k}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021), numerically stable."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_correct(keys: list[str | None], correct: list[bool]) -> bool:
    """Whether the most frequent non-None key (ties: first seen) belongs to a correct sample."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return False
    top = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == top)
    return any(ok for k, ok in zip(keys, correct, strict=True) if k == winner)


def _extract_order(reward_fns: dict, eval_reward: str) -> tuple[str, ...]:
    fn = reward_fns.get(eval_reward, (None,))[0]
    fn = getattr(fn, "func", fn) if isinstance(fn, Adapted) else fn
    return tuple(fn.keywords.get("extract_order", DEFAULT_ORDER)) if isinstance(fn, functools.partial) \
        else DEFAULT_ORDER


def _generate(sample: Callable, problems: list[Problem], params: SamplingParams,
              batch_size: int, progress: Callable[[int, int], None] | None) -> list[list]:
    """Completions for every problem, `batch_size` sequences per sampling call."""
    per_call = max(1, batch_size // params.n)
    out: list[list] = []
    for start in range(0, len(problems), per_call):
        out += sample(problems[start:start + per_call], params)
        if progress is not None:
            progress(len(out), len(problems))
    return out


def _run(sample: Callable, task: Task, problems: list[Problem], params: SamplingParams,
         batch_size: int, reward_fns: dict, progress, greedy: bool) -> list[dict]:
    groups = _generate(sample, problems, params, batch_size, progress)
    flat = [(p, j, c) for p, g in zip(problems, groups, strict=True) for j, c in enumerate(g)]
    total, per_fn = score_completions(reward_fns, [p for p, _, _ in flat], [c for _, _, c in flat])
    order = _extract_order(reward_fns, task.eval_reward)
    records = []
    for i, (p, j, c) in enumerate(flat):
        extracted = (find_expression(c.text) if task.eval_reward == "countdown"
                     else extract_choice(c.text, option_letters(p.columns.get("options")))
                     if task.eval_reward == "choice" else extract_answer(c.text, order))
        records.append({
            "id": p.id, "sample": j, "greedy": greedy, "question": p.columns.get("question", p.question),
            "prompt": p.messages[-1]["content"],
            "answer": p.answer, "completion": c.text, "extracted": extracted,
            "correct": per_fn[task.eval_reward][i] == 1.0, "reward": total[i],
            "rewards": {name: values[i] for name, values in per_fn.items()},
            "tokens": len(c.token_ids), "finish_reason": c.finish_reason,
            **({"tool_calls": c.tool_stats.get("calls", 0)} if c.tool_stats else {}),
        })
    return records


def evaluate(sample: Callable[[list[Problem], SamplingParams], list[list[Completion]]], task: Task,
             problems: list[Problem], *, samples: int = 1, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0, repetition_penalty: float = 1.0,
             batch_size: int = 64, reward_fns: dict | None = None, seed: int = 0,
             greedy: bool = True, progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Evaluate `problems` of `task` with what `sample(problems, params)` draws: completions per
    problem (a groupo.rollout.Sampler: one turn, or episodes with the run's tools).

    samples: completions per problem (k). With samples = 1 and temperature = 0 this is one greedy
        pass. With samples > 1 they are drawn at `temperature` (must be > 0) for pass@k and maj@k,
        and, if `greedy`, one extra greedy pass gives `accuracy`.
    top_p, top_k, min_p: the sampled pass's truncation; repetition_penalty: both passes' (it changes
        greedy decoding too), as rollout.* sets them for training.
    reward_fns: name -> (fn, weight), as from `resolve_rewards` (default: the task's rewards); the
        task's `eval_reward` is added from the registry if missing.
    progress: called with (prompts done, prompts total) after each generation batch.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if samples > 1 and temperature <= 0:
        raise ValueError("samples > 1 needs temperature > 0 (greedy samples would all be equal)")
    fns = dict(reward_fns) if reward_fns is not None else resolve_rewards({}, task)
    if task.eval_reward not in fns:
        fns[task.eval_reward] = (REWARDS[task.eval_reward], 0.0)
    n = len(problems)
    records: list[dict] = []
    accuracy = None
    if greedy and (samples > 1 or temperature == 0):
        params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=seed,
                                repetition_penalty=repetition_penalty)
        greedy_recs = _run(sample, task, problems, params, batch_size, fns, progress, True)
        accuracy = sum(r["correct"] for r in greedy_recs) / n if n else 0.0
        records += greedy_recs
    sampled = records if samples == 1 and temperature == 0 else []
    if not sampled:
        params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens, seed=seed)
        sampled = _run(sample, task, problems, params, batch_size, fns, progress, False)
        records += sampled
    by_problem: dict[int, list[dict]] = {}
    for i, r in enumerate(sampled):
        by_problem.setdefault(i // samples, []).append(r)
    ks = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= samples} | {samples})
    passk = {k: sum(pass_at_k(samples, sum(r["correct"] for r in rs), k) for rs in by_problem.values()) / n
             for k in ks} if n else {}
    maj = None
    if samples > 1 and n and task.eval_reward in ("accuracy", "choice"):
        maj = sum(majority_correct([answer_key(r["extracted"]) for r in rs], [r["correct"] for r in rs])
                  for rs in by_problem.values()) / n
    mean = sum(r["correct"] for r in sampled) / len(sampled) if sampled else None
    return EvalResult(accuracy=accuracy, pass_at_k=passk, maj_at_k=maj, n=n, records=records, mean_at_k=mean)
