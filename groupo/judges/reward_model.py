"""A reward model: a sequence-classification model scoring (prompt, completion) pairs, as TRL,
OpenRLHF and verl use one.

Each pair is written as one chat through the reward model's own chat template (the prompt's
messages, then the completion as the assistant's turn), tokenised as the template wrote it (it
places BOS itself) and scored in batches of `batch_size`, right-padded; the score is output
`label` of the classifier at the last token that is not padding (transformers' pooling for
causal classifiers, which TRL reads as `logits[:, 0]`). A tokenizer with no chat template gets the
turns as "Role: content" blocks; plain-text prompts are scored as prompt + completion (TRL's form).

The model is frozen (no gradient, eval mode, inference mode) and sits on the run's device; a
sequence longer than `max_length` keeps its last tokens, where the completion ends.
"""

from __future__ import annotations

from typing import Any

import torch

from groupo.config import ConfigError
from groupo.rewards.base import completion_text
from groupo.rewards.trl_compat import is_conversational


class RewardModelError(ConfigError):
    """A reward model that cannot be used as configured (printed as one line)."""


class RewardModel:
    """`RewardModel(model, tokenizer, ...)(prompts=..., completions=...) -> list[float]`, in TRL's
    reward signature; `load_reward_model` builds one from `rewards.reward_model`."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, batch_size: int = 16, max_length: int = 0,
                 label: int = 0, device: str | torch.device = "cpu"):
        n_labels = getattr(model.config, "num_labels", 1)
        if label >= n_labels:
            raise RewardModelError(f"rewards.reward_model.label = {label}, but the model has {n_labels} output(s)")
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise RewardModelError("the reward model's tokenizer has neither a pad nor an eos token")
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id  # batches need it to find each row's last token
        tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.batch_size, self.label = batch_size, label
        self.max_length = max_length or min(getattr(tokenizer, "model_max_length", 0) or 10**6, 10**6)

    def text(self, prompt: Any, completion: Any) -> str:
        """The chat (or text) the model scores for one sample."""
        reply = completion_text(completion)
        if not is_conversational(prompt):
            return f"{prompt}{reply}"
        messages = [*prompt, {"role": "assistant", "content": reply}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        texts = [self.text(p, c) for p, c in zip(prompts, completions, strict=True)]
        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length, add_special_tokens=False)
                logits = self.model(**batch.to(self.device)).logits  # (B, labels), pooled at the last token
                out += logits[:, self.label].float().tolist()
        return out


def load_reward_model(cfg, device: str | torch.device) -> RewardModel:
    """The reward model `cfg` (a RewardModelConfig) names, frozen on `device`."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from groupo.models.load import DTYPES, resolve_model

    folder = resolve_model(cfg.path)
    if folder.suffix == ".gguf":
        raise RewardModelError(f"rewards.reward_model.path = {cfg.path!r} is a .gguf file; a reward model is a "
                               "Hugging Face sequence-classification folder")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=DTYPES[cfg.dtype])
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (ValueError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RewardModelError(f"rewards.reward_model.path = {cfg.path!r} does not load as a sequence-classification "
                               f"model: {reason[:300]}") from None
    return RewardModel(model, tokenizer, batch_size=cfg.batch_size, max_length=cfg.max_length,
                       label=cfg.label, device=device)
