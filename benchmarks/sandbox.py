"""Sandbox throughput: executions per second, one process tree per program.

    python benchmarks/sandbox.py                       # workers = the CPUs; 64 programs per batch
    python benchmarks/sandbox.py --workers 1 2 4 --programs 64 --repeats 3
    python benchmarks/sandbox.py --disable netns mountns pidns proc   # the no-namespace fallback

Three workloads, each a batch through `Sandbox.run_many`:
  trivial   `pass`
  gsm8k     64 different GSM8K-style programs (named quantities, arithmetic, one print), the kind
            python_output runs for one training step of 8 prompts x 8 completions
  reward    the same 64 as completions through python_output_reward (extraction, sandbox,
            comparison; the rewards' shared sandbox, every mechanism on), cache cleared each repeat
  tests     64 MBPP-style solutions through tests_pass_reward, three asserts each (the test
            runner: the candidate in a process of its own, the asserts outside it)
Also reports one run's latency (sequential, 1 worker). Prints the best of `--repeats`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from groupo.rewards import code as code_rewards
from groupo.sandbox.run import Sandbox, probe


def gsm8k_programs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`n` distinct programs in the shape models write for GSM8K, and their answers."""
    rng = random.Random(seed)
    programs, answers = [], []
    for _ in range(n):
        eggs, eaten, baked, price = rng.randint(10, 99), rng.randint(1, 4), rng.randint(1, 4), rng.randint(2, 9)
        programs.append(
            f"eggs_per_day = {eggs}\neaten = {eaten}\nbaked = {baked}\nprice = {price}\n"
            "remaining = eggs_per_day - eaten - baked\n"
            "earnings = remaining * price\n"
            "print(earnings)\n")
        answers.append(str((eggs - eaten - baked) * price))
    return programs, answers


def mbpp_solutions(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """`n` distinct correct solutions in the shape of MBPP answers, and three asserts for each."""
    rng = random.Random(seed)
    completions, tests = [], []
    for k in rng.sample(range(2, 10 * n), n):  # all distinct: a batch runs each distinct one once
        completions.append(f"```python\ndef scale(xs):\n    return [x * {k} for x in xs]\n```")
        tests.append([f"assert scale([{a}, {a + 1}]) == [{a * k}, {(a + 1) * k}]" for a in range(3)])
    return completions, tests


def best_rate(fn, n: int, repeats: int) -> tuple[float, float]:
    """(best executions per second, median) over `repeats` calls of fn() that run n programs."""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[len(os.sched_getaffinity(0))])
    ap.add_argument("--programs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--disable", nargs="*", default=[], help="mechanisms to switch off (see MECHANISMS)")
    args = ap.parse_args()

    print(f"cpus={len(os.sched_getaffinity(0))}  uid={os.getuid()}")
    print("protections:", probe(frozenset(args.disable)).describe())
    programs, answers = gsm8k_programs(args.programs)
    completions = [f"```python\n{p}```" for p in programs]
    solutions, tests = mbpp_solutions(args.programs)

    one = Sandbox(workers=1, disable=args.disable)
    one.run("pass")  # warm the page cache
    latencies = []
    for _ in range(max(10, args.repeats)):
        t0 = time.perf_counter()
        one.run("pass")
        latencies.append(time.perf_counter() - t0)
    print(f"latency of one run (1 worker): median {statistics.median(latencies) * 1e3:.1f} ms, "
          f"best {min(latencies) * 1e3:.1f} ms")

    for workers in args.workers:
        box = Sandbox(workers=workers, disable=args.disable)
        trivial = best_rate(lambda box=box: box.run_many(["pass"] * args.programs), args.programs, args.repeats)
        results = box.run_many(programs)
        assert [r.stdout.strip() for r in results] == answers, "a GSM8K-style program printed a wrong answer"
        gsm = best_rate(lambda box=box: box.run_many(programs), args.programs, args.repeats)

        def reward(workers=workers) -> None:
            code_rewards._CACHE.clear()
            got = code_rewards.python_output_reward(completions=completions, answer=answers, sandbox_workers=workers)
            assert got == [1.0] * len(answers)

        rew = best_rate(reward, args.programs, args.repeats)

        def tested(workers=workers) -> None:
            got = code_rewards.tests_pass_reward(completions=solutions, tests=tests, sandbox_workers=workers)
            assert got == [1.0] * len(solutions)

        tst = best_rate(tested, args.programs, args.repeats)
        print(f"workers={workers:2d}  trivial {trivial[0]:6.1f}/s (median {trivial[1]:6.1f})  "
              f"gsm8k x{args.programs} {gsm[0]:6.1f}/s (median {gsm[1]:6.1f})  "
              f"python_output x{args.programs} {rew[0]:6.1f}/s (median {rew[1]:6.1f})  "
              f"tests_pass x{args.programs} {tst[0]:6.1f}/s (median {tst[1]:6.1f})")
        box.close()


if __name__ == "__main__":
    main()
