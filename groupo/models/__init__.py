"""Model loading (built-in, local folder, .gguf, hub id), LoRA, the policy, and log-probs."""

from groupo.models.builtin import BUILTIN_MODELS, fetch_builtin
from groupo.models.load import ModelNotFoundError, load_model, prepare_tokenizer, resolve_model
from groupo.models.logprobs import Packed, pack, token_logprobs
from groupo.models.lora import apply_lora
from groupo.models.policy import Policy, load_policy, load_policy_from, load_trained, save_policy

__all__ = [
    "BUILTIN_MODELS", "ModelNotFoundError", "Packed", "Policy", "apply_lora", "fetch_builtin",
    "load_model", "load_policy", "load_policy_from", "load_trained", "pack", "prepare_tokenizer",
    "resolve_model", "save_policy", "token_logprobs",
]
