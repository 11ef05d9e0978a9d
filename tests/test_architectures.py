"""The architecture matrix (docs/models.md): every check of the Llama suite that depends on the
model's architecture, on tiny random models of each architecture in tests/tiny.py (ARCHS).

Fast, per architecture: the HF engine across an episode's rounds with kept prefixes against
encoding every round whole (and where a cache kind cannot be kept, that it falls back), the
engine's log-probs against one padded forward pass of the trainer, and the update's log-probs and
gradients with shared prompts and under activation checkpointing against each row encoded on its
own, for LoRA on all linear layers and for full fine-tuning. Long (`-m long`, .ci/run): real
training runs with a checkpoint resumed exactly, exported, and loaded by plain transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_export_chat import PLAIN_LOAD, QUESTIONS
from test_logprobs import reference_logprobs
from test_prefixes import EXTRA, next_prompts, two_rounds
from test_rollout import prompts_for
from test_trainer import _final_weights
from tiny import ARCHS, make_tiny, nonzero_lora, save_tiny

from groupo.config import LoraConfig, load_config
from groupo.engines.hf import HFEngine
from groupo.models.logprobs import pack, token_logprobs
from groupo.models.policy import load_policy_from, load_trained
from groupo.trainer.loop import train
from groupo.types import SamplingParams

# Layers whose KV cache is a sliding window (Gemma 3's local layers; Phi-3-mini's config gives every
# layer a 2047-token window): their rows cannot be kept across rounds, nor a prompt's cache shared
# in the update, so the engine encodes each round whole and the update each row whole.
SLIDING = {"gemma3", "phi3"}


def _policy(arch: str, rank: int = 4):
    """A policy of `arch` with LoRA on every linear layer (B drawn, so the adapter acts) or, with
    rank 0, all weights trainable."""
    model, tok = make_tiny(arch=arch)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        policy = load_policy_from(model, tok, LoraConfig(rank=rank, alpha=8.0, target_modules=["all-linear"]),
                                  beta=0.0)
        if rank:
            nonzero_lora(policy.model, 0.05)
    return policy


@pytest.mark.parametrize("arch", ARCHS)
def test_episode_rounds_with_kept_prefixes_sample_what_encoding_them_whole_does(arch):
    policy = _policy(arch)
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    kept = HFEngine(policy.model, policy.tokenizer, batch_size=16, autocast="none")
    whole = HFEngine(policy.model, policy.tokenizer, batch_size=16, autocast="none", keep_prefixes=False)
    first, second, widths = two_rounds(kept, params, keep=True)
    ref_first, ref_second, ref_widths = two_rounds(whole, params, keep=True)
    assert [c.token_ids for g in first for c in g] == [c.token_ids for g in ref_first for c in g]
    got, want = [c for g in second for c in g], [c for g in ref_second for c in g]
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
    longest = max(len(p) for p in next_prompts(first))
    assert ref_widths[0] == longest
    # full attention: the second round feeds only what it adds; a sliding window: the whole prompt again
    assert widths[0] == (longest if arch in SLIDING else 1 + max(len(e) for e in EXTRA))
    assert kept._kept is None


@pytest.mark.parametrize("arch", ARCHS)
def test_the_engines_logprobs_are_the_trainers(arch):
    """Sampled (merged LoRA on every linear layer, KV cache, shared prompt prefix), then scored by the
    trainer's pass (prompts shared where the cache allows) and by each sequence alone, unpadded."""
    policy = _policy(arch)
    engine = HFEngine(policy.model, policy.tokenizer, batch_size=16, autocast="none")
    groups = engine.generate(prompts_for(policy.tokenizer), SamplingParams(n=3, temperature=0.8, max_new_tokens=8,
                                                                             seed=1))
    flat = [c for g in groups for c in g]
    packed = pack([c.prompt_ids for c in flat], [c.token_ids for c in flat], policy.tokenizer.pad_token_id)
    with torch.no_grad():
        logp_BT, _ = token_logprobs(policy.model, packed, 0.8)
    for b, c in enumerate(flat):
        torch.testing.assert_close(torch.tensor(c.logprobs), logp_BT[b, :len(c.token_ids)], atol=1e-4, rtol=0)
    for b in (0, len(flat) - 1):
        alone, _ = reference_logprobs(policy.model, flat[b].prompt_ids, flat[b].token_ids, 0.8)
        torch.testing.assert_close(logp_BT[b, :len(flat[b].token_ids)], alone, atol=1e-5, rtol=0)


def test_a_head_whose_logits_are_soft_capped_is_scored_whole():
    """Gemma 2 (and a Gemma 3 config that sets it) caps the logits after the head: the trainer then
    runs the model's own head rather than its chunked one, which would cap the hidden states."""
    model, tok = make_tiny(arch="gemma3")
    model.config.final_logit_softcapping = 3.0
    prompt, completion = [1, 50, 51, 52], [60, 61, 62]
    with torch.no_grad():
        logp_BT, _ = token_logprobs(model, pack([prompt], [completion], tok.pad_token_id), 1.0)
    torch.testing.assert_close(logp_BT[0], reference_logprobs(model, prompt, completion, 1.0)[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("rank", [4, 0], ids=["lora", "full"])
@pytest.mark.parametrize("arch", ARCHS)
def test_the_update_with_shared_prompts_and_checkpointing_has_each_rows_values_and_gradients(arch, rank):
    """The update's pass (each distinct prompt encoded once, and again under activation
    checkpointing) against the plain padded pass that encodes every row: the same log-probs, the
    same gradients of every trainable weight. Which pass ran: the rows of the model's first call."""
    policy = _policy(arch, rank)
    prompts = [[1, 50, 51, 52, 53, 54, 55, 56, 57, 58], [1, 60, 61]] * 2 + [[1, 50, 51, 52, 53, 54, 55, 56, 57, 58]]
    completions = [[80, 81], [90, 91, 92, 2], [100], [101, 102, 103], [104, 105, 106, 107]]
    packed = pack(prompts, completions, policy.tokenizer.pad_token_id)
    inner = policy.model.get_base_model() if rank else policy.model
    rows: list[int] = []
    hook = inner.model.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["input_ids"].shape[0]),
                                                 with_kwargs=True)
    policy.model.train()
    out = {}
    for name, share, checkpointing in (("plain", False, False), ("shared", True, False), ("ckpt", True, True)):
        if checkpointing:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        policy.model.zero_grad()
        rows.clear()
        logp_BT, _ = token_logprobs(policy.model, packed, 0.7, share_prompts=share)
        (logp_BT * torch.linspace(1, 2, logp_BT.numel()).view_as(logp_BT)).sum().backward()
        out[name] = (logp_BT.detach(), [p.grad.clone() for p in policy.trainable_parameters()], rows[0])
    hook.remove()
    assert out["plain"][2] == 5
    assert out["shared"][2] == out["ckpt"][2] == (5 if arch in SLIDING else 2)  # two distinct prompts
    for name in ("shared", "ckpt"):
        torch.testing.assert_close(out[name][0], out["plain"][0], atol=1e-5, rtol=0)
        for g, want in zip(out[name][1], out["plain"][1], strict=True):
            assert (g - want).norm() <= 1e-4 * want.norm() + 1e-8, name
    assert sum(bool(g.abs().sum() > 0) for g in out["plain"][1]) >= 0.9 * len(out["plain"][1])


# The length of the completion's text: it varies between samples of every architecture, including
# Gemma 3's tiny model, whose vocabulary is mostly ids without text (a digit share would be 0 for all).
REWARD_FILE = '''
def text_length(prompts, completions, **kwargs):
    return [len(c[0]["content"]) / 20 for c in completions]
'''

PLAIN_LOAD_ALL = """
import json, sys
folders, code, questions, n = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
for out in folders:  # test_export_chat's PLAIN_LOAD on each folder, in one process
    sys.argv = ["-c", out, questions, n]
    exec(code, {"__name__": "__main__"})
"""


def _plain_load(folders: list[Path]) -> list[dict]:
    """Greedy answers to QUESTIONS from each exported folder, loaded by plain transformers in a
    process where groupo cannot be imported (tests/test_export_chat.py's PLAIN_LOAD)."""
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", PLAIN_LOAD_ALL, json.dumps([str(f) for f in folders]), PLAIN_LOAD,
            json.dumps(QUESTIONS), "6"]
    p = subprocess.run(argv, cwd=folders[0], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in p.stdout.strip().splitlines()[-len(folders):]]


def _greedy(model, tok) -> list[list[int]]:
    out = []
    for q in QUESTIONS:
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        out.append(gen[0, ids.shape[1]:].tolist())
    return out


@pytest.mark.long  # three short runs, two exports and a second process per architecture: ~30 s each
@pytest.mark.parametrize("arch", ARCHS)
def test_runs_resume_exactly_and_export_what_plain_transformers_loads(arch, tmp_path):
    """LoRA on every linear layer with the KL term (the reference is the adapter switched off) and
    activation checkpointing: two steps left alone, and one step then a resume, end with the same
    weights; full fine-tuning runs a step. Both export; plain transformers loads each and answers
    as groupo's own loading of the run does."""
    from groupo.cli import main

    model_dir = save_tiny(tmp_path / "model", arch=arch)
    (tmp_path / "reward.py").write_text(REWARD_FILE)
    settings = {"model.name": str(model_dir), "model.autocast": "none", "model.gradient_checkpointing": "true",
                "lora.rank": 4, "lora.alpha": 8, "lora.target_modules": "[all-linear]", "task.difficulty": 1,
                "task.eval_size": 1, "task.prompt_style": "plain", "rollout.group_size": 4, "rollout.max_new_tokens": 5,
                "rollout.temperature": 1.0, "train.prompts_per_step": 2, "train.micro_batch_size": 3,
                "train.save_every": 1, "train.lr": 3e-2, "algorithm.beta": 0.04, "run.progress": "off",
                "run.device": "cpu", "run.tensorboard": "false",
                "rewards.funcs": json.dumps({f"{tmp_path / 'reward.py'}:text_length": 1.0})}
    cfg = lambda steps, **kw: load_config(None, [f"{k}={v}" for k, v in {**settings, "train.steps": steps,
                                                                          **kw}.items()])
    alone, resumed, full = tmp_path / "alone", tmp_path / "resumed", tmp_path / "full"
    train(cfg(2), alone)
    train(cfg(1), resumed)
    train(cfg(2), resumed, resume=True)
    a, b = _final_weights(alone), _final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any("lora_B" in k and a[k].abs().max() > 0 for k in a)
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["rollout/logprob_mismatch"] < 1e-4 and r["loss/ratio_max"] == 1.0 for r in rows)
    train(replace(cfg(1), lora=LoraConfig(rank=0)), full)
    exported = [tmp_path / "export-lora", tmp_path / "export-full"]
    assert main(["export", str(alone), str(exported[0])]) == 0
    assert main(["export", str(full), str(exported[1])]) == 0
    got = _plain_load(exported)
    for run, plain in zip((alone, full), got, strict=True):
        model, tok = load_trained(run)
        assert plain["dtype"] == "torch.float32" and plain["tokens"] == _greedy(model, tok), run.name
