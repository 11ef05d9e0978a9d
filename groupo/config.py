"""The typed configuration tree: the single source of truth for a run.

A run is described by one `Config` (a tree of dataclasses). It is built from defaults, then a
YAML file, then `section.key=value` overrides from the command line, and validated before any
model or data loads. Every field carries its help text and, where it has one, its allowed range
in `metadata`; `groupo config` prints the resolved tree and the trainer saves it to the run dir.

Longer than the project's usual file: the tree is the documentation of every key, and its
loader/validator is kept beside it so that a key and its checks never drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from groupo.types import LossSettings


class ConfigError(ValueError):
    """A user-facing configuration error; the CLI prints it without a traceback."""


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       min_exclusive: bool = False) -> Any:
    """A dataclass field with help text and an optional numeric range."""
    meta = {"help": help, "min": min, "max": max, "min_exclusive": min_exclusive}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    name: str = _f("smollm2-135m-instruct",
                   "built-in name, local Hugging Face folder, .gguf file, or hub id")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "dtype the weights are kept in (trainable LoRA weights stay float32)")
    autocast: Literal["auto", "none", "bf16", "fp16"] = _f(
        "auto", "mixed precision for forward passes; auto = bf16 where the hardware has native bf16 "
        "(most GPUs, AVX512-BF16/AMX CPUs), else none (emulated bf16 is slower than float32)")
    gradient_checkpointing: bool = _f(False, "trade compute for activation memory")
    update_attention: Literal["sdpa", "eager"] = _f(
        "sdpa", "attention kernel of the update's passes (generation keeps sdpa): eager writes the scores "
        "out as matmuls, faster on CPUs for short sequences but it keeps rows x heads x L x L "
        "probabilities per layer for the backward (groupo.models.attention)")
    revision: str | None = _f(None, "hub revision (branch, tag or commit) for hub ids")
    quantization: Literal["none", "nf4", "fp4", "int8"] = _f(
        "none", "QLoRA: the frozen base loaded 4-bit (nf4, fp4) or 8-bit (int8) through bitsandbytes "
        "(pip install 'groupo[qlora]'); LoRA weights stay float32, 4-bit layers compute in bf16 where native, "
        "else float32; needs lora.rank > 0 (groupo.models.quantization)")


@dataclass
class LoraConfig:
    rank: int = _f(16, "LoRA rank r; 0 trains all weights (full fine-tuning)", min=0)
    alpha: float = _f(32.0, "LoRA alpha (scale = alpha / rank)", min=0, min_exclusive=True)
    dropout: float = _f(0.0, "dropout on the LoRA input", min=0, max=1)
    target_modules: list[str] = _f(
        ["attention"], "what gets adapters: module names (q_proj, ...) and groups resolved per architecture: "
        "all-linear (every linear layer but the output head), attention, mlp (groupo.models.targets)")
    variant: Literal["lora", "rslora", "dora"] = _f(
        "lora", "lora (scale alpha / rank), rslora (scale alpha / sqrt(rank), arXiv 2312.03732) or dora "
        "(weight-decomposed, arXiv 2402.09353; slower, and vLLM does not serve it), all through PEFT")
    init_from: str | None = _f(
        None, "a PEFT adapter folder to start from (an SFT adapter, or a groupo run's final/): its rank, alpha, "
        "targets and variant are used; the reference policy stays the base with the adapter off")


@dataclass
class TaskConfig:
    name: str = _f("arithmetic",
                   "built-in task (arithmetic, countdown, gsm8k, ...) or a path to a .jsonl file")
    path: str | None = _f(None, "data file or folder for loaders that read one")
    mix: dict[str, str | None] = _f({}, "with task.name=mix: each component task -> its task.path (null: "
                                    "none needed); their training problems are pooled (groupo.data.mix)")
    split: str = _f("train", "split to train on")
    eval_split: str = _f("test", "held-out split for evaluation")
    eval_size: int = _f(100, "held-out problems evaluated (0 = all)", min=0)
    extra_eval_splits: list[str] = _f(
        [], "further held-out splits of the same task (e.g. [unseen] for arithmetic), each evaluated "
        "like task.eval_split: before training, every train.eval_every steps and at the end, "
        "task.eval_size problems each; logged as accuracy/eval_<split>")
    train_size: int = _f(0, "training problems kept after shuffling (0 = all)", min=0)
    difficulty: int = _f(2, "difficulty level for synthetic tasks (1 = easiest)", min=1, max=5)
    next_level_share: float = _f(0.0, "arithmetic: share of training problems drawn from level difficulty + 1 "
                                 "(the held-out set stays the difficulty's own)", min=0, max=1)
    prompt_style: Literal["plain", "answer_tag", "r1", "boxed", "python_tool", "choice"] = _f(
        "answer_tag", "instruction added to each question (see groupo.data.prompts)")
    system_prompt: str | None = _f(None, "system prompt; None = the prompt style's own")
    few_shot: int = _f(0, "worked examples prepended to each prompt", min=0)
    question_field: str = _f("question", "field holding the question (generic loader)")
    answer_field: str = _f("answer", "field holding the reference answer (generic loader)")
    skip_bad_rows: bool = _f(False, "skip rows with a missing or unparseable answer (and count them)")
    language: str = _f("en", "MGSM language file (bn, de, en, es, fr, ja, ru, sw, te, th, zh) "
                       "when task.path is a folder")
    test_fraction: float = _f(0.1, "share of a single-file dataset held out as its test split (seeded)",
                              min=0, max=1)
    seed: int = _f(1234, "seed for shuffling, splits and synthetic problems")


@dataclass
class RewardModelConfig:
    """A sequence-classification reward model scoring (prompt, completion), logged as reward/fn/reward_model
    (groupo.judges.reward_model)."""

    path: str = _f("", "local Hugging Face sequence-classification model folder (a hub id where a network "
                   "exists); empty = none")
    weight: float = _f(1.0, "its weight in the total reward")
    label: int = _f(0, "which of its outputs is the score (0 for a one-output reward model)", min=0)
    batch_size: int = _f(16, "sequences per forward pass", min=1)
    max_length: int = _f(0, "tokens per sequence at most, cut from the left so the completion's end stays "
                         "(0 = the tokenizer's own limit)", min=0)
    dtype: Literal["float32", "bfloat16", "float16"] = _f("float32", "dtype of its weights")


@dataclass
class JudgeConfig:
    """An LLM judge whose verdict joins the reward as reward/fn/judge (groupo.judges.judge); off while
    both model and url are empty."""

    model: str = _f("", "without url: a model this process runs as the judge (built-in name, local folder, .gguf or "
                    "hub id); with url: the model asked of the server (empty = the first it lists)")
    url: str = _f("", "an OpenAI-compatible chat server as the judge (groupo serve, vLLM, llama.cpp's server, a hosted "
                  "API): its base URL, e.g. http://127.0.0.1:8000/v1 (a bare host gets /v1)")
    api_key_env: str = _f("", "with url: the NAME of the environment variable holding the API key, sent as a Bearer "
                          "token (the key itself is never stored, logged or saved); empty = no key")
    template: str = _f("quality", "the judge's instructions: quality, reasoning, correct, rank (built-in), a .txt / "
                       ".md file, or the text itself with {question} and optionally {reference} placeholders")
    parse: str = _f("number[0,10]", "how a reply becomes a score in [0, 1]: number[LO,HI] (its 'Score: N' line), "
                    "letter[A-E] (A best), yes_no; a reply that does not parse scores None")
    think: bool = _f(True, "the judge may reason before its verdict; false: it is asked for the verdict alone (in "
                     "this process its reply is started with the verdict's label, 'Score: ', and stops within a few "
                     "tokens: far cheaper, and a small model keeps to the format)")
    group: bool = _f(False, "the judge sees each prompt's whole group at once and scores every completion beside "
                     "the others (RULER-style: GRPO only needs relative scores); one request per group")
    weight: float = _f(1.0, "its weight in the total reward")
    timeout_s: float = _f(60.0, "with url: seconds one request may take (in this process a reply always ends at "
                          "max_tokens; rewards.async_timeout_s bounds the whole call)", min=0, min_exclusive=True)
    retries: int = _f(2, "further tries of a request that timed out, got 429 / 5xx or a malformed answer, after "
                      "1, 2, 4 ... s (not of an unreachable server, nor a refused key)", min=0, max=10)
    max_concurrency: int = _f(8, "requests in flight at once (in this process: generated together)", min=1)
    max_tokens: int = _f(256, "longest reply in tokens", min=1)
    temperature: float = _f(0.0, "the judge's sampling temperature (0 = greedy: a request always gets the same "
                            "reply from a local judge)", min=0)


@dataclass
class RewardsConfig:
    funcs: dict[str, float] = _f(
        {}, "reward name (or module:function, or file.py:function) -> weight; empty = the task's own")
    overlong_buffer: int = _f(0, "DAPO soft overlong punishment buffer in tokens (0 = off)", min=0)
    overlong_penalty: float = _f(1.0, "DAPO overlong penalty factor", min=0)
    timeout_s: float = _f(5.0, "hard time limit per reward check, seconds", min=0, min_exclusive=True)
    extract_order: list[str] = _f(
        ["answer_tag", "boxed", "gsm8k", "answer_is", "last_number"],
        "where the final answer is looked for, in order (see groupo.rewards.extract)")
    column_aliases: dict[str, str] = _f(
        {}, "extra keyword -> dataset column for reward functions, e.g. {solution: answer} gives TRL's "
        "accuracy_reward (which reads `solution`) the reference answer; replaces a column of that name")
    completion_format: Literal["trl", "text"] = _f(
        "trl", "how user reward functions get completions: trl = as TRL's GRPOTrainer passes them "
        "([{role: assistant, content: ...}] for chat prompts), text = plain strings")
    max_concurrency: int = _f(8, "async reward functions (async def, as TRL runs them, and the judge): calls in "
                              "flight at once; each call scores a whole batch", min=1)
    async_timeout_s: float = _f(600.0, "async reward functions: wall-clock limit of one call on a batch, seconds; "
                                "past it the call is cancelled and its samples score None (a warning; the "
                                "reward_fn alarm counts them)", min=0, min_exclusive=True)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


@dataclass
class VllmConfig:
    """rollout.engine = vllm: the colocated engine's memory, or the server it samples on."""

    memory_share: float = _f(0.3, "on a GPU: share of the GPU's memory the engine may take (it sleeps during "
                             "updates)", min=0, max=1, min_exclusive=True)
    kv_cache_gb: int = _f(1, "on a CPU: KV cache size in whole GiB", min=1)
    max_model_len: int = _f(0, "longest prompt + completion in tokens (0 = the model's own maximum)", min=0)
    url: str = _f("", "as a server: base URL of a running `vllm serve` (groupo serve), e.g. http://127.0.0.1:8000; "
                  "empty = the colocated engine in this process")
    timeout_s: float = _f(600.0, "server: seconds to wait for one request", min=0, min_exclusive=True)


@dataclass
class RolloutConfig:
    engine: str = _f("hf", "generation engine: hf (transformers generate) or vllm")
    group_size: int = _f(8, "completions sampled per prompt (G); a group of one has no advantage", min=2)
    max_new_tokens: int = _f(48, "maximum completion length in tokens", min=1)
    temperature: float = _f(0.7, "sampling temperature", min=0, min_exclusive=True)
    top_p: float = _f(1.0, "nucleus sampling threshold", min=0, max=1, min_exclusive=True)
    top_k: int = _f(0, "top-k sampling (0 = off)", min=0)
    min_p: float = _f(0.0, "min-p sampling: drop tokens less likely than min_p x the likeliest one (0 = off)",
                      min=0, max=1)
    repetition_penalty: float = _f(1.0, "divide the positive logits (multiply the negative ones) of tokens already "
                                   "in the prompt or the completion by this (1 = off; transformers' and vLLM's rule)",
                                   min=0, min_exclusive=True)
    chat_template_kwargs: dict[str, Any] = _f({}, "extra arguments to the chat template when prompts are encoded, "
                                              "e.g. {enable_thinking: false} for Qwen3")
    stop: list[str] = _f([], "extra stop strings (the EOS token always stops); none may be empty or blank")
    batch_size: int = _f(64, "sequences generated per forward batch", min=1)
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class EpisodesConfig:
    """Multi-turn episodes with tools (docs/tools.md); off while tool_format is empty."""

    tool_format: Literal["", "python_block", "chat_template"] = _f(
        "", "episodes with tools: python_block = ```python blocks run by the python tool, their output appended "
        "as ```output blocks (any model); chat_template = the model's own tool calls, rendered by its chat "
        "template (Hermes-style <tool_call> JSON); empty = one completion per prompt, no tools")
    tools: list[str] = _f([], "tools offered in episodes: python (sandboxed), calculator, file.py:function or "
                          "module:function (plain typed, documented functions, as TRL's tools=); python_block: "
                          "python only (the default)")
    environment: str = _f("", "a TRL-style environment, file.py:Class or module:factory: one instance per episode, "
                          "reset(**columns) at its start, its public methods are tools, get_reward() a reward")
    max_turns: int = _f(4, "assistant turns per episode at most (TRL's max_tool_calling_iterations + 1)", min=1)
    max_tool_output_tokens: int = _f(256, "a tool result longer than this many tokens is cut and marked", min=1)
    tool_timeout_s: float = _f(10.0, "wall-clock limit of one tool call, seconds (python: also its CPU limit)",
                               min=0, min_exclusive=True)
    tool_workers: int = _f(0, "tool calls run at once across episodes (threads; 0 = one per CPU)", min=0)


@dataclass
class SandboxConfig:
    """Where model-written code runs: code rewards and the python tool (groupo.sandbox). Their time
    limits are rewards.timeout_s and episodes.tool_timeout_s."""

    workers: int = _f(0, "programs run in parallel (0 = one per CPU)", min=0)
    memory_mb: int = _f(1024, "address-space limit of each program, MiB", min=128)


def _optional_key(f: dataclasses.Field, tp: Any) -> tuple[str, Any, Any]:
    """An `algorithm.<name>` key for LossSettings field `f`: its type or null (= the preset's value),
    with the field's help and range."""
    m = f.metadata
    return f.name, tp | None, _f(None, m["help"], min=m.get("min"), max=m.get("max"),
                                 min_exclusive=m.get("min_exclusive", False))


# The loss and advantage settings are declared once, in groupo.types.LossSettings; this section gets
# one optional key per field from there, so the config and the presets cannot drift apart.
AlgorithmConfig = dataclasses.make_dataclass("AlgorithmConfig", [
    ("preset", str, _f("grpo", "grpo, dr_grpo, dapo, gspo, gspo_token, cispo or sapo (groupo presets)")),
    *(_optional_key(f, tp) for f, tp in zip(dataclasses.fields(LossSettings),
                                             typing.get_type_hints(LossSettings).values(), strict=True)),
    ("num_iterations", int, _f(1, "updates per batch (mu); > 1 reuses old log-probs", min=1)),
    ("max_draws", int, _f(3, "dynamic sampling: at most this many rounds of prompts drawn to fill a step's "
                          "batch with groups whose rewards differ (DAPO draws until full; a cap keeps a step's "
                          "time bounded when most groups are solved or hopeless)", min=1)),
    ("tis_cap", float | None, _f(None, "the older name of is_correction=token_truncate with is_upper=tis_cap: weight "
                                 "each token's policy term by min(pi_trainer_old / pi_engine, tis_cap); null = "
                                 "as is_correction says", min=0, min_exclusive=True)),
    ("is_correction", Literal["auto", "none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"],
     _f("auto", "importance weights correcting for the engine's log-probs differing from the trainer's, r = "
        "pi_trainer_old / pi_engine per token (sequence_*: their product per sequence): *_truncate clips r into "
        "[is_lower, is_upper], *_mask weights by r but zeroes it outside; auto = token_truncate on rollout.engine="
        "vllm, none on hf (docs/algorithms.md says why)")),
    ("is_upper", float | None, _f(2.0, "upper bound of the importance weights (null: none)", min=0,
                                  min_exclusive=True)),
    ("is_lower", float | None, _f(None, "lower bound of the importance weights (null: none)", min=0)),
    ("off_policy_mask_threshold", float | None, _f(
        None, "DeepSeek-V3.2's off-policy sequence mask: a sequence with a negative advantage whose mean "
        "log(pi_engine / pi) exceeds this threshold (delta) drops out of the loss; null = off", min=0)),
    ("entropy_target", float | None, _f(
        None, "adaptive entropy control (Skywork-OR1, as TRL): the bonus acts only while the last optimizer step's "
        "entropy (nats, over the tokens the policy term keeps) is at or below this target, and entropy_coef moves by "
        "entropy_coef_delta after each step, up while at or below it, down above it; null = a constant entropy_coef",
        min=0)),
    ("entropy_coef_delta", float, _f(0.005, "adaptive entropy control: step of the coefficient", min=0)),
    ("entropy_coef_min", float, _f(0.0, "adaptive entropy control: lowest coefficient", min=0)),
    ("entropy_coef_max", float, _f(1.0, "adaptive entropy control: highest coefficient", min=0)),
    ("engine_old_logprobs", bool, _f(False, "use the engine's log-probs of the sampled tokens as the old policy "
                                     "(GSPO's suggestion, sec. 4.3), not the trainer's; needs num_iterations = 1")),
], namespace={"__doc__": "The loss and advantage settings. `None` means: take the preset's value.",
              "__module__": __name__})


@dataclass
class TrainConfig:
    steps: int = _f(60, "steps: batches of prompts sampled and trained on (each makes steps_per_generation x "
                    "algorithm.num_iterations optimizer steps)", min=1)
    prompts_per_step: int = _f(8, "prompts drawn per step", min=1)
    steps_per_generation: int = _f(1, "optimizer steps per batch of prompts: the batch is split into this many "
                                   "mini-batches of whole groups, one optimizer step each, the old log-probs fixed at "
                                   "sampling (verl's ppo_mini_batch_size = the batch / this); with "
                                   "algorithm.num_iterations, mu passes over all mini-batches", min=1)
    micro_batch_size: int = _f(16, "sequences per forward/backward pass", min=1)
    micro_batch_tokens: int = _f(0, "token budget per forward/backward pass instead: as many sequences as fit in "
                                 "rows x (longest prompt + longest completion) <= this (with train.packing: the sum "
                                 "of their prompt + completion tokens); 0 = micro_batch_size", min=0)
    packing: bool = _f(False, "padding-free update passes: each micro-batch's sequences end to end in one row, "
                       "attention kept within each sequence and its shared prompt; the same loss and gradients. "
                       "Pays where completion lengths vary (docs/benchmarks.md)")
    lr: float = _f(1e-4, "peak learning rate", min=0, min_exclusive=True)
    lr_schedule: Literal["constant", "cosine"] = _f("constant", "after warm-up")
    warmup_steps: int = _f(0, "linear warm-up steps", min=0)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0)
    adam_betas: list[float] = _f([0.9, 0.999], "AdamW betas")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)", min=0)
    seed: int = _f(0, "seed for sampling, dropout and data order")
    eval_every: int = _f(0, "evaluate every N steps (0 = only before and after)", min=0)
    eval_samples: int = _f(0, "k > 0: each held-out evaluation also samples k completions per problem and logs pass@k, "
                           "maj@k and mean@k beside greedy accuracy; 0 = greedy only", min=0)
    eval_temperature: float | None = _f(None, "temperature of those k samples (null: rollout.temperature)", min=0,
                                        min_exclusive=True)
    save_every: int = _f(10, "checkpoint every N steps (0 = only at the end)", min=0)
    keep_checkpoints: int = _f(2, "newest checkpoints kept", min=1)
    max_minutes: float = _f(0.0, "time budget in minutes of training: a step starts only if it should end "
                            "within it, at the mean step time so far (0 = none)",
                            min=0)
    parallel: Literal["ddp", "fsdp2"] = _f(
        "ddp", "with several processes (torchrun): ddp replicates the model on every rank; fsdp2 shards "
        "parameters, gradients and optimizer state (fully_shard per decoder layer). One process: unused")
    backend: Literal["auto", "nccl", "gloo"] = _f(
        "auto", "torch.distributed backend with several processes; auto = nccl on CUDA, gloo on CPU")


@dataclass
class RunConfig:
    dir: str | None = _f(None, "run directory; None = runs/<name>-<timestamp>")
    device: str = _f("auto", "auto (CUDA where available, else CPU), cpu, cuda or cuda:N; under torchrun, "
                     "auto and cuda give each rank cuda:LOCAL_RANK")
    name: str = _f("groupo", "run name used in the default directory")
    samples_per_step: int = _f(4, "completions written to samples.jsonl each step", min=0)
    tensorboard: bool = _f(True, "also write TensorBoard event files to RUN_DIR/tb (metrics.jsonl is always written)")
    sinks: list[str] = _f([], "further metric sinks, each imported only when named: wandb, trackio, mlflow "
                          "(project = run.name; see groupo.report.sinks)")
    alarms: bool = _f(True, "health alarms (see the alarms section); off turns them all off")
    progress: Literal["auto", "rich", "plain", "off"] = _f("auto", "progress display")


Action = Literal["stop", "warn", "off"]


@dataclass
class AlarmsConfig:
    """Health alarms over the metrics history (groupo.report.alarms). Per alarm: stop (save nothing
    more, keep the last good checkpoint, exit with the message), warn (log it) or off."""

    nan: Action = _f("stop", "NaN or inf in the loss, rewards, log-probs or gradients")
    kl: Action = _f("warn", "KL to the reference above kl_max, or rising steadily")
    kl_max: float = _f(1.0, "per-token KL above which the kl alarm fires", min=0, min_exclusive=True)
    kl_rise_steps: int = _f(10, "the kl alarm fires when KL rose over this many steps (see kl_rise_factor)", min=2)
    kl_rise_factor: float = _f(3.0, "... to at least this many times its value at the window's start", min=1)
    no_signal: Action = _f("warn", "no learning signal: most groups have equal rewards")
    no_signal_frac: float = _f(0.9, "share of zero-variance groups that counts as no signal", min=0, max=1)
    no_signal_steps: int = _f(3, "consecutive steps of it before the alarm fires", min=1)
    reward_hacking: Action = _f("warn", "a format / length reward rising while accuracy falls")
    hacking_window: int = _f(10, "steps compared (first half against second half)", min=2)
    hacking_delta: float = _f(0.1, "rise of the other reward and fall of accuracy that count", min=0,
                              min_exclusive=True)
    length: Action = _f("warn", "completions collapsing to very short ones, or always hitting the limit")
    short_len_ratio: float = _f(0.25, "mean length below this share of its first steps' mean counts as a "
                                "collapse", min=0, max=1)
    truncated_frac: float = _f(0.95, "share of truncated completions that counts as always at the limit",
                               min=0, max=1)
    length_steps: int = _f(3, "consecutive steps of either before the alarm fires", min=1)
    answer_tags: Action = _f("warn", "several answer tags (<answer>, \\boxed) per completion")
    multi_answer_frac: float = _f(0.2, "share of completions with more than one that fires the alarm",
                                  min=0, max=1)
    reward_fn: Action = _f("warn", "a reward returning None, or timing out, on many samples; gold answers "
                           "that fail to parse")
    reward_fn_frac: float = _f(0.5, "share of samples (None / timeouts) that fires the alarm", min=0, max=1)
    gold_unparsed_frac: float = _f(0.05, "share of prompts with an unparseable reference answer that fires it",
                                   min=0, max=1)
    judge: Action = _f("warn", "the LLM judge failing (unreachable, timing out) or not understood on many requests")
    judge_frac: float = _f(0.2, "share of the step's judge requests failed, or of its replies unparsed, that fires it",
                           min=0, max=1)
    entropy: Action = _f("warn", "entropy collapse: entropy falling toward 0 while accuracy is flat")
    entropy_ratio: float = _f(0.1, "entropy below this share of its first steps' mean counts as collapsed",
                              min=0, max=1)
    entropy_window: int = _f(10, "steps over which accuracy must stay flat (within hacking_delta)", min=2)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)


# ---------------------------------------------------------------------------------------------
# Loading, overriding and validating


def _is_dc(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the tree, e.g. ``algorithm.beta``."""
    keys = []
    for name, tp in _hints(cls).items():
        if _is_dc(tp):
            keys += all_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else "; run `groupo config` to list the keys"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_type_name(k)} to {_type_name(v)}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


_NO = object()


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or `_NO` if it is not one."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool) and ("off" if not value else "on") in typing.get_args(tp):
            return "off" if not value else "on"  # YAML 1.1 reads a bare off / on as a bool
        return value if value in typing.get_args(tp) else _NO
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in typing.get_args(tp) else _NO
        for arg in typing.get_args(tp):
            if arg is not type(None) and (out := _coerce(value, arg)) is not _NO:
                return out
        return _NO
    if origin is list:
        if not isinstance(value, list):
            return _NO
        items = [_coerce(v, typing.get_args(tp)[0]) for v in value]
        return _NO if any(i is _NO for i in items) else items
    if origin is dict:
        if not isinstance(value, dict):
            return _NO
        kt, vt = typing.get_args(tp)
        out = {_coerce(k, kt): _coerce(v, vt) for k, v in value.items()}
        return _NO if _NO in out or _NO in out.values() else out
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                return _NO
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _NO
    if tp is str:
        return value if isinstance(value, str) else (str(value) if isinstance(value, (int, float)) else _NO)
    return value


def _check_range(key: str, value: Any, meta: dict) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
        raise ConfigError(f"{key} = {value!r} is not a finite number")
    lo, hi = meta.get("min"), meta.get("max")
    if value is None or not isinstance(value, (int, float)) or (lo is None and hi is None):
        return
    bad_lo = lo is not None and (value <= lo if meta.get("min_exclusive") else value < lo)
    bad_hi = hi is not None and value > hi
    if bad_lo or bad_hi:
        left = "(" if meta.get("min_exclusive") else "["
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"{key} = {value!r} is out of range; allowed: {rng}")


# Keys that moved to a section of their own: the old name still sets the new key, with one warning
# line (silent when a run directory's saved config.yaml is read back, e.g. on resume).
RENAMED = {
    **{f"rollout.{k}": f"episodes.{k}" for k in ("tool_format", "tools", "environment", "max_turns",
                                                 "max_tool_output_tokens", "tool_timeout_s")},
    "rewards.sandbox_workers": "sandbox.workers", "rewards.sandbox_memory_mb": "sandbox.memory_mb",
    **{f"rollout.vllm_{k}": f"rollout.vllm.{k}" for k in ("memory_share", "kv_cache_gb", "max_model_len", "url",
                                                          "timeout_s")},
}
log = logging.getLogger("groupo")


def set_key(cfg: Config, key: str, value: Any, source: str = "", *, warn_renamed: bool = True) -> None:
    """Set dotted `key` on `cfg` to `value`, checking the key, the type and the range."""
    where = f"{source}: " if source else ""
    if key in RENAMED:
        if warn_renamed:
            log.warning("warning: %s%s is now %s (the old name still works)", where, key, RENAMED[key])
        key = RENAMED[key]
    node: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not (dataclasses.is_dataclass(node) and part in _hints(type(node))
                and _is_dc(_hints(type(node))[part])):
            raise ConfigError(where + str(_unknown(key)))
        node = getattr(node, part)
    name = parts[-1]
    hints = _hints(type(node))
    if name not in hints or _is_dc(hints[name]):
        raise ConfigError(where + str(_unknown(key)))
    out = _coerce(value, hints[name])
    if out is _NO:
        raise ConfigError(f"{where}{key} = {value!r} has the wrong type; expected {_type_name(hints[name])}")
    meta = {f.name: f.metadata for f in dataclasses.fields(node)}[name]
    try:
        _check_range(key, out, meta)
    except ConfigError as e:
        raise ConfigError(where + str(e)) from None
    setattr(node, name, out)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys; mappings under a dict-typed field stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not _is_dict_field(key):
            if not v:
                continue
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _is_dict_field(key: str) -> bool:
    node: Any = Config
    for part in key.split("."):
        hints = _hints(node) if _is_dc(node) else {}
        if part not in hints:
            return False
        node = hints[part]
    return typing.get_origin(node) is dict or (
        typing.get_origin(node) in (typing.Union, types.UnionType)
        and any(typing.get_origin(a) is dict for a in typing.get_args(node)))


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: plain YAML keeps the
    second silently, so a section written twice would lose the first one's settings."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} appears twice in one mapping (first on line {seen[key].line + 1}); "
                    "merge the two", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing, malformed or non-UTF-8 file is a ConfigError naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}, line {line}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                          "save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}{line}: malformed YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> (``a.b``, value parsed as YAML, so 3, 1e-4, true, [a, b] work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides; validated."""
    cfg = Config()
    if path is not None:
        for key, value in _flatten(read_yaml(path)).items():
            set_key(cfg, key, value, source=str(path))
    for text in overrides:
        key, value = parse_override(text)
        for k, v in _flatten({key: value}).items():  # a section given whole: rewards.judge='{url: ..., ...}'
            set_key(cfg, k, v, source="command line")
    check_together(cfg)
    return cfg


def check_together(cfg: Config) -> None:
    """Checks that involve more than one key (single keys are checked as they are set). Names that
    live in registries (presets, engines, sinks) are checked by groupo.config_rules.validate."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.run.device):
        raise ConfigError(f"run.device = {cfg.run.device!r} is not a device; valid: auto, cpu, cuda, cuda:N")
    R, E, A = cfg.rollout, cfg.episodes, cfg.algorithm
    if R.vllm.url and R.engine != "vllm":
        raise ConfigError(f"rollout.vllm.url is set but rollout.engine = {R.engine!r}: "
                          "set rollout.engine=vllm to sample on that server, or leave the URL empty")
    if R.vllm.url and not re.match(r"https?://[^/\s]+", R.vllm.url):
        raise ConfigError(f"rollout.vllm.url = {R.vllm.url!r} is not a URL; expected e.g. http://127.0.0.1:8000")
    if R.engine == "vllm" and cfg.train.parallel == "fsdp2":
        raise ConfigError("rollout.engine = 'vllm' runs beside train.parallel = 'ddp' only (each rank hands "
                          "its engine whole weights; FSDP2 would gather them first): use train.parallel=ddp")
    if (E.tools or E.environment) and not E.tool_format:
        raise ConfigError("episodes.tools / episodes.environment are set but episodes.tool_format is empty: set "
                          "episodes.tool_format=chat_template (the model's own tool calls) or python_block")
    if E.tool_format == "python_block" and (set(E.tools) - {"python"} or E.environment):
        raise ConfigError("episodes.tool_format=python_block runs ```python blocks with the python tool only; other "
                          "tools and environments need episodes.tool_format=chat_template")
    if blank := [s for s in R.stop if not s.strip()]:  # "" is in every text: one token, no training signal
        raise ConfigError(f"rollout.stop: {blank[0]!r} is empty or whitespace only, so every completion would end "
                          "at its first token or line break; remove it")
    if A.tis_cap is not None and A.is_correction not in ("auto", "token_truncate"):
        raise ConfigError(f"algorithm.tis_cap is is_correction=token_truncate's cap, but algorithm.is_correction = "
                          f"{A.is_correction!r}: set algorithm.is_upper instead of tis_cap")
    if A.is_lower is not None and A.is_upper is not None and A.is_lower > A.is_upper:
        raise ConfigError(f"algorithm.is_lower = {A.is_lower} is above algorithm.is_upper = {A.is_upper}")
    if A.engine_old_logprobs and A.is_correction not in ("auto", "none"):
        raise ConfigError("algorithm.engine_old_logprobs = true makes the engine's log-probs the old policy, so every "
                          f"importance weight of algorithm.is_correction = {A.is_correction!r} would be 1: drop one")
    if A.entropy_coef_min > A.entropy_coef_max:
        raise ConfigError(f"algorithm.entropy_coef_min = {A.entropy_coef_min} is above algorithm.entropy_coef_max = "
                          f"{A.entropy_coef_max}")
    if cfg.train.eval_samples == 1:
        raise ConfigError("train.eval_samples = 1 would replace the greedy pass by one sample: use 0 (greedy "
                          "accuracy only) or k >= 2 (greedy accuracy, and pass@k, maj@k, mean@k of k samples)")
    if cfg.train.prompts_per_step % cfg.train.steps_per_generation:
        raise ConfigError(f"train.steps_per_generation = {cfg.train.steps_per_generation} must divide "
                          f"train.prompts_per_step = {cfg.train.prompts_per_step}: each mini-batch takes whole groups")
    if A.engine_old_logprobs and A.num_iterations != 1:
        raise ConfigError(f"algorithm.engine_old_logprobs = true needs algorithm.num_iterations = 1, got "
                          f"{A.num_iterations} (later updates need the trainer's own old log-probs)")
    J = cfg.rewards.judge
    if J.url and not re.match(r"https?://[^/\s]+", J.url):
        raise ConfigError(f"rewards.judge.url = {J.url!r} is not a URL; expected e.g. http://127.0.0.1:8000/v1")
    if J.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", J.api_key_env):
        # never echoed: a key pasted here instead of the variable's name must not reach the terminal or a log
        raise ConfigError("rewards.judge.api_key_env must be the NAME of an environment variable (e.g. "
                          "OPENAI_API_KEY), not the key itself; export the key in that variable")
    if J.api_key_env and not J.url:
        raise ConfigError("rewards.judge.api_key_env is set but rewards.judge.url is empty: a key is for a server")
    if cfg.model.quantization != "none" and cfg.lora.rank == 0:
        raise ConfigError(f"model.quantization = {cfg.model.quantization!r} freezes a quantized base and trains LoRA "
                          "on it; full fine-tuning (lora.rank = 0) cannot update 4/8-bit weights: set lora.rank > 0")
    if cfg.model.quantization != "none" and cfg.train.parallel == "fsdp2":
        raise ConfigError("model.quantization runs beside train.parallel = 'ddp' only (FSDP2 would shard "
                          "bitsandbytes' packed weights): use train.parallel=ddp")
    if cfg.lora.init_from and cfg.lora.rank == 0:
        raise ConfigError("lora.init_from starts from a LoRA adapter, but lora.rank = 0 is full fine-tuning: "
                          "leave lora.rank unset (the adapter's rank is used)")
    if cfg.model.quantization in ("fp4", "int8") and R.engine == "vllm":
        raise ConfigError(f"model.quantization = {cfg.model.quantization!r} with rollout.engine = 'vllm': vLLM "
                          "quantizes a base as it loads to nf4 only; use model.quantization=nf4 or rollout.engine=hf")
    if cfg.lora.variant == "dora" and R.engine == "vllm":
        raise ConfigError("lora.variant = 'dora': vLLM serves plain LoRA adapters only; use rollout.engine=hf, "
                          "or lora.variant=lora / rslora")
    if len(cfg.train.adam_betas) != 2 or not all(0 <= b < 1 for b in cfg.train.adam_betas):
        raise ConfigError(f"train.adam_betas = {cfg.train.adam_betas} must be two numbers in [0, 1)")


# `groupo train` with no config runs groupo/quickstart.yaml (configs/quickstart.yaml links to it):
# the file is the quickstart's only definition, so the default and the recipe cannot drift apart.
# It sets what differs from the dataclass defaults above apart from them, so that a user's
# `algorithm.preset: grpo` still means DeepSeekMath's beta.
QUICKSTART_YAML = Path(__file__).with_name("quickstart.yaml")


def quickstart_config(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    return load_config(QUICKSTART_YAML, overrides)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def from_dict(data: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a run's saved config.yaml, of this version or an
    earlier one: renamed keys are read under their new names)."""
    cfg = Config()
    for key, value in _flatten(data).items():
        set_key(cfg, key, value, warn_renamed=False)
    check_together(cfg)
    return cfg
