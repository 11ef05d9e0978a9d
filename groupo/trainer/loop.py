"""The training loop, top to bottom: sample groups, score, advantages, update, log, checkpoint.

Every step is a function of (weights, optimizer state, step, data position, seed): generation
is seeded per step and dropout is re-seeded per step, so a run resumed from a checkpoint
replays the remaining steps exactly and ends with the same weights as an uninterrupted run.

Under torchrun every rank runs this same loop on its share of each step's groups (see
trainer.rollout and trainer.step); decisions that must agree (the time budget, the first
evaluation) come from rank 0, and only rank 0 writes logs, metrics, samples, the report and
`final/`. One process is rank 0 of a world of 1 and behaves as if none of this existed.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import torch

from groupo.config import Config, ConfigError, dump_yaml
from groupo.data import load_task
from groupo.data.prompts import encode_prompt
from groupo.distributed import Dist, broadcast_object, gather_objects, setup
from groupo.eval.evaluate import evaluate
from groupo.models import load_policy, save_policy
from groupo.models.precision import resolve_autocast
from groupo.report.alarms import TrainingStopped, fired, loss_note
from groupo.report.html import write_report
from groupo.report.metrics import read_jsonl, truncate_after
from groupo.report.progress import TrainProgress
from groupo.report.sinks import open_sinks
from groupo.rewards import resolve_rewards
from groupo.rewards.trl_compat import RewardState
from groupo.rollout import make_engine
from groupo.rollout.serve import vllm_dtype, vllm_model_path
from groupo.trainer import parallel
from groupo.trainer.checkpoint import TrainerState, list_checkpoints, load_checkpoint, save_checkpoint
from groupo.trainer.record import step_record, symbolic_timeouts, write_samples
from groupo.trainer.rollout import collect_rollout
from groupo.trainer.step import UpdateSettings, build_optimizer, learn, loss_settings
from groupo.types import SamplingParams

MAX_DRAWS = 3  # dynamic sampling: at most this many rounds of prompts to fill a batch


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """The sampling (and dropout) seed of a step on a rank; rank 0's is the one-process seed."""
    return (seed * 1_000_003 + step * 7919 + 17 + rank * 104_729) % (2**31 - 1)


def fits_budget(used_s: float, step_times: list[float], budget_s: float) -> bool:
    """Whether another step, taking the mean of `step_times` (0 if none yet), ends within the budget."""
    expected_s = sum(step_times) / len(step_times) if step_times else 0.0
    return used_s + expected_s <= budget_s


def check_world(cfg: Config, world: Dist) -> None:
    if cfg.train.prompts_per_step % world.world_size:
        raise ConfigError(f"train.prompts_per_step = {cfg.train.prompts_per_step} is the global batch and must "
                          f"be divisible by the number of processes ({world.world_size}): each rank takes whole "
                          "groups")


def vllm_options(cfg: Config, run_dir: Path, world: Dist, device: torch.device, amp: str) -> dict[str, Any]:
    """What the vLLM engine needs besides the module: the base model's folder (or the server's URL),
    where adapters go, sizes."""
    R = cfg.rollout
    if R.vllm_url:  # a server: rank 0 writes the adapters it loads, every rank names them
        return {"url": R.vllm_url, "adapter_dir": run_dir / "vllm-adapters", "lora_rank": cfg.lora.rank,
                "world": world, "timeout_s": R.vllm_timeout_s}
    return {"model_path": str(vllm_model_path(cfg.model)), "lora_rank": cfg.lora.rank, "device": device,
            "seed": cfg.train.seed + world.rank, "dtype": vllm_dtype(cfg.model, amp),
            "adapter_dir": run_dir / "vllm-adapters" / (f"rank{world.rank}" if world.enabled else ""),
            "max_model_len": R.vllm_max_model_len or None, "memory_share": R.vllm_memory_share,
            "kv_cache_gb": R.vllm_kv_cache_gb}


def train(cfg: Config, run_dir: Path, *, resume: bool = False, policy=None) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says, writing everything under `run_dir`."""
    started = time.monotonic()
    world, device = setup(cfg.run.device, cfg.train.backend)
    check_world(cfg, world)
    main = world.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    R, A, T = cfg.rollout, cfg.algorithm, cfg.train
    if device.type == "cuda":  # TF32 tensor cores for float32 matmuls (bf16 autocast covers the rest)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    amp = resolve_autocast(cfg.model.autocast, device)
    torch.manual_seed(T.seed)  # the same on every rank: FSDP2 needs identical LoRA initialisations

    # --- task, rewards, model, parallel wrapper, optimizer, checkpoint; then the engine
    task = load_task(cfg.task)
    reward_fns = resolve_rewards(cfg.rewards, task, max_completion_length=R.max_new_tokens)
    loss = loss_settings(cfg)
    policy = policy if policy is not None else load_policy(cfg.model, cfg.lora, loss.beta, device=device)
    for m in (policy.model, policy.ref_model):
        if m is not None:
            m.to(device)
    tokenizer = policy.tokenizer
    module = parallel.wrap(policy.model, policy.ref_model, T.parallel, world, device)
    settings = UpdateSettings(loss, R.temperature, T.micro_batch_size, R.max_new_tokens, A.num_iterations,
                              T.max_grad_norm, amp, device.type, share_prompts=parallel.shares_prompts(module),
                              tis_cap=A.tis_cap, engine_old_logprobs=A.engine_old_logprobs)
    n_trainable = sum(p.numel() for p in policy.trainable_parameters())
    optimizer, scheduler = build_optimizer(policy.model, T.lr, T.weight_decay, T.adam_betas, T.warmup_steps,
                                           T.steps * A.num_iterations, T.lr_schedule)
    state = TrainerState(step=0, data_position=0, elapsed_s=0.0)
    if resume and (ckpts := list_checkpoints(run_dir)):
        state = load_checkpoint(ckpts[-1], policy.model, optimizer, scheduler, world)
    engine = make_engine(R.engine, policy.model, tokenizer, batch_size=R.batch_size, autocast=amp,
                         **(vllm_options(cfg, run_dir, world, device, amp) if R.engine == "vllm" else {}))
    engine.sync_weights()  # an engine with its own weights (vLLM) samples from the checkpoint's
    if main:
        for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
            truncate_after(run_dir / name, state.step)  # drop what a killed run logged past its checkpoint
    writer = open_sinks(cfg, run_dir) if main else None
    history = read_jsonl(run_dir / "metrics.jsonl") if main else []  # what the alarms look at
    progress = TrainProgress(T.steps, start=state.step, mode=cfg.run.progress if main else "off",
                             budget_s=max(0.0, 60 * T.max_minutes - state.elapsed_s) if T.max_minutes else 0.0)
    progress.log(f"run dir {run_dir}  |  {n_trainable:,} "
                 f"trainable parameters  |  preset {A.preset}  |  {device}, autocast {amp}"
                 + (f"  |  {world.world_size} processes, {T.parallel}" if world.enabled else "") + "  |  "
                 + (f"resumed at step {state.step}" if state.step else "fresh start")
                 + (f"  |  vLLM server {R.vllm_url}" if R.vllm_url else
                    f"  |  vLLM engine started in {engine.start_s:.0f}s" if R.engine == "vllm" else ""))
    if not settings.share_prompts or cfg.model.gradient_checkpointing:
        progress.log("the update encodes every prompt once per completion, not once per group: "
                     + ("FSDP2 cannot back-propagate through a shared prompt's KV cache" if not settings.share_prompts
                        else "gradient checkpointing turns the KV cache off in training"))
    if note := loss_note(A.num_iterations, loss.beta):
        progress.log(note)
    eval_problems = task.test[: cfg.task.eval_size or None]
    prompt_cache: dict[str, list[int]] = {}

    def prompt_ids(problem) -> list[int]:
        key = json.dumps(problem.messages)
        if key not in prompt_cache:
            prompt_cache[key] = encode_prompt(tokenizer, problem.messages)
        return prompt_cache[key]

    def run_eval(step: int) -> float:
        """Held-out greedy accuracy; each rank evaluates every W-th problem."""
        t0 = time.monotonic()
        with parallel.full_params(module):
            res = evaluate(engine, tokenizer, task, eval_problems[world.rank::world.world_size], samples=1,
                           temperature=0.0, max_new_tokens=R.max_new_tokens, batch_size=R.batch_size,
                           reward_fns=reward_fns)
        shares = gather_objects((res.accuracy * res.n, res.n), world)
        n = sum(k for _, k in shares)
        accuracy = sum(c for c, _ in shares) / n if n else 0.0
        if main:
            with open(run_dir / "eval.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, "accuracy": accuracy, "n": n,
                                     "seconds": round(time.monotonic() - t0, 1)}) + "\n")
            writer.scalars({"accuracy/eval": accuracy}, step)
        progress.log(f"eval step {step}: held-out accuracy {accuracy:.1%} on {n} problems "
                     f"({time.monotonic() - t0:.0f}s)")
        return accuracy

    if broadcast_object(state.step == 0 and not read_jsonl(run_dir / "eval.jsonl"), world):
        run_eval(0)

    # SIGTERM (e.g. a scheduler pre-empting the job) is handled like Ctrl-C: checkpoint, then exit.
    previous_sigterm = signal.signal(signal.SIGTERM, signal.default_int_handler)
    session_start = time.monotonic()
    stopped_early = False
    halted = None  # the alarm that stopped training (alarms.<name>=stop)
    step_times: list[float] = []  # this session's; a step is started only if it should fit the budget
    try:
        while state.step < T.steps:
            used_s = state.elapsed_s + time.monotonic() - session_start
            if T.max_minutes and not broadcast_object(fits_budget(used_s, step_times, 60 * T.max_minutes), world):
                stopped_early = True
                progress.log(f"time budget of {T.max_minutes} min: stopping after {state.step} steps"
                             + (f" (another would take ~{sum(step_times) / len(step_times):.0f}s)"
                                if step_times else ""))
                break
            t_step, timeouts = time.monotonic(), symbolic_timeouts()
            seed = step_seed(T.seed, state.step, world.rank)
            params = SamplingParams(n=R.group_size, temperature=R.temperature, top_p=R.top_p, top_k=R.top_k,
                                    max_new_tokens=R.max_new_tokens, stop=tuple(R.stop), seed=seed)

            # --- 1. sample G completions for each of P prompts (this rank's share); score; gather
            with parallel.full_params(module):
                rollout, state.data_position = collect_rollout(
                    engine, lambda i: task.train[i % len(task.train)], prompt_ids, reward_fns,
                    data_position=state.data_position, prompts_per_step=T.prompts_per_step, params=params,
                    dynamic_sampling=loss.dynamic_sampling, max_draws=MAX_DRAWS, world=world,
                    reward_state=RewardState(state.step, T.steps, epoch=state.data_position / len(task.train)))
            t_gen = time.monotonic() - t_step

            # --- 2. advantages over the global batch; mu optimizer updates on this rank's groups
            metrics: dict[str, Any] = dict(rollout.reward_metrics)
            if rollout.problems:
                metrics |= learn(module, policy, optimizer, scheduler, rollout, settings, world,
                                 pad_id=tokenizer.pad_token_id, seed=seed, device=device)
                t_sync = time.monotonic()
                engine.sync_weights()
                metrics["time/weight_sync_s"] = time.monotonic() - t_sync
            state.step += 1

            # --- 3. log (rank 0), evaluate, checkpoint
            step_time = time.monotonic() - t_step
            step_times.append(step_time)
            record = step_record(state.step, rollout, metrics, task.eval_reward, step_time=step_time,
                                 gen_time=t_gen, data_position=state.data_position, device=device,
                                 timeouts=symbolic_timeouts() - timeouts)
            history.append(record)
            alarms = broadcast_object(fired(history, cfg.alarms, task.eval_reward) if main and cfg.run.alarms
                                      else [], world)
            for alarm in alarms:
                progress.log(alarm.text())
            if alarms:
                record["alarms"] = [a.as_dict() for a in alarms]
            if main:
                writer.write(record)
                write_samples(run_dir / "samples.jsonl", state.step, rollout, cfg.run.samples_per_step)
            progress.advance(record)
            if halted := next((a for a in alarms if a.action == "stop"), None):
                break  # before any save: the newest checkpoint is the last good one
            if T.eval_every and state.step % T.eval_every == 0 and state.step < T.steps:
                run_eval(state.step)
            if T.save_every and state.step % T.save_every == 0:
                state.elapsed_s += time.monotonic() - session_start
                session_start = time.monotonic()
                save_checkpoint(run_dir, policy.model, optimizer, scheduler, state, T.keep_checkpoints, world)
    except KeyboardInterrupt:
        state.elapsed_s += time.monotonic() - session_start
        progress.close()
        if writer is not None:
            writer.close()
            write_report(run_dir, {"run_dir": str(run_dir), "steps": state.step, "interrupted": True})
        if world.enabled:  # a save is collective, and the ranks were interrupted at different points
            progress.log(f"interrupted: continue from the last periodic checkpoint with: "
                         f"torchrun ... -m groupo train --resume {run_dir}")
            raise
        path = save_checkpoint(run_dir, policy.model, optimizer, scheduler, state, keep=T.keep_checkpoints)
        print(f"interrupted: saved {path}; continue with: groupo train --resume {run_dir}", flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)

    if halted is not None:  # nothing of this step is saved; report, then say where to resume
        progress.close()
        saved = list_checkpoints(run_dir)
        if main:
            writer.close()
            write_report(run_dir, {"run_dir": str(run_dir), "steps": state.step, "stopped_by": halted.text()})
        raise TrainingStopped(f"{halted.text()}\nlast good checkpoint: {saved[-1] if saved else 'none'}; "
                              f"continue with: groupo train --resume {run_dir}")

    # --- after training: checkpoint, final weights, held-out accuracy, report
    state.elapsed_s += time.monotonic() - session_start
    saved = list_checkpoints(run_dir)
    if not saved or saved[-1].name != f"step-{state.step}":
        save_checkpoint(run_dir, policy.model, optimizer, scheduler, state, T.keep_checkpoints, world)
    whole = parallel.full_state_dict(policy.model, trainable_only=policy.is_lora)  # FSDP2: gathered to rank 0
    if main:
        save_policy(policy, run_dir / "final", state_dict=whole)
    after = run_eval(state.step)
    progress.close()
    evals = read_jsonl(run_dir / "eval.jsonl") if main else []
    before = broadcast_object(evals[0]["accuracy"] if evals else None, world)
    summary = {"run_dir": str(run_dir), "model": cfg.model.name, "task": cfg.task.name, "preset": A.preset,
               "steps": state.step, "stopped_early": stopped_early, "world_size": world.world_size,
               "train_minutes": round(state.elapsed_s / 60, 2),
               "total_minutes_this_session": round((time.monotonic() - started) / 60, 2),
               "eval_problems": len(eval_problems), "accuracy_before": before, "accuracy_after": after,
               "improvement_points": None if before is None else round(100 * (after - before), 1)}
    if main:
        writer.close()
        report = write_report(run_dir, summary)
        progress.log(f"held-out accuracy: {before:.1%} -> {after:.1%} ({summary['improvement_points']:+.1f} "
                     f"points) after {state.step} steps, {summary['train_minutes']} min of training\n"
                     f"final weights: {run_dir / 'final'}\nreport: {report}")
    return summary
