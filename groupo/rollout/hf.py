"""Rollouts with transformers `generate`: left-padded batches, KV cache, exact sampling log-probs.

The engine samples from the module it is given, so with a peft PeftModel it always uses the
current adapter weights and `sync_weights` has nothing to do.

Sampling distribution. The checkpoint's own generation_config.json (e.g. temperature 0.7,
repetition_penalty 1.05 on many hub models) would otherwise be merged into every call and
silently change the distribution, so during a call the model's generation config is replaced by
a blank one and only `SamplingParams` apply: temperature, then top-k, then top-p (transformers'
own warpers, in transformers' order). The log-prob recorded for each token is
log softmax(processed logits)[token], i.e. under the distribution actually sampled from. Greedy
decoding (temperature 0) records log-probs under the unscaled softmax.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from groupo.models.logprobs import pack, prompt_kv_cache
from groupo.models.lora import merged_for_inference
from groupo.models.precision import AUTOCAST_DTYPES, frozen_linear_weights_in, native_half, resolve_autocast
from groupo.types import Completion, SamplingParams


class HFEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 64, autocast: str = "auto"):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; load it with groupo.models.load_model "
                             "or call groupo.models.prepare_tokenizer")
        self.model, self.tokenizer = model, tokenizer
        device = next(model.parameters()).device
        self.batch_size, self.autocast = batch_size, resolve_autocast(autocast, device)
        if self.autocast != "none" and device.type == "cpu" and not native_half(self.autocast):
            warnings.warn(f"autocast={autocast} on a CPU without native {autocast} support: generation is "
                          "several times slower than float32 (measured 6x on an AVX2 CPU with "
                          "benchmarks/generation.py); set model.autocast=none", stacklevel=2)

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the trained module itself."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each prompt (P lists of n, in prompt order).

        Each chunk holds whole groups: batch_size // n prompts (at least one) with their n
        samples, so that a prompt is encoded once and its KV cache copied to its n rows.
        """
        per_chunk = max(1, self.batch_size // params.n)
        device = next(self.model.parameters()).device
        eos = self._eos_ids()  # read before _generation_mode blanks the model's generation config
        flat: list[Completion] = []
        amp = AUTOCAST_DTYPES[self.autocast]
        with self._generation_mode(), merged_for_inference(self.model), frozen_linear_weights_in(self.model, amp), \
                _seeded(params.seed, device):
            for i in range(0, len(prompts), per_chunk):
                flat += self._generate_chunk(prompts[i:i + per_chunk], params, eos, device)
        return [flat[i * params.n:(i + 1) * params.n] for i in range(len(prompts))]

    def _shared_prefix(self, batch, n: int):
        """The KV cache of every prompt but its last token, computed once per prompt and repeated
        for its n samples: generate would otherwise encode each prompt n times (measured: 7.6 of
        the 37 s that 8 prompts x 8 samples x 48 tokens took with SmolLM2-135M on 2 CPU cores).
        None where there is nothing to share."""
        cache = prompt_kv_cache(self.model, batch) if n > 1 else None
        if cache is not None:
            cache.batch_repeat_interleave(n)
        return cache

    def _generate_chunk(self, prompts: list[list[int]], params: SamplingParams, eos: set[int],
                        device: torch.device) -> list[Completion]:
        from transformers import (
            GenerationConfig,
            LogitsProcessorList,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        unique = pack(prompts, [[] for _ in prompts], self.tokenizer.pad_token_id).to(device)
        prompts = [p for p in prompts for _ in range(params.n)]
        batch = pack(prompts, [[] for _ in prompts], self.tokenizer.pad_token_id).to(device)
        greedy = params.temperature == 0
        processors = LogitsProcessorList()
        if not greedy:
            # Ours rather than generate's, so the recorder below sees the final distribution
            # (generate appends its own warpers after any processors it is given).
            if params.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
        recorder = _LogprobRecorder(sample=not greedy)
        processors.append(recorder)
        # generate runs its greedy path: the recorder has drawn each row's token already (see
        # _LogprobRecorder) and leaves it the only finite score.
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=False,
            eos_token_id=sorted(eos),
            pad_token_id=self.tokenizer.pad_token_id, use_cache=True, return_dict_in_generate=True)
        P = batch.input_ids_BL.shape[1]
        criteria = StoppingCriteriaList([_StopOnText(self.tokenizer, params.stop, P)] if params.stop else [])
        amp = AUTOCAST_DTYPES[self.autocast]
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            cache = self._shared_prefix(unique, params.n)
            out = self.model.generate(input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL,
                                      past_key_values=cache, generation_config=config,
                                      logits_processor=processors, stopping_criteria=criteria)
        tokens_BS = out.sequences[:, P:]
        logp_BS = recorder.finish(tokens_BS)
        completions = []
        for b, prompt in enumerate(prompts):
            tokens = tokens_BS[b].tolist()
            cut, reason = self._finish(tokens, params.stop, eos)
            completions.append(Completion(
                prompt_ids=list(prompt), token_ids=tokens[:cut], logprobs=logp_BS[b, :cut].tolist(),
                text=self.tokenizer.decode(tokens[:cut], skip_special_tokens=True), finish_reason=reason))
        return completions

    def _eos_ids(self) -> set[int]:
        """The tokenizer's EOS and any the checkpoint's generation config adds (e.g. end-of-turn)."""
        ids = {self.tokenizer.eos_token_id}
        cfg_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids |= set(cfg_eos) if isinstance(cfg_eos, list) else {cfg_eos}
        return {i for i in ids if i is not None}

    def _finish(self, tokens: list[int], stops: tuple[str, ...], eos: set[int]) -> tuple[int, str]:
        """(number of real generated tokens, finish reason); generate pads after a stop."""
        cut = next((k + 1 for k, t in enumerate(tokens) if t in eos), None)
        text = lambda n: self.tokenizer.decode(tokens[:n], skip_special_tokens=False)
        end = cut or len(tokens)
        if stops and any(s in text(end) for s in stops):
            # Shortest prefix holding a stop string; generate halts right there, so walk back.
            while end > 1 and any(s in text(end - 1) for s in stops):
                end -= 1
            return end, "stop"
        return (cut, "stop") if cut is not None else (len(tokens), "length")

    @contextlib.contextmanager
    def _generation_mode(self) -> Iterator[None]:
        """Eval mode, no grad, and a blank generation config; all restored afterwards."""
        from transformers import GenerationConfig

        holders = [self.model]
        if hasattr(self.model, "get_base_model"):  # peft copies its config onto the base model
            holders.append(self.model.get_base_model())
        saved = [(h, h.generation_config) for h in holders]
        was_training = self.model.training
        try:
            for h, _ in saved:
                h.generation_config = GenerationConfig()
            self.model.eval()
            with torch.no_grad():
                yield
        finally:
            for h, cfg in saved:
                h.generation_config = cfg
            self.model.train(was_training)


class _StopOnText:
    """Stopping criterion: a stop string appears in the generated text (the prompt excluded).

    Hand-rolled because transformers' `stop_strings` match the end of prompt + completion, so a
    prompt ending in "...is" with stop "s i" would stop after a completion of just " is".
    Decodes only the last few tokens each step: a stop string of c characters spans at most
    4c byte-level tokens.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_len: int) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.window = 4 * max(len(s) for s in stops) + 1

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=False)
        return torch.tensor([any(s in t for s in self.stops) for t in tails], device=input_ids.device)


class _LogprobRecorder:
    """A logits processor, run last, that keeps only one step of log-probs at a time and, when
    sampling, draws the next tokens itself.

    At step s it sees the tokens chosen at step s-1 and gathers their log-probs from the
    previous step's distribution; memory is one (B, V) tensor instead of output_scores' (S, B, V).

    Sampling by inverse CDF, one uniform per row: the first token whose cumulative probability
    exceeds u * total. generate's own sampler (`torch.multinomial`) draws an exponential for
    every one of the (B, V) entries, which measured 24-275 ms per decode step for 32 x 49k logits
    on 2 CPU cores against 3-50 ms for this (benchmarks/sampling.py); the distribution is the same
    (tokens of probability 0, e.g. outside top-k or top-p, can never be drawn: their cumulative
    probability equals their predecessor's). The drawn token is returned as the row's only
    finite score, and generate, in greedy mode, takes it.
    """

    def __init__(self, sample: bool = False) -> None:
        self.sample = sample
        self.steps: list[torch.Tensor] = []
        self._prev_BV: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._prev_BV is not None:
            self.steps.append(self._prev_BV.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self._prev_BV = torch.log_softmax(scores.float(), dim=-1)
        if not self.sample:
            return scores
        token_B1 = sample_inverse_cdf(self._prev_BV.exp())
        return torch.full_like(scores, float("-inf")).scatter_(1, token_B1, 0.0)

    def finish(self, tokens_BS: torch.Tensor) -> torch.Tensor:
        """(B, S) log-probs of the generated tokens."""
        if tokens_BS.shape[1] == 0 or self._prev_BV is None:
            return torch.zeros(tokens_BS.shape, dtype=torch.float32)
        last = self._prev_BV.gather(-1, tokens_BS[:, -1:]).squeeze(-1)
        return torch.stack([*self.steps, last], dim=1).cpu()


def sample_inverse_cdf(probs_BV: torch.Tensor) -> torch.Tensor:
    """(B, 1) token ids drawn from each row's distribution `probs_BV` (need not sum to exactly 1)
    with one uniform per row, from torch's global generator."""
    cdf_BV = probs_BV.cumsum(-1, dtype=torch.float64)  # float64: a token's share is exact to ~1e-16, not ~6e-8
    u_B1 = torch.rand((probs_BV.shape[0], 1), device=probs_BV.device, dtype=cdf_BV.dtype) * cdf_BV[:, -1:]
    # right=True: the first index with cdf > u, so a zero-probability token (cdf equal to the one
    # before it) is never the first. Where rounding makes u reach the total (no index qualifies),
    # the last token of non-zero probability: the first whose cdf reaches the total.
    token_B1 = torch.searchsorted(cdf_BV, u_B1, right=True)
    over_B = token_B1[:, 0] >= probs_BV.shape[1]
    if over_B.any():  # rare: a test on the whole (B, V) block would cost more than the draw
        nonzero_RV = probs_BV[over_B] > 0
        token_B1[over_B, 0] = probs_BV.shape[1] - 1 - nonzero_RV.flip(-1).int().argmax(-1)
    return token_B1


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """With a seed: reproducible sampling that leaves the caller's global RNG state untouched."""
    if seed is None:
        yield
        return
    devices = [] if device.type == "cpu" else [device]  # the CPU generator is always forked
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        torch.manual_seed(seed)
        yield
