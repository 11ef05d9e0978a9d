"""A tiny randomly initialised Llama model and a matching offline tokenizer, for fast tests.

`make_tiny()` builds both in well under a second with no download: a 2-layer Llama (hidden 64,
4 heads, 2 KV heads, tied embeddings like SmolLM2) and a byte-level BPE tokenizer trained in code
on arithmetic-style text. Byte-level BPE covers every byte, so any text (digits, ASCII, even
unicode) round-trips through encode/decode exactly, which reward parsing relies on.

The chat template is ChatML, the same format as SmolLM2-Instruct:

    <|im_start|>user\\nWhat is 2+3?<|im_end|>\\n<|im_start|>assistant\\n

Special tokens: <|pad|> (id 0, a dedicated pad so tests can tell pad from eos), <|im_start|>
(id 1, bos) and <|im_end|> (id 2, eos).

Usage (pytest puts tests/ on sys.path): `from tiny import make_tiny`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|im_start|>", "<|im_end|>"
VOCAB_SIZE = 384  # 3 specials + 256 bytes + 125 merges

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the BPE merges are learned from: the words of arithmetic prompts and answers.
_CORPUS = [
    "What is 12 + 7? Answer: 19. What is 45 - 18? The answer is 27.",
    "Compute 3 * 4 = 12. Solve: 100 / 5 = 20. Think step by step.",
    "Put your final answer in <answer></answer> tags, e.g. <answer>42</answer>.",
    "You are a helpful assistant. Please reason step by step, then give the answer.",
    "The sum of 0 1 2 3 4 5 6 7 8 9 is 45. Use the numbers to make the target.",
    "system user assistant question answer total each many how much more less than",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (vocab VOCAB_SIZE) with ChatML chat template, left padding."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def make_tiny(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """(model, tokenizer): a random float32 2-layer Llama in eval mode and its tokenizer.

    Seeded without touching the caller's global torch RNG.
    """
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval()
    return model, tokenizer


def save_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer as a local Hugging Face folder; returns the folder."""
    out = Path(out_dir)
    model, tokenizer = make_tiny(seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
