"""Episodes with tools on the HF engine: seconds per round, and what keeping the KV cache across
turns saves.

    python benchmarks/episodes.py                       # configs/tools_quickstart.yaml's first step
    python benchmarks/episodes.py --prompts 6 --repeats 3 --set episodes.max_turns=3

Samples one training step's episodes (the config's prompts_per_step x group_size, the built-in
task's first training problems, its sampling settings, seed 0) with the untrained policy (LoRA
wrapped, B = 0), timing each `engine.generate` call (one per round: round 0 samples the first
turn, round k > 0 continues every live episode after its tool results). Alternates two engines:
`keep` (rounds after the first encode only the tokens a round added: the tool's output; see
`HFEngine.keeping_prefixes`) and `re-encode` (every round encodes each episode's whole history,
prompt included). Reports per-round and total seconds, their medians, whether both sampled the
same episodes (in float32, `--set model.autocast=none`, the same tokens with log-probs within float
rounding; in bf16 the rounding of other batch shapes flips some tokens), and for each, how far its
recorded log-probs are from the trainer's forward pass over the whole episodes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from groupo.commands.resolve import resolve_config
from groupo.data import load_task
from groupo.engines.hf import HFEngine
from groupo.models import load_model, load_policy_from
from groupo.models.precision import resolve_autocast
from groupo.rollout.sampler import make_sampler
from groupo.types import SamplingParams


class Timed:
    """An engine whose `generate` calls are timed, one entry per call (per round)."""

    def __init__(self, engine: HFEngine):
        self.engine, self.seconds = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, params):
        t0 = time.perf_counter()
        out = self.engine.generate(prompts, params)
        self.seconds.append(time.perf_counter() - t0)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tools_quickstart.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--prompts", type=int, default=None, help="prompts (default: train.prompts_per_step)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = resolve_config(args.config, args.overrides)
    from machine import machine  # benchmarks/machine.py

    print(f"CPU: {machine()}   threads={torch.get_num_threads()}")
    model, tok = load_model(cfg.model.name, cfg.model.revision, cfg.model.dtype)
    model = load_policy_from(model, tok, cfg.lora, beta=0.0).model
    amp = resolve_autocast(cfg.model.autocast, torch.device("cpu"))
    task = load_task(cfg.task)
    problems = [task.train[i] for i in range(args.prompts or cfg.train.prompts_per_step)]
    R = cfg.rollout
    params = SamplingParams(n=R.group_size, temperature=R.temperature, top_p=R.top_p,
                            max_new_tokens=R.max_new_tokens, stop=tuple(R.stop), seed=0)
    print(f"{args.config} {' '.join(args.overrides)}: {len(problems)} prompts x {params.n} episodes, "
          f"autocast={amp}, max_turns={cfg.episodes.max_turns}, max_new_tokens={R.max_new_tokens}")
    variants = {"keep": True, "re-encode": False}
    totals: dict[str, list[float]] = {v: [] for v in variants}
    rounds: dict[str, list[list[float]]] = {v: [] for v in variants}
    first: dict[str, list] = {}
    for r in range(args.repeats):
        for label, keep in variants.items():
            engine = Timed(HFEngine(model, tok, batch_size=R.batch_size, autocast=amp, keep_prefixes=keep))
            sampler = make_sampler(cfg, engine, tok)
            t0 = time.perf_counter()
            out = sampler(problems, params)
            dt = time.perf_counter() - t0
            eps = [c for g in out for c in g]
            totals[label].append(dt)
            rounds[label].append(engine.seconds)
            first.setdefault(label, eps)
            turns = sum(c.tool_stats["turns"] for c in eps) / len(eps)
            sampled = sum(sum(c.sampled_mask) for c in eps)
            tool = sum(len(c.token_ids) - sum(c.sampled_mask) for c in eps)
            print(f"{label:9s} run {r}: {dt:6.2f} s  rounds " + " ".join(f"{s:5.2f}" for s in engine.seconds)
                  + f"  turns/episode {turns:.2f}, {sampled} sampled + {tool} tool tokens", flush=True)
    for label in variants:
        per_round = [statistics.median(rs[k] for rs in rounds[label] if len(rs) > k)
                     for k in range(max(len(rs) for rs in rounds[label]))]
        print(f"median {label:9s}: {statistics.median(totals[label]):6.2f} s   rounds "
              + " ".join(f"{s:5.2f}" for s in per_round))
    a, b = first["keep"], first["re-encode"]
    same = sum(x.token_ids == y.token_ids for x, y in zip(a, b, strict=True))
    diffs = [abs(p - q) for x, y in zip(a, b, strict=True) if x.token_ids == y.token_ids
             for p, q in zip(x.logprobs, y.logprobs, strict=True)]
    print(f"same episodes (token for token): {same}/{len(a)}; largest log-prob difference among them: "
          f"{max(diffs, default=0.0):.2e}")
    for label, eps in first.items():
        d = against_forward(model, tok, eps, amp, R.temperature)
        print(f"{label:9s}: sampled log-probs against one forward pass over each whole episode (the "
              f"trainer's): mean |diff| {statistics.mean(d):.2e}, largest {max(d):.2e}")


def against_forward(model, tok, episodes, amp: str, temperature: float) -> list[float]:
    """|log-prob the engine recorded - the trainer's forward pass's| at every sampled token."""
    from groupo.models.logprobs import pack, token_logprobs
    from groupo.models.precision import AUTOCAST_DTYPES

    packed = pack([c.prompt_ids for c in episodes], [c.token_ids for c in episodes], tok.pad_token_id)
    dtype = AUTOCAST_DTYPES[amp]
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logp_BT, _ = token_logprobs(model, packed, temperature)
    return [abs(lp - float(logp_BT[b, t])) for b, c in enumerate(episodes)
            for t, (lp, m) in enumerate(zip(c.logprobs, c.sampled_mask, strict=True)) if m]


if __name__ == "__main__":
    main()
