"""The metric keys: one namespaced name per quantity, the same in metrics.jsonl and every sink.

`KEYS` is the table docs/report.md prints (a test keeps the two identical) and the report reads;
`<name>` stands for a reward function's name. `step` and `data_position` stay plain.
"""

from __future__ import annotations

from groupo.rewards.trl_compat import metric_name

KEYS: dict[str, str] = {
    "step": "optimizer steps done (the x axis everywhere)",
    "reward/mean": "weighted total reward, mean over the batch's completions",
    "reward/std": "its standard deviation over the batch",
    "reward/fn/<name>": "reward function `<name>`'s unweighted score, mean over the samples it scored (a reward "
                        "file's `<name>` is its file's name and function, `rewards.py:fn`, not its path)",
    "reward/none_frac/<name>": "share of samples `<name>` returned None for (no score)",
    "reward/timeout_frac": "share of the step's samples whose symbolic answer check timed out (scored 0)",
    "reward/gold_unparsed_frac": "share of the step's prompts whose reference answer is neither a number nor math",
    "judge/requests": "requests sent to the LLM judge in the step (rewards.judge; identical ones once)",
    "judge/cached_frac": "share of the step's judge requests answered without asking: the same as an earlier one of "
                         "the step, or replayed from the record of the run before a resume",
    "judge/failure_frac": "share of the judge requests sent that got no reply after the retries (unreachable, timed "
                          "out, HTTP error, malformed answer): their samples score None",
    "judge/unparsed_frac": "share of the judge's replies that rewards.judge.parse could not read: their samples "
                           "score None",
    "judge/latency_s": "seconds per judge request, mean (retries included)",
    "judge/prompt_tokens": "prompt tokens of the step's judge requests (as the server reports them)",
    "judge/completion_tokens": "tokens the judge wrote in the step",
    "accuracy/train": "share of sampled completions the task's evaluation reward scores 1",
    "accuracy/eval": "held-out greedy accuracy (eval.jsonl; sent to the other sinks at each evaluation)",
    "accuracy/eval_<split>": "the same on the extra held-out split `<split>` (task.extra_eval_splits; eval.jsonl "
                             "rows that name it)",
    "eval/pass@<k>": "train.eval_samples = k: share of held-out problems with a correct one among k samples "
                     "(unbiased estimator, Chen et al. 2021), at each evaluation (eval.jsonl)",
    "eval/maj@<k>": "share whose most frequent answer among the k samples is correct (answer-checked tasks)",
    "eval/mean@<k>": "share of all k x problems samples that are correct (= pass@1)",
    "completion/len_mean": "completion length in tokens, mean",
    "completion/len_max": "completion length in tokens, max",
    "completion/truncated_frac": "share of completions that hit rollout.max_new_tokens",
    "completion/multi_answer_frac": "share of completions with more than one `<answer>` tag or `\\boxed{}`",
    "rollout/zero_var_group_frac": "share of the step's groups whose rewards were all equal (no advantage)",
    "rollout/groups_used": "groups in the update (dynamic sampling drops zero-variance ones)",
    "rollout/logprob_mismatch": "mean abs(log pi_trainer - log pi_engine) over sampled tokens, before the update",
    "rollout/mismatch_kl": "k3 estimate of KL(engine || trainer)",
    "rollout/is_weight_mean": "mean importance weight against the engine, token mean (algorithm.is_correction)",
    "rollout/is_truncated_frac": "share of tokens whose importance weight was clipped to is_lower / is_upper "
                                 "(*_truncate)",
    "rollout/is_truncated_seq_frac": "share of sequences with such a token (sequence_truncate: the whole sequence)",
    "rollout/is_masked_frac": "share of tokens whose importance weight was zeroed outside [is_lower, is_upper] "
                              "(*_mask)",
    "rollout/is_masked_seq_frac": "share of sequences with such a token (sequence_mask: dropped whole)",
    "rollout/off_policy_masked_frac": "share of tokens dropped by the off-policy sequence mask "
                                      "(algorithm.off_policy_mask_threshold)",
    "rollout/off_policy_masked_seq_frac": "share of sequences it dropped: negative advantage, mean log(pi_engine / "
                                          "pi) above the threshold",
    "loss/total": "the loss optimized, the entropy bonus included (last of the mu passes; with "
                  "train.steps_per_generation, the mean of its mini-batches'); about 0 with mu = 1 and beta = 0, see "
                  "the log",
    "loss/entropy_bonus": "the entropy bonus's part of loss/total: -entropy_coef x the entropy aggregated like the "
                          "policy term (algorithm.entropy_coef)",
    "loss/entropy_coef": "adaptive entropy control's coefficient after the step (algorithm.entropy_target); the "
                         "bonus is on only while the entropy is at or below the target",
    "loss/entropy_kept_frac": "share of tokens the policy term keeps, the highest-entropy ones "
                              "(algorithm.top_entropy_quantile < 1)",
    "loss/entropy_kept": "their mean entropy, nats: what adaptive entropy control compares with its target",
    "loss/kl": "per-token KL to the reference (beta > 0)",
    "loss/clip_low_frac": "share of tokens clipped at 1 - eps_low",
    "loss/clip_high_frac": "share of tokens clipped at 1 + eps_high",
    "loss/ratio_mean": "importance ratio pi / pi_old, token mean",
    "loss/ratio_min": "importance ratio, min",
    "loss/ratio_max": "importance ratio, max",
    "loss/entropy": "policy entropy per token, nats",
    "optim/grad_norm": "gradient norm before clipping",
    "optim/lr": "learning rate of the step",
    "tools/turns_mean": "episodes with tools: assistant turns per episode, mean",
    "tools/calls_mean": "tool calls per episode, mean",
    "tools/calls/<name>": "calls of tool `<name>` per episode, mean",
    "tools/error_frac": "share of tool calls that failed (malformed, unknown tool, bad arguments, raised, timed out)",
    "tools/truncated_frac": "share of tool calls whose result was cut at episodes.max_tool_output_tokens",
    "time/tool_s": "seconds spent in tool calls, summed over calls (they run in parallel across episodes)",
    "time/step_s": "wall time of the step, seconds",
    "time/gen_s": "sampling and scoring",
    "time/update_s": "forward, backward and optimizer (step - gen - weight sync)",
    "time/weight_sync_s": "handing the new weights to the engine",
    "time/tokens_per_s": "completion tokens sampled per second of step",
    "time/reward/<name>": "seconds spent in reward function `<name>` during the step",
    "memory/host_peak_rss_mb": "peak resident memory of the process, MiB",
    "memory/gpu_peak_mb": "the step's peak allocated GPU memory, MiB (CUDA)",
    "memory/gpu_reserved_peak_mb": "the step's peak reserved GPU memory, MiB (CUDA)",
    "data_position": "training prompts drawn so far (resume point)",
    "alarms": "health alarms fired at this step (a list; only on such steps), see groupo.report.alarms",
}

# The update's own names (groupo.trainer.update, groupo.algorithms) -> the logged ones.
UPDATE_KEYS: dict[str, str] = {
    "loss": "loss/total", "kl": "loss/kl", "clip_low_frac": "loss/clip_low_frac",
    "clip_high_frac": "loss/clip_high_frac", "ratio_mean": "loss/ratio_mean", "ratio_min": "loss/ratio_min",
    "ratio_max": "loss/ratio_max", "entropy": "loss/entropy", "grad_norm": "optim/grad_norm", "lr": "optim/lr",
    "entropy_bonus": "loss/entropy_bonus", "entropy_coef": "loss/entropy_coef",
    "entropy_kept_frac": "loss/entropy_kept_frac", "entropy_kept": "loss/entropy_kept",
    **{k: f"rollout/{k}" for k in ("is_weight_mean", "is_truncated_frac", "is_truncated_seq_frac", "is_masked_frac",
                                   "is_masked_seq_frac", "off_policy_masked_frac", "off_policy_masked_seq_frac")},
}


def fn_key(name: str) -> str:
    return f"reward/fn/{metric_name(name)}"


def documented(key: str) -> bool:
    """Whether `key` is in the table (reward function keys match their `<name>` row, extra splits'
    their `<split>` row, sampled evaluation's their `<k>` row)."""
    if key in KEYS:
        return True
    return any(key.startswith(k[: -len(end)]) for k in KEYS for end in ("<name>", "<split>", "<k>")
               if k.endswith(end))


def markdown_table() -> str:
    """The table of keys docs/report.md prints."""
    rows = ["| key | meaning |", "|---|---|"]
    rows += [f"| `{k}` | {v.replace('|', '/')} |" for k, v in KEYS.items()]
    return "\n".join(rows)
