"""Stage 1 of a step, collect: draw prompts, sample G completions each, score them, keep the groups.

`collect` returns a `RolloutBatch` that is the same on every rank: each rank samples and
scores its share of the drawn prompts (prompts strided by rank), and the shares are gathered, so
the zero-variance filter, DAPO's redraws, the advantages and the step's metrics are computed on
the whole global batch, identically everywhere (ranks redraw in lockstep because they decide on
the same rewards). The update then takes whole groups per rank (`RolloutBatch.share`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from groupo.algorithms import zero_variance_groups
from groupo.distributed import Dist, gather_objects
from groupo.rewards import score_completions
from groupo.rewards.judging import judge_metrics
from groupo.rewards.trl_compat import RewardLog, RewardState, metric_name
from groupo.types import Completion, Problem, SamplingParams


@dataclass
class RolloutBatch:
    """P scored groups of G completions (rows group-major: prompt p's samples are p*G .. p*G+G-1)."""

    problems: list[Problem]                  # (P,)
    completions: list[Completion]            # (P*G,) token ids, engine log-probs, finish reasons
    rewards_PG: torch.Tensor                 # (P, G) weighted total reward, float32
    per_fn: dict[str, list[float | None]]    # reward name -> (P*G,) unweighted scores
    prompt_ids: list[list[int]]              # (P*G,) the encoded prompt of every row (an episode's own)
    n_zero_var: int                          # groups drawn this step whose rewards were all equal
    n_groups: int                            # groups drawn this step (dynamic sampling draws more)
    group_size: int
    reward_metrics: dict[str, float] = field(default_factory=dict)  # means of the rewards' log_metric calls
    reward_timeouts: int = 0                 # answer checks that timed out, all ranks together
    reward_weights: dict[str, float] = field(default_factory=dict)  # reward name -> its weight in the total

    @property
    def completion_ids(self) -> list[list[int]]:
        return [c.token_ids for c in self.completions]

    @property
    def engine_logprobs(self) -> list[list[float]]:
        return [c.logprobs for c in self.completions]

    @property
    def finish_reasons(self) -> list[str]:
        return [c.finish_reason for c in self.completions]

    def groups(self, index: list[int]) -> RolloutBatch:
        """The groups `index`, in that order (draw counts unchanged)."""
        G = self.group_size
        rows = [p * G + j for p in index for j in range(G)]
        return replace(self, problems=[self.problems[p] for p in index],
                       completions=[self.completions[r] for r in rows],
                       rewards_PG=self.rewards_PG[index] if index else self.rewards_PG[:0],
                       per_fn={k: [v[r] for r in rows] for k, v in self.per_fn.items()},
                       prompt_ids=[self.prompt_ids[r] for r in rows])

    def share(self, world: Dist) -> RolloutBatch:
        """This rank's whole groups: p = rank, rank + W, ... (len(problems) is a multiple of W)."""
        return self.groups(list(range(world.rank, len(self.problems), world.world_size)))


def collect(sample: Callable[[list[Problem], SamplingParams], list[list[Completion]]],
            problems_at: Callable[[int], Problem], reward_fns: dict, *, data_position: int, prompts_per_step: int,
            params: SamplingParams, dynamic_sampling: bool, max_draws: int, world: Dist,
            reward_state: RewardState | None = None) -> tuple[RolloutBatch, int]:
    """Sample and score one step's groups; returns (batch, data position after the draws).

    `sample(problems, params)` gives each problem's `params.n` completions (one turn each, or whole
    episodes with tools: groupo.rollout.sampler). Each draw takes the next `prompts_per_step`
    prompts of the training stream (`problems_at(i)` is prompt i). Without dynamic sampling the
    batch is the first draw. With it, groups whose rewards are all equal are dropped and further
    prompts drawn, at most `max_draws` times, until
    `prompts_per_step` groups are kept. With W ranks the kept groups are cut to a multiple of W
    (only dynamic sampling can leave a remainder: prompts_per_step itself is one).
    reward_state is what reward functions see as TRL's `trainer_state`; what they pass to
    `log_metric` is averaged into `RolloutBatch.reward_metrics`, and the answer checks that timed
    out are counted into `reward_timeouts`, over every rank's calls; with a judge, its `judge/...`
    metrics join `reward_metrics`, from every rank's requests.
    """
    log = RewardLog()
    G = params.n
    kept: list[tuple[Problem, list[Completion], torch.Tensor, dict[str, list]]] = []
    n_zero_var = n_groups = 0
    for draw in range(max_draws if dynamic_sampling else 1):
        drawn = [problems_at(data_position + i) for i in range(prompts_per_step)]
        data_position += prompts_per_step
        mine = drawn[world.rank::world.world_size]
        groups = sample(mine, replace(params, seed=params.seed + draw))
        flat = [c for g in groups for c in g]
        rep = [p for p in mine for _ in range(G)]
        total, scores = score_completions(reward_fns, rep, flat, trainer_state=reward_state, log=log)
        for c in flat:
            c.environment = None  # scored; a user's instance need not survive pickling to the other ranks
        # Back to the draw's order: rank r sampled prompts r, r + W, r + 2W, ...
        per_rank = gather_objects((groups, total, scores), world)
        ordered = [None] * len(drawn)
        for r, (r_groups, r_total, r_scores) in enumerate(per_rank):
            for k, group in enumerate(r_groups):
                sl = slice(k * G, (k + 1) * G)
                ordered[r + k * world.world_size] = (group, torch.tensor(r_total[sl], dtype=torch.float32),
                                                     {n: v[sl] for n, v in r_scores.items()})
        zero_var = zero_variance_groups(torch.stack([o[1] for o in ordered]))
        n_zero_var, n_groups = n_zero_var + int(zero_var.sum()), n_groups + len(drawn)
        for p_i, (group, r_G, scores_G) in enumerate(ordered):
            if len(kept) < prompts_per_step and not (dynamic_sampling and zero_var[p_i]):
                kept.append((drawn[p_i], group, r_G, scores_G))
        if len(kept) == prompts_per_step:
            break
    kept = kept[:len(kept) - len(kept) % world.world_size]
    logs = gather_objects((log.timeouts, dict(log.metrics), dict(log.seconds), dict(log.counters.get("judge", {}))),
                          world)
    metrics: dict[str, list[float]] = {}
    judged: dict[str, float] = {}
    for _, m, _, counts in logs:
        for k, v in m.items():
            metrics.setdefault(k, []).extend(v)
        for k, v in counts.items():
            judged[k] = judged.get(k, 0.0) + v
    per_fn: dict[str, list] = {}
    for _, _, _, scores_G in kept:
        for name, vals in scores_G.items():
            per_fn.setdefault(name, []).extend(vals)
    batch = RolloutBatch(
        problems=[k[0] for k in kept], completions=[c for k in kept for c in k[1]],
        rewards_PG=torch.stack([k[2] for k in kept]) if kept else torch.zeros(0, G),
        per_fn=per_fn, prompt_ids=[c.prompt_ids for k in kept for c in k[1]],
        n_zero_var=n_zero_var, n_groups=n_groups, group_size=G,
        reward_metrics={**{f"reward_log/{k}": sum(v) / len(v) for k, v in metrics.items() if v},
                        # the slowest rank's seconds per function: the time the step waited for it
                        **{f"time/reward/{metric_name(k)}": max(s.get(k, 0.0) for _, _, s, _ in logs)
                           for k in logs[0][2]},
                        **(judge_metrics(judged) if "judge" in reward_fns else {})},
        reward_timeouts=sum(t for t, _, _, _ in logs), reward_weights={n: w for n, (_, w) in reward_fns.items()})
    return batch, data_position
