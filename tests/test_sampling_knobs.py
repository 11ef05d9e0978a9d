"""rollout.min_p, rollout.repetition_penalty and rollout.chat_template_kwargs in the transformers engine,
the vLLM engines and evaluation; the recorded log-probs stay those of the distribution sampled from."""

from __future__ import annotations

import pytest
import torch
from test_rollout_vllm_api import FakeLLM, _engine, fake_vllm  # noqa: F401  (fake_vllm: a fixture)
from tiny import make_tiny

from groupo.config import LoraConfig, load_config
from groupo.data.prompts import encode_prompt
from groupo.engines.hf import HFEngine, repetition_penalized
from groupo.engines.vllm_client import completion_request
from groupo.eval import evaluate
from groupo.models.policy import load_policy_from
from groupo.rollout.sampler import make_sampler
from groupo.types import SamplingParams


def test_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    # seen tokens: a positive logit is divided by the penalty, a negative one multiplied; the rest stay
    torch.testing.assert_close(repetition_penalized(logits, seen, 2.0), torch.tensor([[1.0, -2.0, 0.5, -3.0]]))


def test_the_engine_records_log_probs_of_the_penalised_min_p_distribution_it_sampled_from():
    """Each recorded log-prob is log softmax of the logits after the repetition penalty (over prompt and
    completion so far), temperature and min-p, recomputed here one position at a time with a full forward."""
    from transformers import MinPLogitsWarper

    model, tok = make_tiny(seed=2)
    params = SamplingParams(n=3, temperature=0.9, min_p=0.05, repetition_penalty=1.7, max_new_tokens=6, seed=5)
    prompts = [[1, 40, 41, 42], [1, 50]]
    groups = HFEngine(model, tok, autocast="none").generate(prompts, params)  # float32: comparable to 1e-4
    warp = MinPLogitsWarper(0.05)
    checked = 0
    with torch.no_grad():
        for prompt, group in zip(prompts, groups, strict=True):
            for c in group:
                for t, token in enumerate(c.token_ids):
                    ids = prompt + c.token_ids[:t]
                    z = model(torch.tensor([ids])).logits[0, -1].float()
                    seen = torch.zeros_like(z, dtype=torch.bool)
                    seen[torch.tensor(ids)] = True
                    z = warp(None, repetition_penalized(z[None], seen[None], 1.7) / 0.9)[0]
                    logp = torch.log_softmax(z, -1)
                    assert logp[token].item() == pytest.approx(c.logprobs[t], abs=1e-4)
                    assert logp[token] > -float("inf")  # never a token min-p removed
                    checked += 1
    assert checked >= 6


def test_a_large_repetition_penalty_changes_greedy_decoding_away_from_repeats():
    model, tok = make_tiny(seed=2)
    engine = HFEngine(model, tok)
    prompt = [1, 40, 41, 42]
    plain = engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8))[0][0]
    penalised = engine.generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=8,
                                                         repetition_penalty=1e4))[0][0]
    ids = penalised.token_ids
    assert plain.token_ids != ids
    assert not set(ids) & set(prompt) and len(set(ids)) == len(ids)  # nothing seen before is chosen again


def test_the_vllm_engines_receive_min_p_and_the_repetition_penalty(fake_vllm, tmp_path):  # noqa: F811
    policy = load_policy_from(*make_tiny(), LoraConfig(rank=0), beta=0.0)
    engine = _engine(policy, policy.tokenizer, "cuda", tmp_path, 0)
    engine.generate([[1, 5]], SamplingParams(n=2, temperature=0.7, min_p=0.1, repetition_penalty=1.2,
                                             max_new_tokens=3, seed=4))
    sp = next(c for c in FakeLLM.calls if c[0] == "generate")[1][0]
    assert (sp["min_p"], sp["repetition_penalty"]) == (0.1, 1.2)
    body = completion_request("m", [1, 5], SamplingParams(min_p=0.1, repetition_penalty=1.2), seed=3)
    assert (body["min_p"], body["repetition_penalty"]) == (0.1, 1.2)


THINKING = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
            "<think>\n\n</think>\n\n{% endif %}")


def test_chat_template_kwargs_reach_the_template_as_qwen3s_enable_thinking_does():
    _, tok = make_tiny()
    tok.chat_template = THINKING  # Qwen3's switch, reduced to what it writes
    messages = [{"role": "user", "content": "2+3?"}]
    off = tok.decode(encode_prompt(tok, messages, {"enable_thinking": False}))
    assert off.endswith("<think>\n\n</think>\n\n") and not tok.decode(encode_prompt(tok, messages)).endswith(
        "</think>\n\n")
    cfg = load_config(None, ["rollout.chat_template_kwargs={enable_thinking: false}"])
    assert cfg.rollout.chat_template_kwargs == {"enable_thinking": False}
    seen = []

    class Recording:
        def generate(self, prompts, params):
            seen.extend(prompts)
            return [[] for _ in prompts]

    from groupo.data import load_task
    task = load_task(cfg.task)
    make_sampler(cfg, Recording(), tok)(task.train[:1], SamplingParams())
    assert tok.decode(seen[0]).endswith("<think>\n\n</think>\n\n")


def test_chat_renders_the_template_with_the_runs_kwargs_or_the_flags(tmp_path, capsys):
    """groupo chat: a run's rollout.chat_template_kwargs reach the template (as in training), and
    --chat-template-kwargs overrides them; what the model is given is recorded at its generate()."""
    import argparse
    import io

    from groupo.chat import chat_loop
    from groupo.cli import main
    from groupo.commands.chat import _template_kwargs

    model, tok = make_tiny()
    tok.chat_template = THINKING
    seen, generate = [], model.generate

    def recording(**kw):
        seen.append(tok.decode(kw["input_ids"][0]))
        return generate(**kw)

    model.generate = recording
    chat_loop(model, tok, io.StringIO("2+3?\n/reset\n2+3?\n"), io.StringIO(), max_new_tokens=2,
              template_kwargs={"enable_thinking": False})
    assert len(seen) == 2 and all(p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n") for p in seen)
    chat_loop(model, tok, io.StringIO("2+3?\n"), io.StringIO(), max_new_tokens=2)
    assert seen[2].endswith("<|im_start|>assistant\n")

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("rollout:\n  chat_template_kwargs: {enable_thinking: false}\n")
    args = lambda flag=None, model=str(run): argparse.Namespace(model=model, base=False, chat_template_kwargs=flag)
    assert _template_kwargs(args()) == {"enable_thinking": False}
    assert _template_kwargs(args('{"enable_thinking": true, "x": 1}')) == {"enable_thinking": True, "x": 1}
    assert _template_kwargs(args(model="smollm2-135m-instruct")) == {}
    for bad, says in (("{enable_thinking: 0}", "is not JSON"), ("[1]", "must be a JSON object")):
        assert main(["chat", str(run), "--chat-template-kwargs", bad]) == 2
        assert says in capsys.readouterr().err


def test_evaluation_samples_with_the_runs_min_p_and_penalty():
    from types import SimpleNamespace

    from groupo.types import Completion, Problem

    got = []

    def sample(problems, params):
        got.append(params)
        return [[Completion([1], [7], [0.0], "x", "stop") for _ in range(params.n)] for _ in problems]

    problem = Problem([{"role": "user", "content": "q"}], "1", {"answer": "1"}, "p")
    evaluate(sample, SimpleNamespace(eval_reward="accuracy"), [problem], samples=2, temperature=0.5, top_k=3,
             min_p=0.2, repetition_penalty=1.3, reward_fns={"accuracy": (lambda completions, **_: [0.0] * len(
                 completions), 1.0)})
    greedy, sampled = got
    assert (greedy.temperature, greedy.repetition_penalty, greedy.min_p) == (0.0, 1.3, 0.0)
    assert (sampled.top_k, sampled.min_p, sampled.repetition_penalty, sampled.n) == (3, 0.2, 1.3, 2)
