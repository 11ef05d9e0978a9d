"""A byte-level BPE tokenizer trained in code, with a ChatML chat template: no download.

For models built from a config (tests, benchmarks on machines without a model hub). Byte-level
BPE covers every byte, so any text round-trips through encode/decode exactly. Special tokens:
<|pad|> (id 0), <|im_start|> (id 1, bos), <|im_end|> (id 2, eos).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

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
