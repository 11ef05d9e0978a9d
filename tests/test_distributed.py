"""torch.distributed on CPU (gloo): two processes started by torchrun, against one process.

Each torchrun start costs a few seconds, so every test here runs its processes once and checks
several things. The tiny model keeps every step well under a second.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import _overrides, assert_same_final_weights_and_log, kill_after_checkpoints

from groupo.config import ConfigError, load_config
from groupo.distributed import Dist, init, resolve_device
from groupo.trainer import parallel

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], timeout: int = 300) -> str:
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def one_update(tmp_path_factory):
    """The same update (tests/dist_update.py) in one process, under DDP and under FSDP2."""
    out = tmp_path_factory.mktemp("update")
    _run([sys.executable, "tests/dist_update.py", "ddp", str(out / "single")])
    for kind in ("ddp", "fsdp2"):
        _run([*TORCHRUN, "tests/dist_update.py", kind, str(out / kind)])
    return out


@pytest.mark.long  # one torchrun per kind runs every preset: ~40 s on 2 quiet cores
@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
@pytest.mark.parametrize("preset", ["grpo", "dapo", "grpo_full", "dapo_minibatches", "grpo_packed"])
def test_two_ranks_give_the_one_process_loss_and_weights(one_update, kind, preset):
    """Same global batch, same loss, metrics and updated weights.

    Tolerances: the metrics are float32 sums taken in another order (two ranks' micro-batches,
    then an all-reduce, instead of one process's three micro-batches), measured ~1e-7 relative;
    rtol 1e-5 leaves room and is far below what a wrong denominator (a mean of per-rank means, a
    missing world-size factor: 2x in loss and grad norm) would give. The weights are compared to
    1% of one AdamW step (lr 1e-3, two updates): Adam divides each gradient element by its own
    magnitude, so an element whose gradient is near zero turns the rounding of the gradient into
    a visible share of its update (measured: 1 of 8,192 weights of the full fine-tune off by
    3e-6); a lost or misrouted gradient moves weights by whole steps."""
    single = json.loads((one_update / "single" / f"{preset}.json").read_text())
    multi = json.loads((one_update / kind / f"{preset}.json").read_text())
    assert single["world_size"] == 1 and multi["world_size"] == 2
    for key in ("loss", "entropy", "ratio_mean", "ratio_min", "ratio_max", "grad_norm", "clip_low_frac",
                "clip_high_frac", *(["kl"] if not preset.startswith("dapo") else []),
                *(["entropy_bonus", "entropy_coef", "is_weight_mean"] if preset == "dapo_minibatches" else [])):
        assert multi[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key
    assert single["ratio_min"] < 1 < single["ratio_max"]  # mu = 2: the second update saw real ratios
    a = load_file(one_update / "single" / f"{preset}.safetensors")
    b = load_file(one_update / kind / f"{preset}.safetensors")
    # every LoRA matrix of the tiny model, or every weight (the tied lm_head counted once)
    assert a.keys() == b.keys() and len(a) == (16 if preset != "grpo_full" else 20)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=2e-5)


def test_padding_free_passes_give_the_padded_update_in_one_process(one_update):
    """grpo_packed is grpo with train.packing: the same loss, metrics and weights (float rounding)."""
    padded = json.loads((one_update / "single" / "grpo.json").read_text())
    packed = json.loads((one_update / "single" / "grpo_packed.json").read_text())
    for key in ("loss", "entropy", "ratio_mean", "ratio_min", "ratio_max", "grad_norm", "kl"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-5, abs=1e-7), key
    a = load_file(one_update / "single" / "grpo.safetensors")
    b = load_file(one_update / "single" / "grpo_packed.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=2e-5)


def _seen_rewards_file(tmp_path: Path) -> Path:
    """A reward that records, per rank, the scores it computed (one line per call)."""
    path = tmp_path / "recording_reward.py"
    path.write_text(f'''
import json, os

def digit_share(prompts, completions, **kwargs):
    texts = [c[0]["content"] for c in completions]  # chat prompts: TRL's message-list completions
    scores = [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]
    with open({str(tmp_path)!r} + "/seen-rank" + os.environ.get("RANK", "0") + ".jsonl", "a") as fh:
        fh.write(json.dumps(scores) + "\\n")
    return scores


def slow_on_rank1(prompts, completions, **kwargs):
    """As if the symbolic answer check timed out on the first completion of every call on rank 1
    (groupo.rewards.symbolic counts its timeouts where this bumps the count)."""
    from groupo.rewards import symbolic

    if os.environ.get("RANK") == "1":
        symbolic.stats["timeouts"] += 1
    return [0.0] * len(completions)
''')
    return path


def test_two_rank_run_writes_one_run_dir_with_global_metrics(tmp_path):
    reward = _seen_rewards_file(tmp_path)
    run_dir = tmp_path / "run"
    funcs = json.dumps({f"{reward}:digit_share": 1.0, f"{reward}:slow_on_rank1": 0.0})
    args = _overrides(tmp_path, 2, **{"run.dir": str(run_dir), "rewards.funcs": funcs, "task.eval_size": 5,
                                      "train.prompts_per_step": 4, "task.extra_eval_splits": "[]"})
    out = _run([*TORCHRUN, "-m", "groupo", "train", "configs/quickstart.yaml", *args])
    assert "2 processes, ddp" in out
    assert sorted(p.name for p in tmp_path.glob("seen-rank*")) == ["seen-rank0.jsonl", "seen-rank1.jsonl"]
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "eval.jsonl", "report.html", "final"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
    seen = {r: [json.loads(x) for x in (tmp_path / f"seen-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    # calls per rank: the evaluation before training, two steps, the evaluation after
    assert [len(seen[0]), len(seen[1])] == [4, 4]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for i, row in enumerate(rows, start=1):
        mine = [seen[0][i], seen[1][i]]
        assert [len(m) for m in mine] == [8, 8]  # 2 prompts x 4 samples on each rank
        everything = mine[0] + mine[1]
        assert row["reward/mean"] == pytest.approx(sum(everything) / 16, abs=1e-6)
        assert row["rollout/groups_used"] == 4
        assert row["reward/timeout_frac"] == pytest.approx(1 / 16)  # rank 1's timeout over all 16 samples
    evals = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [e["n"] for e in evals] == [5, 5]  # 3 problems on rank 0, 2 on rank 1, gathered
    assert [len(seen[0][0]), len(seen[1][0])] == [3, 2]


@pytest.mark.long
@pytest.mark.parametrize(("kind", "lora_rank"), [("ddp", 4), ("fsdp2", 0)])
def test_two_rank_run_killed_by_sigkill_resumes_to_the_uninterrupted_weights(tmp_path, kind, lora_rank):
    """DDP with LoRA; FSDP2 fully fine-tuned, so that sharded weights of every unit (the root's
    embeddings too) and their AdamW state go through DCP."""
    steps = 24
    alone, killed = tmp_path / "alone", tmp_path / "killed"
    setting = {"train.parallel": kind, "lora.rank": lora_rank}
    _run([*TORCHRUN, "-m", "groupo", "train", *_overrides(tmp_path, steps, **{"run.dir": str(alone), **setting})])

    p = subprocess.Popen([*TORCHRUN, "-m", "groupo", "train", *_overrides(tmp_path, steps, **{
                          "run.dir": str(killed), **setting})],
                         cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    kill_after_checkpoints(p, killed, "step-2", "step-3", lambda: os.killpg(p.pid, signal.SIGKILL))  # all ranks

    out = _run([*TORCHRUN, "-m", "groupo", "train", "--resume", str(killed)])
    assert "resumed at step" in out
    assert_same_final_weights_and_log(alone, killed, steps)

    # another world size: a clear error naming both sizes, exit 2
    p = subprocess.run([sys.executable, "-m", "groupo", "train", "--resume", str(killed)], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "written by 2 process(es)" in p.stderr + p.stdout and "Traceback" not in p.stderr


@pytest.mark.long
def test_bad_set_ups_are_named(tmp_path, monkeypatch):
    """prompts_per_step not divisible by the world size; nccl without CUDA; fsdp2 on a model it cannot
    wrap; a GPU asked for where there is none."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"train\.backend = 'nccl' needs CUDA"):
        init("nccl", torch.device("cpu"))
    with pytest.raises(ConfigError, match="cannot wrap this model"):
        parallel.wrap(torch.nn.Linear(2, 2), None, "fsdp2", Dist(0, 2, 0), torch.device("cpu"))
    monkeypatch.delenv("WORLD_SIZE")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            resolve_device("cuda", Dist())
        p = subprocess.run([sys.executable, "-m", "groupo", "train", "run.device=cuda:1"], cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "run.device = 'cuda:1'" in p.stderr and "Traceback" not in p.stderr
    with pytest.raises(ConfigError, match="is not a device"):
        load_config(None, ["run.device=gpu"])

    p = subprocess.run([*TORCHRUN, "-m", "groupo", "train", *_overrides(tmp_path, 1, **{
        "train.prompts_per_step": 3, "run.dir": str(tmp_path / "a")})], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=120)
    assert p.returncode != 0 and "train.prompts_per_step = 3" in p.stdout + p.stderr
    assert "divisible by the number of processes (2)" in p.stdout + p.stderr
