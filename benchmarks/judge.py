"""What an in-process LLM judge costs a step: the built-in model judging a step's completions.

    python benchmarks/judge.py                         # 8 completions (2 prompts x 4), replies of <= 256 tokens
    python benchmarks/judge.py --max-tokens 64 --group --template rank   # one request per group
    python benchmarks/judge.py --no-think              # the verdict alone (rewards.judge.think=false)

The completions are written here (right and wrong answers to the quickstart's arithmetic, some with
reasoning), so every run judges the same text; each repeat is a new training step, so nothing is
answered from the step's cache. Printed: the machine, seconds per step's judging (each repeat and
the median, and the CPU seconds the process used: on a machine shared with other work the wall time
says more about the neighbours), requests, tokens the judge wrote, and the share of replies its
parse rule read. The repeats include nothing of loading: the model is loaded (and timed) before.
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import machine  # benchmarks/machine.py (this folder is on sys.path when run as a script)

from groupo.config import load_config
from groupo.judges import build_judge
from groupo.rewards import score
from groupo.rewards.trl_compat import RewardLog, RewardState

QUESTIONS = ["What is 23 + 48?", "What is 9 * 7?"]
ANSWERS = ["71", "63"]
COMPLETIONS = [
    ["23 + 48 = 71. <answer>71</answer>", "<answer>71</answer>", "20 + 40 = 60 and 3 + 8 = 11, so 71.",
     "23 + 48 = 61 <answer>61</answer>"],
    ["9 * 7 = 63. <answer>63</answer>", "<answer>56</answer>", "Nine sevens: 7, 14, 21, 28, 35, 42, 49, 56, 63.",
     "I think it is 64."],
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--group", action="store_true", help="group mode: one request per prompt's group")
    ap.add_argument("--template", default="quality")
    ap.add_argument("--no-think", action="store_true", help="rewards.judge.think=false: the verdict alone")
    args = ap.parse_args()
    cfg = load_config(None, ["rewards.judge.model=smollm2-135m-instruct",
                             f"rewards.judge.max_tokens={args.max_tokens}",
                             f"rewards.judge.group={str(args.group).lower()}",
                             f"rewards.judge.template={args.template}",
                             f"rewards.judge.think={str(not args.no_think).lower()}"])
    t0 = time.perf_counter()
    judge = build_judge(cfg)
    load_s = time.perf_counter() - t0
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS for _ in range(4)]
    texts = [c for group in COMPLETIONS for c in group]
    rows = [{"answer": a} for a in ANSWERS for _ in range(4)]
    times, cpu, counts, scores = [], [], [], None
    for step in range(args.repeats):
        log = RewardLog()
        start, start_cpu = time.perf_counter(), time.process_time()
        _, per_fn = score({"judge": (judge, 1.0)}, prompts, texts, rows, trainer_state=RewardState(step + 1, 100),
                          log=log)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        counts.append(dict(log.counters["judge"]))
        scores = per_fn["judge"]
    c = counts[-1]
    print(machine())
    print(f"judge: built-in smollm2-135m-instruct in this process, max_tokens {args.max_tokens}, "
          f"{'group mode' if args.group else 'one request per completion'}, template {args.template}, "
          f"{'verdict alone' if args.no_think else 'may reason first'}; loaded in {load_s:.1f} s")
    print(f"{len(texts)} completions: {c.get('requests', 0):.0f} requests, {c.get('prompt_tokens', 0):.0f} prompt "
          f"tokens, {c.get('completion_tokens', 0):.0f} tokens written, {c.get('unparsed', 0):.0f} of "
          f"{c.get('replies', 0):.0f} replies unparsed")
    print("seconds per step's judging: " + ", ".join(f"{t:.1f}" for t in times)
          + f" (median {statistics.median(times):.1f}); CPU seconds of this process (all its threads): "
          + ", ".join(f"{t:.1f}" for t in cpu))
    print("scores of the last repeat:", [None if s is None else round(s, 2) for s in scores])


if __name__ == "__main__":
    main()
