"""The training loop, top to bottom: sample groups, score, advantages, update, log, checkpoint.

Every step is a function of (weights, optimizer state, step, data position, seed): generation
is seeded per step and dropout is re-seeded per step, so a run resumed from a checkpoint
replays the remaining steps exactly and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import resource
import signal
import time
from pathlib import Path
from typing import Any

import torch

from groupo.algorithms import group_advantages, zero_variance_groups
from groupo.algorithms.presets import LossSettings, get_preset
from groupo.config import Config, dump_yaml
from groupo.data import load_task
from groupo.data.prompts import encode_prompt
from groupo.eval.evaluate import evaluate
from groupo.models import load_policy, save_policy
from groupo.models.logprobs import pack
from groupo.models.precision import resolve_autocast
from groupo.report.html import write_report
from groupo.report.metrics import MetricsWriter, read_jsonl, truncate_after
from groupo.report.progress import TrainProgress
from groupo.rewards import resolve_rewards, score
from groupo.rollout import make_engine
from groupo.trainer.checkpoint import TrainerState, list_checkpoints, load_checkpoint, save_checkpoint
from groupo.trainer.step import (
    UpdateBatch,
    accumulate_gradients,
    batched_logprobs,
    build_optimizer,
)
from groupo.types import SamplingParams

MAX_DRAWS = 3  # dynamic sampling: at most this many rounds of prompts to fill a batch


def loss_settings(cfg: Config) -> LossSettings:
    """The preset's settings with every `algorithm.*` key the user set."""
    a = cfg.algorithm
    names = [n for n in LossSettings.__dataclass_fields__ if n != "paper" and hasattr(a, n)]
    return get_preset(a.preset).with_overrides(**{n: getattr(a, n) for n in names})


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7919 + 17) % (2**31 - 1)


def fits_budget(used_s: float, step_times: list[float], budget_s: float) -> bool:
    """Whether another step, taking the mean of `step_times` (0 if none yet), ends within the budget."""
    expected_s = sum(step_times) / len(step_times) if step_times else 0.0
    return used_s + expected_s <= budget_s


def train(cfg: Config, run_dir: Path, *, resume: bool = False, policy=None) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says, writing everything under `run_dir`."""
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    settings = loss_settings(cfg)
    R, A, T = cfg.rollout, cfg.algorithm, cfg.train
    amp = resolve_autocast(cfg.model.autocast)
    torch.manual_seed(T.seed)

    # --- task, rewards, model, engine, optimizer
    task = load_task(cfg.task)
    reward_fns = resolve_rewards(cfg.rewards, task, max_completion_length=R.max_new_tokens)
    policy = policy if policy is not None else load_policy(cfg.model, cfg.lora, settings.beta)
    model, tokenizer = policy.model, policy.tokenizer
    engine = make_engine(R.engine, model, tokenizer, batch_size=R.batch_size, autocast=amp)
    trainable = policy.trainable_parameters()
    optimizer, scheduler = build_optimizer(model, T.lr, T.weight_decay, T.adam_betas, T.warmup_steps,
                                           T.steps * A.num_iterations, T.lr_schedule)
    state = TrainerState(step=0, data_position=0, elapsed_s=0.0)
    if resume and (ckpts := list_checkpoints(run_dir)):
        state = load_checkpoint(ckpts[-1], model, optimizer, scheduler)
    for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
        truncate_after(run_dir / name, state.step)  # drop what a killed run logged past its checkpoint
    writer = MetricsWriter(run_dir / "metrics.jsonl", run_dir / "tb" if cfg.run.tensorboard else None)
    progress = TrainProgress(T.steps, start=state.step, mode=cfg.run.progress,
                             budget_s=max(0.0, 60 * T.max_minutes - state.elapsed_s) if T.max_minutes else 0.0)
    progress.log(f"run dir {run_dir}  |  {sum(p.numel() for p in trainable):,} "
                 f"trainable parameters  |  preset {A.preset}  |  "
                 + (f"resumed at step {state.step}" if state.step else "fresh start"))
    eval_problems = task.test[: cfg.task.eval_size or None]
    prompt_cache: dict[str, list[int]] = {}

    def prompt_ids(problem) -> list[int]:
        key = json.dumps(problem.messages)
        if key not in prompt_cache:
            prompt_cache[key] = encode_prompt(tokenizer, problem.messages)
        return prompt_cache[key]

    def run_eval(step: int) -> float:
        t0 = time.monotonic()
        res = evaluate(engine, tokenizer, task, eval_problems, samples=1, temperature=0.0,
                       max_new_tokens=R.max_new_tokens, batch_size=R.batch_size, reward_fns=reward_fns)
        with open(run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, "accuracy": res.accuracy, "n": res.n,
                                 "seconds": round(time.monotonic() - t0, 1)}) + "\n")
        progress.log(f"eval step {step}: held-out accuracy {res.accuracy:.1%} on {res.n} problems "
                     f"({time.monotonic() - t0:.0f}s)")
        return res.accuracy

    if state.step == 0 and not read_jsonl(run_dir / "eval.jsonl"):
        run_eval(0)

    # SIGTERM (e.g. a scheduler pre-empting the job) is handled like Ctrl-C: checkpoint, then exit.
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    session_start = time.monotonic()
    stopped_early = False
    step_times: list[float] = []  # this session's; a step is started only if it should fit the budget
    try:
        while state.step < T.steps:
            used_s = state.elapsed_s + time.monotonic() - session_start
            if T.max_minutes and not fits_budget(used_s, step_times, 60 * T.max_minutes):
                stopped_early = True
                progress.log(f"time budget of {T.max_minutes} min: stopping after {state.step} steps"
                             + (f" (another would take ~{sum(step_times) / len(step_times):.0f}s)"
                                if step_times else ""))
                break
            t_step = time.monotonic()
            seed = step_seed(T.seed, state.step)
            params = SamplingParams(n=R.group_size, temperature=R.temperature, top_p=R.top_p, top_k=R.top_k,
                                    max_new_tokens=R.max_new_tokens, stop=tuple(R.stop), seed=seed)

            # --- 1. sample G completions for each of P prompts; score them
            problems, completions, rewards_PG, per_fn, n_zero_var, n_groups = [], [], [], {}, 0, 0
            for draw in range(MAX_DRAWS if settings.dynamic_sampling else 1):
                batch_problems = [task.train[(state.data_position + i) % len(task.train)]
                                  for i in range(T.prompts_per_step)]
                state.data_position += T.prompts_per_step
                groups = engine.generate([prompt_ids(p) for p in batch_problems],
                                         SamplingParams(**{**params.__dict__, "seed": seed + draw}))
                flat = [c for g in groups for c in g]
                rep = [p for p in batch_problems for _ in range(R.group_size)]
                total, scores = score(reward_fns, [p.messages for p in rep], [c.text for c in flat],
                                      [p.columns for p in rep], completion_ids=[c.token_ids for c in flat])
                r_PG = torch.tensor(total, dtype=torch.float32).view(len(batch_problems), R.group_size)
                zero_var = zero_variance_groups(r_PG)
                n_zero_var, n_groups = n_zero_var + int(zero_var.sum()), n_groups + len(batch_problems)
                keep = ~zero_var if settings.dynamic_sampling else torch.ones_like(zero_var)
                for p_i in keep.nonzero().flatten().tolist():
                    if len(problems) == T.prompts_per_step:
                        break
                    sl = slice(p_i * R.group_size, (p_i + 1) * R.group_size)
                    problems.append(batch_problems[p_i])
                    completions.extend(flat[sl])
                    rewards_PG.append(r_PG[p_i])
                    for name, vals in scores.items():
                        per_fn.setdefault(name, []).extend(vals[sl])
                if len(problems) == T.prompts_per_step:
                    break
            t_gen = time.monotonic() - t_step

            # --- 2. group-relative advantages; the batch to learn from
            metrics: dict[str, Any] = {}
            if problems:
                r_PG = torch.stack(rewards_PG)
                adv_PG = group_advantages(r_PG, baseline=settings.adv_baseline, scale=settings.adv_scale,
                                          std=settings.adv_std, eps=settings.adv_eps)
                packed = pack([prompt_ids(p) for p in problems for _ in range(R.group_size)],
                              [c.token_ids for c in completions], tokenizer.pad_token_id)
                mask_BT = packed.completion_mask_BT.float()
                if settings.mask_truncated:
                    truncated_B = torch.tensor([c.finish_reason == "length" for c in completions])
                    mask_BT = mask_BT * (~truncated_B).float()[:, None]
                old = ref = None
                if A.num_iterations > 1:  # mu > 1: the sampling policy's log-probs, fixed for all updates
                    old = batched_logprobs(model, packed, R.temperature, T.micro_batch_size, amp)
                if settings.beta > 0:
                    with policy.reference() as ref_model:
                        ref = batched_logprobs(ref_model, packed, R.temperature, T.micro_batch_size,
                                               amp)
                batch = UpdateBatch(packed, adv_PG.flatten(), mask_BT, old, ref)

                # --- 3. mu optimizer updates on this batch
                model.train()
                for _ in range(A.num_iterations):
                    torch.manual_seed(seed)  # dropout masks depend on the step only (exact resume)
                    optimizer.zero_grad(set_to_none=True)
                    metrics = accumulate_gradients(model, batch, settings, preset=A.preset, beta=settings.beta,
                                                   temperature=R.temperature, micro_batch_size=T.micro_batch_size,
                                                   max_len=R.max_new_tokens, amp=amp)
                    norm = torch.nn.utils.clip_grad_norm_(trainable, T.max_grad_norm or float("inf"))
                    metrics["grad_norm"] = norm.item()
                    metrics["lr"] = scheduler.get_last_lr()[0]
                    optimizer.step()
                    scheduler.step()
            state.step += 1

            # --- 4. log
            lengths = [len(c.token_ids) for c in completions]
            all_r = torch.stack(rewards_PG).flatten() if rewards_PG else torch.zeros(0)
            step_time = time.monotonic() - t_step
            step_times.append(step_time)
            record = {
                "step": state.step, "reward_mean": all_r.mean().item() if len(all_r) else None,
                "reward_std": all_r.std().item() if len(all_r) > 1 else None,
                **{f"reward/{k}": _mean(v) for k, v in per_fn.items()},
                "accuracy": _mean([float(v == 1.0) for v in per_fn.get(task.eval_reward, []) if v is not None]),
                "completion_len_mean": sum(lengths) / len(lengths) if lengths else None,
                "completion_len_max": max(lengths, default=None),
                "truncated_frac": _mean([float(c.finish_reason == "length") for c in completions]),
                "zero_var_group_frac": n_zero_var / max(1, n_groups), "groups_used": len(problems),
                **metrics, "step_time_s": step_time, "gen_time_s": t_gen,
                "tokens_per_s": sum(lengths) / step_time, "peak_mem_mb": _peak_mem_mb(),
                "data_position": state.data_position,
            }
            writer.write(record)
            _write_samples(run_dir / "samples.jsonl", state.step, problems, completions, per_fn,
                           cfg.run.samples_per_step, R.group_size)
            progress.advance(record)
            if T.eval_every and state.step % T.eval_every == 0 and state.step < T.steps:
                run_eval(state.step)
            if T.save_every and state.step % T.save_every == 0:
                state.elapsed_s += time.monotonic() - session_start
                session_start = time.monotonic()
                save_checkpoint(run_dir, model, optimizer, scheduler, state, keep=T.keep_checkpoints)
    except KeyboardInterrupt:
        state.elapsed_s += time.monotonic() - session_start
        path = save_checkpoint(run_dir, model, optimizer, scheduler, state, keep=T.keep_checkpoints)
        progress.close()
        writer.close()
        print(f"interrupted: saved {path}; continue with: groupo train --resume {run_dir}", flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)

    # --- after training: checkpoint, final weights, held-out accuracy, report
    state.elapsed_s += time.monotonic() - session_start
    saved = list_checkpoints(run_dir)
    if not saved or saved[-1].name != f"step-{state.step}":
        save_checkpoint(run_dir, model, optimizer, scheduler, state, keep=T.keep_checkpoints)
    save_policy(policy, run_dir / "final")
    after = run_eval(state.step)
    progress.close()
    writer.close()
    evals = read_jsonl(run_dir / "eval.jsonl")
    before = evals[0]["accuracy"] if evals else None
    summary = {"run_dir": str(run_dir), "model": cfg.model.name, "task": cfg.task.name, "preset": A.preset,
               "steps": state.step, "stopped_early": stopped_early,
               "train_minutes": round(state.elapsed_s / 60, 2),
               "total_minutes_this_session": round((time.monotonic() - started) / 60, 2),
               "eval_problems": len(eval_problems), "accuracy_before": before, "accuracy_after": after,
               "improvement_points": None if before is None else round(100 * (after - before), 1)}
    report = write_report(run_dir, summary)
    progress.log(f"held-out accuracy: {before:.1%} -> {after:.1%} ({summary['improvement_points']:+.1f} points) "
                 f"after {state.step} steps, {summary['train_minutes']} min of training\n"
                 f"final weights: {run_dir / 'final'}\nreport: {report}")
    return summary


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _peak_mem_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _write_samples(path: Path, step: int, problems, completions, per_fn, k: int, G: int) -> None:
    """The first completion of each of the first `k` prompts, with its rewards."""
    with open(path, "a", encoding="utf-8") as fh:
        for i, problem in enumerate(problems[:k]):
            c = completions[i * G]
            fh.write(json.dumps({
                "step": step, "prompt": problem.question, "answer": problem.answer, "completion": c.text,
                "finish_reason": c.finish_reason, "rewards": {n: v[i * G] for n, v in per_fn.items()},
            }, ensure_ascii=False) + "\n")

