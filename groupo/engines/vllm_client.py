"""Rollouts on a running vLLM server (`vllm serve`, OpenAI-compatible API) named by rollout.vllm.url.

For set-ups where generation has machines of its own: the server may shard the model (tensor
parallel) or run replicas (data parallel) behind one URL, and every trainer rank sends its own
prompts to it. `groupo serve CONFIG` starts a matching server (groupo/engines/serve.py writes its
command line); any `vllm serve` with the same flags works.

LoRA: after every optimizer step (and after a resume) rank 0 writes the adapter under the run
directory and asks the server to load it at runtime (`POST /v1/load_lora_adapter`, enabled by
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True on the server); every rank then names that adapter as the
request's model, and the previous one is unloaded. The server reads the adapter from the path
it is given, so it must see the run directory (the same machine, or a shared filesystem). Full
fine-tuning in server mode is not supported: the server cannot load weights from the trainer.

Requests: one per prompt, all in flight at once (the server batches them), each asking for the
prompt's n samples with its own seed (params.seed + prompt index: the same seed for every prompt
would give every prompt the same random draws), the processed log-prob of each sampled token
(`logprobs=0`, under the server's `--logprobs-mode processed_logprobs`) and the token ids
(`return_token_ids`). The standard library's HTTP client is enough for a few JSON POSTs per
step, so the engine adds no dependency.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from groupo.distributed import Dist, barrier, broadcast_object
from groupo.engines.base import Engine, EngineError, prompt_seed
from groupo.types import Completion, SamplingParams

SERVE_HINT = "start one with `groupo serve CONFIG` (or the `vllm serve` command it prints with --dry-run)"


def completion_request(model: str, prompt: list[int], params: SamplingParams, seed: int | None) -> dict[str, Any]:
    """The /v1/completions body asking for `params.n` samples of one tokenised prompt."""
    return {"model": model, "prompt": list(prompt), "n": params.n, "temperature": params.temperature,
            "top_p": params.top_p, "top_k": params.top_k or -1, "min_p": params.min_p,
            "repetition_penalty": params.repetition_penalty, "max_tokens": params.max_new_tokens,
            "seed": seed, "stop": list(params.stop), "include_stop_str_in_output": True, "logprobs": 0,
            "return_token_ids": True, "skip_special_tokens": True}


def parse_choices(prompt: list[int], response: dict[str, Any]) -> list[Completion]:
    """A /v1/completions response for one prompt -> its completions, in sample order."""
    group = []
    for c in sorted(response["choices"], key=lambda c: c["index"]):
        ids = list(c["token_ids"])
        logp = list((c.get("logprobs") or {}).get("token_logprobs") or [])
        if len(logp) != len(ids):
            raise EngineError(f"the vLLM server returned {len(logp)} log-probs for {len(ids)} tokens: "
                              "it must accept logprobs=0 and return_token_ids (vLLM >= 0.10)")
        group.append(Completion(prompt_ids=list(prompt), token_ids=ids, logprobs=logp, text=c["text"],
                                finish_reason="length" if c.get("finish_reason") == "length" else "stop"))
    return group


class VLLMServerEngine(Engine):
    def __init__(self, model: torch.nn.Module, tokenizer, *, url: str, adapter_dir: Path | None, lora_rank: int,
                 world: Dist | None = None, timeout_s: float = 600.0):
        self.model, self.tokenizer = model, tokenizer
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        self.world = world or Dist()
        if lora_rank == 0:
            raise EngineError("rollout.vllm.url (vLLM as a server) needs LoRA (lora.rank > 0): the server cannot "
                              "load a fully fine-tuned policy's weights; leave rollout.vllm.url empty for the "
                              "colocated engine, or use rollout.engine = 'hf'")
        if adapter_dir is None:
            raise ValueError("a LoRA policy on a vLLM server needs adapter_dir, where each step's adapter is written")
        self.adapter_dir = Path(adapter_dir).resolve()
        started = time.monotonic()
        models = self._call("GET", "/v1/models", None, timeout_s=30.0)["data"]
        self.base = next((m["id"] for m in models if not m.get("parent")), models[0]["id"])
        self.served = self.base  # the model requests name: the base until the first adapter is loaded
        self.version = 0
        # Adapter names are unique per session, so that a resumed run (or a second run) on the same
        # server never collides with names that are still loaded.
        self.prefix = broadcast_object(f"groupo-{uuid.uuid4().hex[:8]}", self.world)
        self.start_s = time.monotonic() - started

    def describe(self) -> str:
        return f"vLLM server {self.url}"

    def sync_weights(self) -> None:
        """Rank 0 writes and loads the current adapter; every rank samples from it from now on."""
        self.version += 1
        name, previous = f"{self.prefix}-v{self.version}", self.served
        if self.world.is_main:
            path = self.adapter_dir / f"v{self.version}"
            self.model.save_pretrained(path)  # peft: adapter_config.json + adapter_model.safetensors
            self._call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
            if previous != self.base:  # no request can still use it: every rank finished its rollout
                self._call("POST", "/v1/unload_lora_adapter", {"lora_name": previous})
            shutil.rmtree(self.adapter_dir / f"v{self.version - 2}", ignore_errors=True)  # as the colocated engine
        barrier(self.world)
        self.served = name

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each prompt (P lists of n, in prompt order)."""
        bodies = [completion_request(self.served, p, params, prompt_seed(params.seed, i, params.n))
                  for i, p in enumerate(prompts)]
        if not bodies:
            return []
        with ThreadPoolExecutor(max_workers=min(len(bodies), 64)) as pool:
            responses = list(pool.map(lambda b: self._call("POST", "/v1/completions", b), bodies))
        return [parse_choices(p, r) for p, r in zip(prompts, responses, strict=True)]

    def _call(self, method: str, route: str, body: dict | None, timeout_s: float | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise EngineError(self._http_error(route, e.code, e.read().decode(errors="replace"))) from None
        except (urllib.error.URLError, OSError) as e:  # refused, unknown host, timed out
            reason = getattr(e, "reason", e)
            raise EngineError(f"rollout.vllm.url = {self.url!r}: no vLLM server answered {route} ({reason}); "
                              f"{SERVE_HINT}, or correct the URL") from None
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return {"text": raw.decode(errors="replace")}  # load/unload answer in plain text

    def _http_error(self, route: str, code: int, text: str) -> str:
        try:
            message = json.loads(text).get("error", {}).get("message") or text
        except (json.JSONDecodeError, AttributeError):
            message = text
        msg = f"rollout.vllm.url = {self.url!r}: {route} failed ({code}): {message.strip()[:500]}"
        if "lora_adapter" in route and code in (404, 405) and "Not Found" in message:
            msg += ("; the server does not load adapters at runtime: start it with --enable-lora and "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (`groupo serve` does both)")
        return msg
