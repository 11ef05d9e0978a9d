"""The CUDA paths the CPU suite cannot reach: a training step under bf16 autocast with SDPA, the
step's peak GPU memory metrics, a resume bit for bit, the chunked output head's memory, and the
HF engine's sampling. Marker `gpu` (deselected by default; `pytest -m gpu`); skipped without CUDA.
benchmarks/gpu_check.sh runs them on a GPU machine.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_rollout import eos_biased_tiny, hand_sample, prompts_for
from test_trainer import _overrides, sigkill_then_resume
from tiny import make_tiny
from transformers import LlamaConfig, LlamaForCausalLM

from groupo.config import load_config
from groupo.engines.hf import HFEngine
from groupo.models.logprobs import pack, token_logprobs
from groupo.trainer.loop import train
from groupo.types import SamplingParams

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")


@pytest.fixture
def exact_float32():
    """float32 matmuls in float32, not TF32 (the trainer turns TF32 on for the whole process)."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_steps_on_cuda_run_sdpa_under_bf16_and_log_the_gpu_peak(tmp_path, monkeypatch):
    # Every SDPA call: (device type, autocast dtype or None, whether it is the update's forward).
    # The query arrives in float32 (rotary embeddings promote it); autocast casts inside the op.
    calls: list[tuple[str, torch.dtype | None, bool]] = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, *args, **kwargs):
        kind = q.device.type
        amp = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
        calls.append((kind, amp, q.requires_grad))
        return sdpa(q, *args, **kwargs)

    # transformers looks the function up on torch.nn.functional at each call
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, 2, **{"run.device": "cuda", "model.autocast": "bf16",
                                                          "run.dir": str(run)}))
    summary = train(cfg, run)
    assert summary["steps"] == 2
    # the update's forward and generation both ran SDPA on the GPU under bf16 autocast
    assert {("cuda", torch.bfloat16, True), ("cuda", torch.bfloat16, False)} <= set(calls), set(calls)
    assert all(device == "cuda" for device, _, _ in calls), set(calls)
    params_mb = sum(p.numel() * 4 for p in make_tiny()[0].parameters()) / 2**20  # float32 weights
    for r in _rows(run):
        assert torch.isfinite(torch.tensor(r["loss/total"]))
        # the step's peak holds at least the float32 weights, and the allocator reserved at least that
        assert params_mb <= r["memory/gpu_peak_mb"] <= r["memory/gpu_reserved_peak_mb"], r
        assert r["memory/gpu_peak_mb"] < 4096  # a 2-layer model: gigabytes would mean a leak
        assert r["memory/host_peak_rss_mb"] > 0


def test_sigkill_then_resume_on_cuda_gives_identical_weights(tmp_path):
    sigkill_then_resume(tmp_path, 6, **{"run.device": "cuda", "model.autocast": "bf16"})


def _peak_mb(fn) -> float:
    """Peak GPU memory fn() allocates above what was allocated before it, MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def test_chunked_output_head_keeps_logit_memory_to_a_chunk_on_cuda(exact_float32):
    V, B, T, chunk = 32768, 16, 64, 16
    config = LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(CUDA)
    # the tied embedding and head frozen (as under LoRA): no vocabulary-sized weight gradient, so
    # what remains of the peak is the logits and what is computed from them
    model.get_input_embeddings().weight.requires_grad_(False)
    packed = pack([[1, 5, 6, 7]] * B, [list(range(10, 10 + T))] * B, 0).to(CUDA)

    def logprobs_and_backward(c):
        model.zero_grad(set_to_none=True)
        logp, _ = token_logprobs(model, packed, 1.0, chunk=c)
        logp.sum().backward()
        return logp.detach()

    whole_logits_mb = B * T * V * 4 / 2**20  # one float32 (B, T, V) tensor: 128 MiB
    chunk_logits_mb = chunk * V * 4 / 2**20  # one chunk's: 2 MiB
    results = {}
    peaks = {c: _peak_mb(lambda c=c: results.__setitem__(c, logprobs_and_backward(c))) for c in (0, chunk)}
    torch.testing.assert_close(results[chunk], results[0], atol=1e-4, rtol=0)
    assert peaks[0] >= whole_logits_mb, peaks
    # a few chunk-sized buffers (logits, log-softmax, their gradient), never the whole batch's logits
    assert peaks[chunk] < 8 * chunk_logits_mb < whole_logits_mb / 4, peaks


def test_hf_engine_samples_on_cuda_as_decoding_each_row_alone(exact_float32):
    model, tok = eos_biased_tiny(bias=3.0)
    model.to(CUDA)
    prompts = prompts_for(tok)
    params = SamplingParams(n=4, temperature=0.8, max_new_tokens=12, seed=7)
    engine = HFEngine(model, tok, batch_size=12, autocast="none")
    state = torch.cuda.get_rng_state()
    out = engine.generate(prompts, params)
    assert torch.equal(torch.cuda.get_rng_state(), state)  # the caller's CUDA generator is left alone
    flat = [c for group in out for c in group]
    expected = hand_sample(model, [p for p in prompts for _ in range(4)], 12, 7, 0.8, tok.eos_token_id, CUDA)
    for c, exp in zip(flat, expected, strict=True):
        assert c.token_ids == [t for t, _ in exp]
        torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor([lp for _, lp in exp]), atol=1e-4, rtol=0)
    lengths = [len(c.token_ids) for c in flat]
    assert len(set(lengths)) > 2 and max(lengths) == 12  # varied stops, and some ran to the limit
    again = engine.generate(prompts, params)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]


def test_hf_engine_generates_under_bf16_autocast_on_cuda():
    model, tok = make_tiny()
    model.to(CUDA)
    out = HFEngine(model, tok, batch_size=8, autocast="bf16").generate(
        prompts_for(tok), SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=0))
    for group in out:
        for c in group:
            assert 1 <= len(c.token_ids) == len(c.logprobs) <= 8
            assert all(lp <= 0 for lp in c.logprobs) and all(0 <= t < len(tok) for t in c.token_ids)
    assert next(model.parameters()).dtype == torch.float32  # the weights cast for generation are restored
