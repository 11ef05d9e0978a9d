"""`groupo export` and `groupo chat` on real (tiny) training runs.

The references are independent of groupo: the exported folder is loaded with plain transformers in
a process where groupo cannot be imported; the merged weights are recomputed by hand from the
adapter file (W + alpha/r * B @ A); chat's streamed answers are compared with greedy
`generate` on the chat template applied by transformers itself.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import REWARD_FILE
from tiny import save_tiny
from transformers import AutoModelForCausalLM, AutoTokenizer

from groupo.cli import main
from groupo.config import load_config
from groupo.models import load_trained
from groupo.trainer.loop import train

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is 2 + 3?", "What is 7 - 4?", "Compute 12 + 9."]
NEW_TOKENS = 8


def _train(tmp: Path, **extra) -> Path:
    model_dir = tmp / "model"
    if not model_dir.exists():
        save_tiny(model_dir)
    (tmp / "reward.py").write_text(REWARD_FILE)  # varies between samples, so the adapter learns
    settings = {
        "model.name": str(model_dir), "model.autocast": "none", "lora.rank": 4, "lora.alpha": 8,
        "task.difficulty": 1, "task.eval_size": 2, "task.prompt_style": "plain", "rollout.group_size": 4,
        "rollout.max_new_tokens": 4, "train.prompts_per_step": 2, "train.steps": 2, "train.save_every": 0,
        "train.lr": 3e-2, "algorithm.beta": 0.0, "run.progress": "plain", "run.device": "cpu",
        "rewards.funcs": json.dumps({f"{tmp / 'reward.py'}:digit_share": 1.0}), **extra,
    }
    run_dir = tmp / "run"
    train(load_config(None, [f"{k}={v}" for k, v in settings.items()]), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def chat_run(lora_run, tmp_path_factory) -> Path:
    """lora_run with its final adapter's B matrices set from a fixed seed: a policy that answers
    with text (two steps of training on the tiny model may leave it answering newlines only, and
    which it does depends on the sampler's draws), still a run directory chat loads like any."""
    import shutil

    from safetensors.torch import save_file

    run = tmp_path_factory.mktemp("chat") / "run"
    shutil.copytree(lora_run, run)
    (run.parent / "model").symlink_to(lora_run.parent / "model")
    path = run / "final" / "adapter_model.safetensors"
    weights = load_file(path)
    gen = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(v.shape, generator=gen) * 0.5 if "lora_B" in k else v for k, v in weights.items()}, path)
    return run


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _greedy(model, tokenizer, messages: list[dict]) -> list[int]:
    ids = torch.tensor([_chat_ids(tokenizer, messages)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


PLAIN_LOAD = """
import json, sys
sys.modules["groupo"] = None  # the export must load without groupo
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out, questions, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(out)
model = AutoModelForCausalLM.from_pretrained(out).eval()
res = {"dtype": str(model.dtype), "tokens": []}
for q in questions:
    text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    res["tokens"].append(gen[0, ids.shape[1]:].tolist())
print(json.dumps(res))
"""


def _plain_greedy(out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out), json.dumps(QUESTIONS), str(NEW_TOKENS)],
                       cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_export_merged_loads_with_plain_transformers_and_answers_like_the_run(lora_run, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", str(lora_run), str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not list(out.glob("adapter_*")) and not (out / "groupo_model.json").exists()
    assert AutoTokenizer.from_pretrained(out).chat_template  # the chat template travels with it

    policy, tok = load_trained(lora_run)  # the run's policy: base + unmerged LoRA (peft)
    expected = [_greedy(policy, tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    got = _plain_greedy(out)
    assert got["dtype"] == "torch.float32" and got["tokens"] == expected

    # the LoRA really is folded in: W' = W + (alpha / r) * B @ A, recomputed from the adapter file
    base = load_file(lora_run.parent / "model" / "model.safetensors")
    adapter = load_file(lora_run / "final" / "adapter_model.safetensors")
    merged = load_file(out / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj"
    a = adapter[f"base_model.model.{key}.lora_A.weight"]
    b = adapter[f"base_model.model.{key}.lora_B.weight"]
    assert b.abs().max() > 0  # training moved the adapter off its zero start
    torch.testing.assert_close(merged[f"{key}.weight"], base[f"{key}.weight"] + (8 / 4) * b @ a)


def test_export_in_another_dtype(lora_run, tmp_path):
    out = tmp_path / "bf16"
    assert main(["export", str(lora_run), str(out), "--dtype", "bfloat16"]) == 0
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_export_adapter_alone_loads_onto_the_base_with_peft(lora_run, tmp_path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    assert main(["export", str(lora_run), str(out), "--adapter"]) == 0
    assert sorted(p.name for p in out.glob("adapter_*")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (out / "model.safetensors").exists()
    base_dir = lora_run.parent / "model"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    policy, _ = load_trained(lora_run)
    for q in QUESTIONS:
        messages = [{"role": "user", "content": q}]
        assert _greedy(model, tok, messages) == _greedy(policy, tok, messages)


def test_export_full_fine_tuning_run(tmp_path, capsys):
    run = _train(tmp_path, **{"lora.rank": 0, "train.lr": 1e-3})
    assert main(["export", str(run), str(tmp_path / "a"), "--adapter"]) == 2
    assert "full fine-tuning run" in capsys.readouterr().err
    out = tmp_path / "full"
    assert main(["export", str(run), str(out)]) == 0
    policy, tok = load_trained(run)
    expected = [_greedy(policy, tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    assert _plain_greedy(out)["tokens"] == expected
    torch.testing.assert_close(load_file(out / "model.safetensors"), load_file(run / "final" / "model.safetensors"))


def test_export_refuses_a_non_empty_out_and_a_non_run(lora_run, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", str(lora_run), str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["export", str(tmp_path), str(tmp_path / "o")]) == 2
    assert "holds no trained policy" in capsys.readouterr().err


def test_chat_streams_the_greedy_answers_of_the_trained_policy(chat_run):
    """Two turns through the command's stdin, then /exit (the line after it is never read)."""
    lora_run = chat_run
    policy, tok = load_trained(lora_run)
    answer = lambda messages: tok.decode(_greedy(policy, tok, messages), skip_special_tokens=True)
    # questions the tiny trained policy answers with some text, not only newlines or an immediate
    # end of sequence (which ones depends on its training run)
    candidates = [*QUESTIONS, "1 2 3", "Add 4 and 5.", "9 - 3 = ?", "What is 8 + 1?", "7 7 7"]
    q1 = next(q for q in candidates if answer([{"role": "user", "content": q}]).strip())
    a1 = answer([{"role": "user", "content": q1}])
    history = lambda q2: [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                          {"role": "user", "content": q2}]
    q2 = next(q for q in candidates if q != q1 and answer(history(q)))
    a2 = answer(history(q2))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "groupo", "chat", str(lora_run), "--max-new-tokens", str(NEW_TOKENS),
                        "--device", "cpu"], input=f"{q1}\n{q2}\n/exit\n{q1}\n", cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout == f"{a1}\n{a2}\n"


def test_chat_base_and_a_model_folder_answer_like_the_untrained_model_and_end_at_eof(lora_run, monkeypatch, capsys):
    import io

    base = AutoModelForCausalLM.from_pretrained(lora_run.parent / "model").eval()
    tok = AutoTokenizer.from_pretrained(lora_run.parent / "model")
    q = QUESTIONS[2]
    expected = tok.decode(_greedy(base, tok, [{"role": "user", "content": q}]), skip_special_tokens=True)
    for args in ([str(lora_run), "--base"], [str(lora_run.parent / "model")]):
        monkeypatch.setattr(sys, "stdin", io.StringIO(f"{q}\n"))  # no /exit: end of input ends it
        assert main(["chat", *args, "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu"]) == 0
        assert capsys.readouterr().out == f"{expected}\n"
    assert main(["chat", str(lora_run.parent / "model"), "--base"]) == 2
    assert "--base needs a run directory" in capsys.readouterr().err
