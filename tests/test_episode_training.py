"""Training on episodes with tools: the loss counts the policy's own tokens only, and a run with
the python tool trains end to end (a scripted policy that writes a program, reads its output and
answers)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from test_trainer import _final_weights, _overrides
from tiny import make_tiny

from groupo.algorithms import loss_denominator, policy_loss
from groupo.config import load_config
from groupo.engines import Engine
from groupo.models import load_policy_from
from groupo.trainer import loop
from groupo.trainer.collect import RolloutBatch
from groupo.trainer.prepare import loss_mask, prepare
from groupo.trainer.settings import UpdateSettings
from groupo.types import Completion, LossSettings


def _episode(sampled: list[int], tool: list[int], answer: list[int], reason: str = "stop") -> Completion:
    ids = list(range(10, 10 + len(sampled) + len(tool) + len(answer)))
    mask = [1] * len(sampled) + [0] * len(tool) + [1] * len(answer)
    return Completion(prompt_ids=[1, 2, 3], token_ids=ids, logprobs=[-0.5 * m for m in mask], text="",
                      finish_reason=reason, sampled_mask=mask)


def test_the_loss_mask_is_exactly_the_sampled_positions():
    eps = [_episode([1, 1], [0, 0, 0], [1]), Completion([1], [5, 6], [-1.0, -1.0], "", "stop"),
           _episode([1], [0], [1, 1], reason="length")]
    want = torch.tensor([[1, 1, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(loss_mask(eps, 6, mask_truncated=False), want)
    want[2] = 0  # DAPO's overlong filter drops the truncated episode whole
    torch.testing.assert_close(loss_mask(eps, 6, mask_truncated=True), want)


@pytest.mark.parametrize("preset", ["grpo", "dapo", "dr_grpo", "gspo", "gspo_token", "cispo"])
def test_log_probs_at_tool_positions_change_neither_the_loss_nor_its_gradient(preset):
    """token_mean's token count and GSPO's length normalisation included: both read the mask."""
    torch.manual_seed(0)
    mask = loss_mask([_episode([1, 1, 1], [0, 0], [1, 1]), _episode([1], [0, 0, 0], [1, 1, 1])], 7, False)
    old = -torch.rand(2, 7)
    adv = torch.tensor([1.0, -0.5])
    ref = -torch.rand(2, 7)

    def loss_and_grad(logp):
        logp = logp.clone().requires_grad_(True)
        out = policy_loss(logp, old, adv, mask, preset, ref_logp_BT=ref, beta=0.04, max_len=7,
                          denominator=loss_denominator(mask, "token_mean") if preset in ("dapo", "cispo") else None)
        out.loss.backward()
        return out.loss.detach(), logp.grad

    logp = old + 0.05 * torch.randn(2, 7)
    wild = torch.where(mask.bool(), logp, torch.full_like(logp, -1e4) * torch.rand(2, 7))
    a, ga = loss_and_grad(logp)
    b, gb = loss_and_grad(wild)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
    assert torch.all(gb[~mask.bool()] == 0) and torch.isfinite(b)


def test_prepare_counts_only_the_policys_tokens_in_the_global_denominator():
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, load_config().lora, beta=0.0)
    eps = [_episode([1, 1], [0, 0, 0], [1]), _episode([1], [0, 0], [1, 1, 1]),
           _episode([1, 1, 1], [0], [1]), _episode([1], [0], [1])]
    batch = RolloutBatch(problems=[None, None], completions=eps, rewards_PG=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
                         per_fn={}, prompt_ids=[c.prompt_ids for c in eps], n_zero_var=0, n_groups=2, group_size=2)
    s = UpdateSettings(loss=LossSettings(aggregation="token_mean"), temperature=1.0, micro_batch_size=4, max_len=8)
    from groupo.distributed import Dist

    prepared = prepare(policy.model, policy, batch, s, Dist(), pad_id=tok.pad_token_id, device=torch.device("cpu"))
    assert prepared.denominator.item() == 3 + 4 + 4 + 2  # sampled tokens only: 13 of 22
    assert prepared.mask_BT.sum().item() == 13
    torch.testing.assert_close(prepared.engine_logp_BT, -0.5 * prepared.mask_BT)


def program(question: str) -> str:
    """The expression of an arithmetic-task question (its two numbers and the operation's word)."""
    a, b = (int(x) for x in re.findall(r"\d+", question)[-2:])
    if re.search(r" x |×|\*|times|product|Multiply|each|rows", question):
        return f"{a} * {b}"
    if re.search(r" - |minus|difference|Subtract|away|left|remain|taken", question):
        return f"{max(a, b)} - {min(a, b)}"
    return f"{a} + {b}"


class Coder(Engine):
    """A scripted policy: its first turn is a program, and once it has seen the program's output it
    answers with what was printed. Every sampled token gets log-prob -0.1. With `sloppy`, a third
    of its programs (chosen from the call's seed, so a rerun is identical) add 1 to the result."""

    def __init__(self, tok, sloppy: bool = False):
        self.tok, self.sloppy = tok, sloppy

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts, params):
        out = []
        for ids in prompts:
            seen = self.tok.decode(ids)
            if "```output" in seen:
                printed = seen.rsplit("```output\n", 1)[1].split("\n", 1)[0]
                ids_ = [*self._ids(f"<answer>{printed}</answer>"), self.tok.eos_token_id]
            else:
                ids_ = self._ids(f"```python\nprint({program(seen.rsplit('user', 1)[-1])})\n```\n")
            out.append([self._completion(ids, ids_, params.seed, k) for k in range(params.n)])
        return out

    def _completion(self, prompt: list[int], ids: list[int], seed: int | None, k: int) -> Completion:
        text = self.tok.decode(ids, skip_special_tokens=True)
        if self.sloppy and text.startswith("```python") and ((seed or 0) + 7 * k + sum(prompt)) % 3 == 0:
            ids = self._ids(text.replace(")\n```", " + 1)\n```"))
        return Completion(list(prompt), ids, [-0.1] * len(ids), self.tok.decode(ids, skip_special_tokens=True), "stop")

    def sync_weights(self):
        pass


def test_a_run_with_the_python_tool_trains_on_whole_episodes(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "build_engine", lambda cfg, ctx: Coder(ctx.tokenizer))
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, 2, **{
        "run.dir": str(run), "episodes.tool_format": "python_block", "rollout.max_new_tokens": 160,
        "rewards.funcs": json.dumps({"accuracy": 1.0}), "task.prompt_style": "plain", "task.difficulty": 2}))
    torch.manual_seed(0)
    loop.train(cfg, run, policy=load_policy_from(*make_tiny(), cfg.lora, beta=0.0))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        assert r["tools/calls_mean"] == 1.0 and r["tools/turns_mean"] == 2.0 and r["tools/calls/python"] == 1.0
        assert r["tools/error_frac"] == 0.0 and r["time/tool_s"] > 0
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    roles = [m["role"] for m in samples[0]["messages"]]
    assert roles == ["assistant", "tool", "assistant"]
    answer = samples[0]["messages"][1]["content"].strip()
    assert samples[0]["messages"][2]["content"] == f"<answer>{answer}</answer>"
    assert all(s["rewards"]["accuracy"] == 1.0 for s in samples)  # the tool's output is the right answer
    assert all(r["accuracy/train"] == 1.0 and r["completion/truncated_frac"] == 0.0 for r in rows)


def test_groupo_chat_runs_a_runs_tools(tmp_path):
    """A chat with a run trained with tools answers each turn with an episode: the program runs
    in the sandbox and its output is shown, and the conversation keeps the tool turn."""
    import io

    from groupo.chat import chat_loop
    from groupo.rollout import EpisodeSettings
    from groupo.rollout.sampler import Sampler
    from groupo.tools import Toolbox, ToolSettings, load_tools, make_format

    _, tok = make_tiny()
    sampler = Sampler(Coder(tok), tok, EpisodeSettings(max_turns=2),
                      make_format("python_block", tok, Toolbox(load_tools(["python"]), None, ToolSettings(), tok)))
    out = io.StringIO()
    turns = chat_loop(None, tok, io.StringIO("What is 12 times 34?\nMultiply 7 by 6.\n"), out, max_new_tokens=160,
                      sampler=sampler)
    assert turns == 2
    text = out.getvalue()
    assert "```output\n408\n```" in text and "<answer>408</answer>" in text
    assert "```output\n42\n```" in text and "<answer>42</answer>" in text


def test_a_run_with_tools_interrupted_mid_update_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Tools are deterministic given the same calls, and episodes are seeded per step: an episode
    run resumed from the interrupted step's checkpoint ends with the weights of one never stopped."""
    import signal

    from test_interrupts import _interrupting_update

    from groupo.trainer.checkpoint import list_checkpoints

    def run(name: str, resume: bool = False):
        over = _overrides(tmp_path, 4, **{"run.dir": str(tmp_path / name), "episodes.tool_format": "python_block",
                                          "rollout.max_new_tokens": 160, "train.save_every": 0,
                                          "rewards.funcs": json.dumps({"accuracy": 1.0}), "task.difficulty": 2,
                                          "task.prompt_style": "plain"})
        cfg = load_config(None, over)
        torch.manual_seed(0)
        return loop.train(cfg, tmp_path / name, resume=resume, policy=load_policy_from(*make_tiny(), cfg.lora,
                                                                                          beta=0.0))

    monkeypatch.setattr(loop, "build_engine", lambda cfg, ctx: Coder(ctx.tokenizer, sloppy=True))
    run("alone")
    rows = [json.loads(x) for x in (tmp_path / "alone" / "metrics.jsonl").read_text().splitlines()]
    assert any(0 < r["accuracy/train"] < 1 for r in rows)  # the sloppy programs give the groups a signal
    _interrupting_update(monkeypatch, 2, [signal.SIGINT], after_first_microbatch=True)
    with pytest.raises(KeyboardInterrupt):
        run("stopped")
    assert list_checkpoints(tmp_path / "stopped")[-1].name == "step-2"
    monkeypatch.undo()
    monkeypatch.setattr(loop, "build_engine", lambda cfg, ctx: Coder(ctx.tokenizer, sloppy=True))
    run("stopped", resume=True)
    a, b = _final_weights(tmp_path / "alone"), _final_weights(tmp_path / "stopped")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # it did train (peft starts lora_B at 0)
