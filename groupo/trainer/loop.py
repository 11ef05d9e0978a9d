"""The training loop, top to bottom: set up, then per step collect -> prepare -> update -> record.

    collect   sample G completions for each prompt, score them, gather the ranks' groups (trainer.collect)
    prepare   advantages, the loss mask, the global denominator, old / reference log-probs (trainer.prepare)
    update    mu passes over the batch's mini-batches, an optimizer step each, exact gradient accumulation
              (trainer.update)
    record    metrics, samples, alarms, evaluation, checkpoint (trainer.runlog, trainer.checkpoint)

Every step is a function of (weights, optimizer state, step, data position, seed): generation
is seeded per step and dropout is re-seeded per step, so a run resumed from a checkpoint
replays the remaining steps exactly and ends with the same weights as an uninterrupted run.

Under torchrun every rank runs this same loop on its share of each step's groups; decisions that
must agree (the time budget, the first evaluation, the alarms) come from rank 0, and only rank 0
writes logs, metrics, samples, the report and `final/`. One process is rank 0 of a world of 1.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from groupo.algorithms.presets import loss_settings
from groupo.config import Config, ConfigError, dump_yaml
from groupo.config_rules import validate
from groupo.data import extra_eval_sets, load_task, require_train
from groupo.distributed import Dist, broadcast_object, setup
from groupo.engines import EngineContext, build_engine
from groupo.judges import MODEL_REWARDS, with_model_rewards
from groupo.models import load_policy, save_policy
from groupo.models.logprobs import checkpoint_keeps_cache
from groupo.models.packing import check_packable
from groupo.models.precision import resolve_autocast
from groupo.report.alarms import TrainingStopped, loss_note
from groupo.rewards import resolve_rewards
from groupo.rewards.trl_compat import RewardState
from groupo.rollout.sampler import make_sampler, with_environment_reward
from groupo.trainer import parallel
from groupo.trainer.checkpoint import TrainerState, list_checkpoints, load_latest, save_checkpoint
from groupo.trainer.collect import collect
from groupo.trainer.held_out import HeldOut, held_out_accuracy
from groupo.trainer.interrupts import Interrupted, finish_first, sigterm_as_interrupt
from groupo.trainer.prepare import prepare
from groupo.trainer.record import step_record
from groupo.trainer.runlog import RunLog
from groupo.trainer.settings import update_settings
from groupo.trainer.update import EntropyControl, build_optimizer, update
from groupo.types import SamplingParams


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
    per_rank, n = cfg.train.prompts_per_step // world.world_size, cfg.train.steps_per_generation
    if world.world_size > 1 and per_rank % n:
        raise ConfigError(f"train.steps_per_generation = {n} must divide the {per_rank} prompts each of the "
                          f"{world.world_size} processes takes (train.prompts_per_step / processes): each mini-batch "
                          "takes whole groups on every rank")


def train(cfg: Config, run_dir: Path, *, resume: bool = False, policy=None) -> dict[str, Any]:
    """Run (or resume) training as `cfg` says, writing everything under `run_dir`."""
    started = time.monotonic()
    validate(cfg)
    world, device = setup(cfg.run.device, cfg.train.backend)
    check_world(cfg, world)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    R, A, T = cfg.rollout, cfg.algorithm, cfg.train
    amp = _precision(cfg, device)
    torch.manual_seed(T.seed)  # the same on every rank: FSDP2 needs identical LoRA initialisations

    # --- task, rewards, model, parallel wrapper, optimizer, checkpoint, engine
    task = load_task(cfg.task)
    require_train(task)  # an empty training split: one line, before the model loads
    extra_sets = extra_eval_sets(cfg.task)  # task.extra_eval_splits (one the task lacks: a warning)
    reward_fns = resolve_rewards(cfg.rewards, task, max_completion_length=R.max_new_tokens, sandbox=cfg.sandbox)
    reward_fns = with_model_rewards(reward_fns, cfg, device=device, run_dir=run_dir, rank=world.rank)  # model-scored
    module, policy = _policy(cfg, policy, world, device)
    if T.packing:
        check_packable(policy.model)  # a layer that is not attention: one line, before the first step
    s = update_settings(cfg, amp=amp, device_type=device.type, share_prompts=parallel.shares_prompts(module))
    optimizer, scheduler = build_optimizer(policy.model, T.lr, T.weight_decay, T.adam_betas, T.warmup_steps,
                                           T.steps * A.num_iterations * T.steps_per_generation, T.lr_schedule)
    state = TrainerState(step=0, data_position=0, elapsed_s=0.0)
    if resume and (resumed := load_latest(run_dir, policy.model, optimizer, scheduler, world)):
        state = resumed.state  # the newest intact checkpoint; damaged newer ones are named in a warning
    entropy_control = None  # algorithm.entropy_target: adaptive entropy control, its state checkpointed
    if A.entropy_target is not None:
        entropy_control = EntropyControl(**(state.entropy_control or {"coef": s.loss.entropy_coef}))
    engine = build_engine(cfg, EngineContext(policy.model, policy.tokenizer, run_dir, world, device, amp))
    engine.sync_weights()  # an engine with its own weights samples from the checkpoint's
    sampler = make_sampler(cfg, engine, policy.tokenizer)  # one turn, or episodes with the run's tools
    reward_fns = with_environment_reward(reward_fns, sampler)
    eval_problems = task.test[: cfg.task.eval_size or None]
    # held-out accuracy reads the task's own reward: a judge or reward model would only add their cost
    verifiers = {k: v for k, v in reward_fns.items() if k not in MODEL_REWARDS}
    sampling = {"top_p": R.top_p, "top_k": R.top_k, "min_p": R.min_p, "repetition_penalty": R.repetition_penalty}
    held_out = HeldOut(lambda problems, sampled: held_out_accuracy(
        sampler, module, task, problems, verifiers, world=world, max_new_tokens=R.max_new_tokens,
        batch_size=R.batch_size, samples=T.eval_samples if sampled else 0, sampling=sampling,
        temperature=T.eval_temperature if T.eval_temperature is not None else R.temperature), eval_problems, extra_sets)

    with RunLog(cfg, run_dir, world, state.step, state.elapsed_s) as run, sigterm_as_interrupt():
        for line in _opening(cfg, run_dir, policy, world, device, amp, s, state, engine):
            run.log(line)
        if state.step == 0:
            held_out.evaluate(run, 0, before=True)
        session_start, step_times, stopped_early = time.monotonic(), [], False
        try:
            while state.step < T.steps:
                used_s = state.elapsed_s + time.monotonic() - session_start
                if T.max_minutes and not broadcast_object(fits_budget(used_s, step_times, 60 * T.max_minutes),
                                                          world):
                    stopped_early = True
                    run.log(f"time budget of {T.max_minutes} min: stopping after {state.step} steps"
                            + (f" (another would take ~{sum(step_times) / len(step_times):.0f}s)" if step_times
                               else ""))
                    break
                t_step, seed = time.monotonic(), step_seed(T.seed, state.step, world.rank)
                params = SamplingParams(n=R.group_size, temperature=R.temperature, top_p=R.top_p, top_k=R.top_k,
                                        min_p=R.min_p, repetition_penalty=R.repetition_penalty,
                                        max_new_tokens=R.max_new_tokens, stop=tuple(R.stop), seed=seed)

                # --- 1. collect: G completions for each of P prompts (this rank's share), scored, gathered
                with parallel.full_params(module):
                    rollout, position = collect(
                        sampler, lambda i: task.train[i % len(task.train)], reward_fns,
                        data_position=state.data_position, prompts_per_step=T.prompts_per_step, params=params,
                        dynamic_sampling=s.loss.dynamic_sampling, max_draws=A.max_draws, world=world,
                        reward_state=RewardState(state.step, T.steps, epoch=state.data_position / len(task.train)))
                t_gen = time.monotonic() - t_step

                # --- 2. prepare, 3. update, 4. record (rank 0 writes): an interrupt from here on is held
                # until the step is complete and logged, so a checkpoint never holds an unlogged step
                metrics: dict[str, Any] = dict(rollout.reward_metrics)
                with finish_first(run.log):
                    if rollout.problems:
                        batch = prepare(module, policy, rollout, s, world, pad_id=policy.tokenizer.pad_token_id,
                                        device=device)
                        metrics |= update(module, optimizer, scheduler, batch, s, world, seed=seed,
                                          entropy_control=entropy_control)
                        state.entropy_control = asdict(entropy_control) if entropy_control else None
                        t_sync = time.monotonic()
                        engine.sync_weights()
                        metrics["time/weight_sync_s"] = time.monotonic() - t_sync
                    state.step, state.data_position = state.step + 1, position
                    step_times.append(time.monotonic() - t_step)
                    alarms = run.step(step_record(state.step, rollout, metrics, task.eval_reward,
                                                  step_time=step_times[-1], gen_time=t_gen,
                                                  data_position=state.data_position, device=device),
                                      rollout, task.eval_reward)

                # --- evaluate, checkpoint
                if halted := next((a for a in alarms if a.action == "stop"), None):
                    _halt(run, run_dir, halted)
                if T.eval_every and state.step % T.eval_every == 0 and state.step < T.steps:
                    held_out.evaluate(run, state.step)
                if T.save_every and state.step % T.save_every == 0:
                    state.elapsed_s += time.monotonic() - session_start
                    session_start = time.monotonic()
                    save_checkpoint(run_dir, policy.model, optimizer, scheduler, state, T.keep_checkpoints, world)
        except KeyboardInterrupt as stop:
            state.elapsed_s += time.monotonic() - session_start
            _save_interrupted(run, run_dir, policy, optimizer, scheduler, state, world,
                              consistent=not isinstance(stop, Interrupted))
            raise

        # --- the end: checkpoint, final weights, held-out accuracy, report
        state.elapsed_s += time.monotonic() - session_start
        saved = list_checkpoints(run_dir)
        if not saved or saved[-1].name != f"step-{state.step}":
            save_checkpoint(run_dir, policy.model, optimizer, scheduler, state, T.keep_checkpoints, world)
        whole = parallel.full_state_dict(policy.model, trainable_only=policy.is_lora)  # FSDP2: gathered to rank 0
        if world.is_main:
            save_policy(policy, run_dir / "final", state_dict=whole)
        after = held_out.evaluate(run, state.step)
        before = run.first_accuracy()
        run.summary = {
            "run_dir": str(run_dir), "model": cfg.model.name, "task": cfg.task.name, "preset": A.preset,
            "steps": state.step, "stopped_early": stopped_early, "world_size": world.world_size,
            "train_minutes": round(state.elapsed_s / 60, 2),
            "total_minutes_this_session": round((time.monotonic() - started) / 60, 2),
            "eval_problems": len(eval_problems), "accuracy_before": before, "accuracy_after": after,
            "improvement_points": None if before is None else round(100 * (after - before), 1),
            **run.extra_eval(),  # {"extra_eval": {split: ...}} with task.extra_eval_splits
            **run.sampled_eval()}  # pass@k, maj@k, mean@k before and after, with train.eval_samples
    if world.is_main:
        run.log(run.closing())
    return run.summary


def _precision(cfg: Config, device: torch.device) -> str:
    """The autocast kind of the run's forward passes; on CUDA, TF32 tensor cores for float32 matmuls."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return resolve_autocast(cfg.model.autocast, device)


def _policy(cfg: Config, policy, world: Dist, device: torch.device):
    """(module the passes go through, the policy): loaded unless given, moved, wrapped (DDP / FSDP2)."""
    if policy is None:
        policy = load_policy(cfg.model, cfg.lora, loss_settings(cfg.algorithm).beta, device=device)
    for m in (policy.model, policy.ref_model):
        if m is not None:
            m.to(device)
    return parallel.wrap(policy.model, policy.ref_model, cfg.train.parallel, world, device), policy


def _opening(cfg: Config, run_dir: Path, policy, world: Dist, device, amp: str, s, state, engine) -> list[str]:
    """The lines that open a run's log: what trains where, and the settings worth a note."""
    n_trainable = sum(p.numel() for p in policy.trainable_parameters())
    where = engine.describe()
    lines = [f"run dir {run_dir}  |  {n_trainable:,} trainable parameters  |  preset {cfg.algorithm.preset}  |  "
             f"{device}, autocast {amp}"
             + (f"  |  {world.world_size} processes, {cfg.train.parallel}" if world.enabled else "")
             + f"  |  {f'resumed at step {state.step}' if state.step else 'fresh start'}"
             + (f"  |  {where}" if where else "")]
    if not s.share_prompts or (cfg.model.gradient_checkpointing and not checkpoint_keeps_cache()):
        lines.append("the update encodes every prompt once per completion, not once per group: "
                     + ("FSDP2 cannot back-propagate through a shared prompt's KV cache" if not s.share_prompts
                        else "this transformers release drops the KV cache of checkpointed layers"))
    # one optimizer step per batch and no entropy bonus: otherwise the logged loss is not ~0 by construction
    plain = s.steps_per_generation == 1 and s.loss.entropy_coef == 0 and s.entropy_target is None
    if plain and (note := loss_note(cfg.algorithm.num_iterations, s.loss.beta)):
        lines.append(note)
    return lines


def _halt(run: RunLog, run_dir: Path, alarm) -> None:
    """An alarm set to stop fired: nothing of this step is saved, the newest checkpoint stays the
    last good one; the report says which alarm stopped the run."""
    saved = list_checkpoints(run_dir)
    run.summary["stopped_by"] = alarm.text()
    raise TrainingStopped(f"{alarm.text()}\nlast good checkpoint: {saved[-1] if saved else 'none'}; "
                          f"continue with: groupo train --resume {run_dir}")


def _save_interrupted(run: RunLog, run_dir: Path, policy, optimizer, scheduler, state: TrainerState, world: Dist,
                      *, consistent: bool) -> None:
    """On Ctrl-C / SIGTERM: save the last completed step, unless it is saved already, the state is
    mid-update (a second interrupt), or several processes were interrupted at different points."""
    saved = list_checkpoints(run_dir)
    resume = f"groupo train --resume {run_dir}"
    if world.enabled or not consistent:
        why = "the ranks were interrupted at different points" if world.enabled else "interrupted mid-update"
        run.log(f"interrupted ({why}): continue from the last checkpoint ({saved[-1].name if saved else 'none'}) "
                f"with: {'torchrun ... -m ' if world.enabled else ''}{resume}")
        return
    if saved and saved[-1].name == f"step-{state.step}":
        run.log(f"interrupted: {saved[-1]} already holds step {state.step}; continue with: {resume}")
        return
    path = save_checkpoint(run_dir, policy.model, optimizer, scheduler, state, keep=run.cfg.train.keep_checkpoints)
    run.log(f"interrupted: saved {path}; continue with: {resume}")
