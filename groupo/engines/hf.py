"""Rollouts from a transformers model: left-padded batches, a KV cache, a decoding loop that
drops the rows that stopped, exact sampling log-probs.

The engine samples from the module it is given, so with a peft PeftModel it always uses the
current adapter weights and `sync_weights` has nothing to do.

Sampling distribution. Only `SamplingParams` apply: the repetition penalty, then temperature, then
top-k, top-p and min-p (transformers' own warpers, in transformers' order; the penalty as
transformers' RepetitionPenaltyLogitsProcessor computes it, over the prompt and the completion so
far). The checkpoint's generation_config.json (e.g. temperature 0.7, repetition_penalty 1.05 on
many hub models) is not read, except for the EOS tokens it adds. The log-prob recorded for each
token is log softmax(processed logits)[token], i.e. under the distribution actually sampled from.
Greedy decoding (temperature 0) records log-probs under the unscaled softmax (after the repetition
penalty, which acts in greedy decoding too).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from groupo.engines.base import Engine
from groupo.engines.kv import reserve
from groupo.engines.prefixes import Feed, KeptRows, cacheable
from groupo.models.logprobs import pack, prompt_kv_cache
from groupo.models.lora import merged_for_inference
from groupo.models.precision import AUTOCAST_DTYPES, autocast, frozen_linear_weights_in, native_half, resolve_autocast
from groupo.types import Completion, SamplingParams


class HFEngine(Engine):
    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 64, autocast: str = "auto",
                 drop_finished: bool = True, reserve_cache: bool = True, keep_prefixes: bool = True):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; load it with groupo.models.load_model "
                             "or call groupo.models.prepare_tokenizer")
        self.model, self.tokenizer = model, tokenizer
        # False: rows that stopped keep decoding (on pad tokens, nothing recorded) until the batch's
        # longest ends, as transformers' generate does; for benchmarks/generation.py's comparison.
        self.drop_finished = drop_finished
        # False: transformers' DynamicCache, which copies every layer's keys and values at each
        # step; for benchmarks/generation.py's comparison and the test that both decode alike.
        self.reserve_cache = reserve_cache
        # False: `keeping_prefixes` keeps nothing, so every call encodes its prompts whole; for
        # benchmarks/episodes.py's comparison.
        self.keep_prefixes = keep_prefixes
        self._kept: KeptRows | None = None
        device = next(model.parameters()).device
        self.batch_size, self.autocast = batch_size, resolve_autocast(autocast, device)
        if self.autocast != "none" and device.type == "cpu" and not native_half(self.autocast):
            warnings.warn(f"autocast={autocast} on a CPU without native {autocast} support: generation is "
                          "several times slower than float32 (measured 6x on an AVX2 CPU with "
                          "benchmarks/generation.py); set model.autocast=none", stacklevel=2)

    def sync_weights(self) -> None:
        """Nothing to do: generation runs on the trained module itself."""

    @contextlib.contextmanager
    def keeping_prefixes(self) -> Iterator[None]:
        """Within: each call keeps its rows' KV cache (engines/prefixes.py), and a prompt of the
        next call that extends one of them (a multi-turn episode's next round: the same tokens
        and the tool's output) encodes only what it adds. The weights must not change within
        (the kept keys and values would be the old weights'). Kept rows are freed on leaving."""
        if not self.keep_prefixes or not self.drop_finished:
            yield
            return
        self._kept = KeptRows()
        try:
            yield
        finally:
            self._kept = None

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each prompt (P lists of n, in prompt order).

        Each chunk holds whole groups: batch_size // n prompts (at least one) with their n
        samples, so that a prompt is encoded once and its KV cache copied to its n rows.
        """
        per_chunk = max(1, self.batch_size // params.n)
        device = next(self.model.parameters()).device
        eos = self._eos_ids()
        flat: list[Completion] = []
        amp = AUTOCAST_DTYPES[self.autocast]
        with self._generation_mode(), merged_for_inference(self.model), frozen_linear_weights_in(self.model, amp), \
                _seeded(params.seed, device):
            for i in range(0, len(prompts), per_chunk):
                flat += self._generate_chunk(prompts[i:i + per_chunk], params, eos, device)
        if self._kept is not None:
            self._kept.end_call()
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
        amp = AUTOCAST_DTYPES[self.autocast]
        resumed = None
        if self._kept is not None and params.n == 1:  # n > 1: the prompt's cache is shared instead
            resumed = self._kept.resume(prompts, self.tokenizer.pad_token_id, getattr(self.model, "config", None),
                                        device)
        with autocast(amp, device):
            if resumed is not None:
                feed, cache = resumed
            else:
                unique = pack(prompts, [[] for _ in prompts], self.tokenizer.pad_token_id).to(device)
                prompts = [p for p in prompts for _ in range(params.n)]
                batch = pack(prompts, [[] for _ in prompts], self.tokenizer.pad_token_id).to(device)
                cache = self._shared_prefix(unique, params.n)
                start = batch.prompt_len - 1 if cache is not None else 0
                feed = Feed(batch.input_ids_BL[:, start:], batch.attention_mask_BL, batch.position_ids_BL[:, start:])
            tokens_BS, logp_BS = self._decode(feed, cache, params, eos, prompts)
        completions = []
        for b, prompt in enumerate(prompts):
            tokens = tokens_BS[b].tolist()
            cut, reason = self._finish(tokens, params.stop, eos)
            completions.append(Completion(
                prompt_ids=list(prompt), token_ids=tokens[:cut], logprobs=logp_BS[b, :cut].tolist(),
                text=self.tokenizer.decode(tokens[:cut], skip_special_tokens=True), finish_reason=reason))
        return completions

    def _decode(self, feed: Feed, cache, params: SamplingParams, eos: set[int],
                prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, log-probs), each (B, S), of decoding `prompts`: `cache` holds what of them was
        encoded already (None: nothing), `feed` the rest. Padded after a row stops. Within
        `keeping_prefixes`, each row's cache is kept as it leaves the batch.

        A loop of our own rather than transformers' `generate`, which decodes every row until the
        longest one ends: here a row that stopped (EOS or a stop string) leaves the batch and its
        KV cache, so the steps after it cost only the rows still running (decoding is compute-bound
        where the matmuls dominate: float32 on an AVX2 CPU, large batches on a GPU). Sampling is by
        inverse CDF with one uniform per row of the original batch at every step (see
        `sample_inverse_cdf`), drawn for all rows so that a row's draws do not depend on when
        others stopped.
        """
        from transformers import (
            DynamicCache,
            LogitsProcessorList,
            MinPLogitsWarper,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        greedy = params.temperature == 0
        warpers = LogitsProcessorList()
        if not greedy:  # transformers' own warpers, in transformers' order
            if params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
            if params.min_p > 0.0:
                warpers.append(MinPLogitsWarper(params.min_p))
        B = feed.ids_AL.shape[0]
        seen_BV = None  # repetition penalty: the tokens each row has in its prompt or completion so far
        S, device = params.max_new_tokens, feed.ids_AL.device
        tokens_BS = torch.full((B, S), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        logp_BS = torch.zeros((B, S), dtype=torch.float32)
        eos_E = torch.tensor(sorted(eos), device=device)
        if cache is None:
            cache = DynamicCache(config=getattr(self.model, "config", None))
        if self.reserve_cache:
            cache = reserve(cache, S)  # each step writes its token in place (engines/kv.py)
        ids_AL, mask_AL, pos_AL = feed.ids_AL, feed.mask_AL, feed.pos_AL
        rows_A = torch.arange(B, device=device)  # the rows in the batch now, as indices into the batch
        live_A = torch.ones(B, dtype=torch.bool, device=device)  # not stopped (all, when they are dropped)
        kept = self._kept if self._kept is not None and cacheable(cache) else None
        fed = lambda which_A, s: [prompts[b] + tokens_BS[b, :s].tolist() for b in rows_A[which_A].tolist()]
        for s in range(S):
            logits_AV = self.model(input_ids=ids_AL, attention_mask=mask_AL, position_ids=pos_AL,
                                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
            if params.repetition_penalty != 1.0:
                if seen_BV is None:
                    seen_BV = _prompt_tokens(prompts, logits_AV.shape[-1], device)
                logits_AV = repetition_penalized(logits_AV, seen_BV[rows_A], params.repetition_penalty)
            scores_AV = warpers(tokens_BS[rows_A, :s], logits_AV)
            logp_AV = torch.log_softmax(scores_AV, dim=-1)
            if greedy:
                token_A = scores_AV.argmax(-1)
            else:
                u_B1 = torch.rand((B, 1), device=device, dtype=torch.float64)
                token_A = sample_inverse_cdf(logp_AV.exp(), u_B1[rows_A])[:, 0]
            token_A = torch.where(live_A, token_A, self.tokenizer.pad_token_id)
            rec = rows_A[live_A]
            tokens_BS[rec, s] = token_A[live_A]
            if seen_BV is not None:
                seen_BV[rec, token_A[live_A]] = True
            logp_BS[rec.cpu(), s] = logp_AV.gather(-1, token_A[:, None])[:, 0][live_A].cpu()
            done_A = torch.isin(token_A, eos_E)
            if params.stop:
                done_A |= _stopped_by_text(self.tokenizer, tokens_BS[rows_A, :s + 1], params.stop)
            done_A &= live_A
            if s == S - 1 or bool((done_A | ~live_A).all()):
                if kept is not None:  # the cache holds each row's prompt and tokens[:s]
                    every_A = torch.arange(len(rows_A), device=device)
                    kept.save(cache, mask_AL, every_A, fed(every_A, s))
                break
            if not self.drop_finished:
                live_A &= ~done_A
            elif bool(done_A.any()):
                if kept is not None:
                    kept.save(cache, mask_AL, done_A.nonzero()[:, 0], fed(done_A.nonzero()[:, 0], s))
                keep_A = (~done_A).nonzero()[:, 0]
                cache.batch_select_indices(keep_A)
                rows_A, token_A, mask_AL, live_A = rows_A[keep_A], token_A[keep_A], mask_AL[keep_A], live_A[keep_A]
            mask_AL = torch.cat([mask_AL, mask_AL.new_ones((len(rows_A), 1))], dim=1)
            ids_AL, pos_AL = token_A[:, None], mask_AL.sum(-1, keepdim=True) - 1
        return tokens_BS.cpu(), logp_BS

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
        """Eval mode (no dropout) and no grad; the training mode restored afterwards."""
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)


def _stopped_by_text(tokenizer, tokens_AS: torch.Tensor, stops: tuple[str, ...]) -> torch.Tensor:
    """(A,) bool: a stop string appears in the rows' generated text (never the prompt's: with
    transformers' `stop_strings`, which match the end of prompt + completion, a prompt ending in
    "...is" with stop "s i" would stop after a completion of just " is"). Decodes only the last
    few tokens: a stop string of c characters spans at most 4c byte-level tokens."""
    window = 4 * max(len(s) for s in stops) + 1
    tails = tokenizer.batch_decode(tokens_AS[:, -window:], skip_special_tokens=False)
    return torch.tensor([any(s in t for s in stops) for t in tails], device=tokens_AS.device)


def _prompt_tokens(prompts: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(B, V) bool: the tokens of each row's prompt."""
    seen_BV = torch.zeros((len(prompts), vocab), dtype=torch.bool, device=device)
    for b, prompt in enumerate(prompts):
        seen_BV[b, torch.tensor(prompt, dtype=torch.long, device=device)] = True
    return seen_BV


def repetition_penalized(logits_AV: torch.Tensor, seen_AV: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty of transformers and vLLM (Keskar et al. 2019, CTRL): the logit z of a token
    already seen becomes z / penalty if z > 0, else z * penalty (penalty > 1 makes it less likely either
    way)."""
    penalised_AV = torch.where(logits_AV > 0, logits_AV / penalty, logits_AV * penalty)
    return torch.where(seen_AV, penalised_AV, logits_AV)


def sample_inverse_cdf(probs_BV: torch.Tensor, u_B1: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1) token ids drawn from each row's distribution `probs_BV` (need not sum to exactly 1)
    with one uniform per row: `u_B1` in [0, 1), or drawn from torch's global generator.

    The first token whose cumulative probability exceeds u * total. transformers' sampler
    (`torch.multinomial`) draws an exponential for every one of the (B, V) entries, which measured
    24-275 ms per decode step for 32 x 49k logits on 2 CPU cores against 3-50 ms for this
    (benchmarks/sampling.py); the distribution is the same (tokens of probability 0, e.g. outside
    top-k or top-p, can never be drawn: their cumulative probability equals their predecessor's).
    """
    cdf_BV = probs_BV.cumsum(-1, dtype=torch.float64)  # float64: a token's share is exact to ~1e-16, not ~6e-8
    if u_B1 is None:
        u_B1 = torch.rand((probs_BV.shape[0], 1), device=probs_BV.device, dtype=cdf_BV.dtype)
    u_B1 = u_B1.to(cdf_BV.dtype) * cdf_BV[:, -1:]
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
