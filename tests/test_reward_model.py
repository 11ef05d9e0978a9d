"""rewards.reward_model: a sequence classifier scoring prompt + completion through its own chat
template, in batches, frozen; checked on a classifier whose scores are known by construction, on
a tiny random one, and in a training run where it is logged as reward/fn/reward_model."""

import json
import math

import pytest
import torch
from tiny import make_tokenizer
from transformers import LlamaConfig, LlamaForSequenceClassification

from groupo.config import ConfigError, RewardModelConfig, load_config
from groupo.judges import with_model_rewards
from groupo.judges.reward_model import RewardModel, load_reward_model

D, EPS = 64, 1e-6
PROMPTS = [[{"role": "user", "content": "What is 3 + 4?"}], [{"role": "user", "content": "Say hi."}]]


def _classifier(tokenizer, seed: int = 0, labels: int = 1) -> LlamaForSequenceClassification:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=D, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=labels, rms_norm_eps=EPS,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(config).eval()


def _known(tokenizer) -> LlamaForSequenceClassification:
    """Attention and MLP write nothing (o_proj, down_proj zero), so the last hidden state is
    RMSNorm(embedding of the last token); token t embeds as the unit vector e_(t mod D), and the
    score head reads dimension k with weight k / 10: score = (t mod D) / 10 / sqrt(1/D + eps)."""
    model = _classifier(tokenizer)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[torch.arange(emb.shape[0]), torch.arange(emb.shape[0]) % D] = 1.0
        model.score.weight.copy_(torch.arange(D, dtype=torch.float32)[None] / 10)
    return model


def _expected(tokenizer, text: str) -> float:
    last = tokenizer(text, add_special_tokens=False)["input_ids"][-1]
    return (last % D) / 10 / math.sqrt(1 / D + EPS)


def test_scores_known_by_construction_follow_the_models_chat_template():
    tok = make_tokenizer()
    model = _known(tok)
    comps = [[{"role": "assistant", "content": "It is 7"}], [{"role": "assistant", "content": "hi there!"}]]
    # A template that ends on the completion: the score is its last token's.
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
                         "{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}")
    rm = RewardModel(model, tok, batch_size=2)
    texts = ["user: What is 3 + 4?\nassistant: It is 7", "user: Say hi.\nassistant: hi there!"]
    assert [rm.text(p, c) for p, c in zip(PROMPTS, comps, strict=True)] == texts
    assert rm(prompts=PROMPTS, completions=comps) == pytest.approx([_expected(tok, t) for t in texts], abs=1e-4)
    # One that writes the turns in reverse order ends on the question: the scores follow it, which
    # they could not if the pairs were scored as plain prompt + completion.
    tok.chat_template = ("{% for m in messages|reverse %}{{ m['role'] }}: {{ m['content'] }}"
                         "{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}")
    texts = ["assistant: It is 7\nuser: What is 3 + 4?", "assistant: hi there!\nuser: Say hi."]
    assert rm(prompts=PROMPTS, completions=comps) == pytest.approx([_expected(tok, t) for t in texts], abs=1e-4)


def test_batches_and_padding_do_not_change_a_score_and_the_model_is_frozen():
    tok = make_tokenizer()
    comps = [[{"role": "assistant", "content": c}] for c in ("7", "The answer is 7 because 3 + 4 = 7.", "no", "12")]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]]
    one = RewardModel(_classifier(tok, seed=1), tok, batch_size=1)(prompts=prompts, completions=comps)
    rm = RewardModel(_classifier(tok, seed=1), tok, batch_size=3)
    assert rm(prompts=prompts, completions=comps) == pytest.approx(one, abs=1e-5)
    assert len(set(one)) == 4 and all(isinstance(v, float) for v in one)
    assert not any(p.requires_grad for p in rm.model.parameters()) and not rm.model.training


def test_a_long_pair_keeps_its_end():
    tok = make_tokenizer()
    model = _known(tok)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    long_prompt = [{"role": "user", "content": "word " * 300}]
    rm = RewardModel(model, tok, max_length=16)
    text = rm.text(long_prompt, "ends here 9")
    assert rm(prompts=[long_prompt], completions=["ends here 9"]) == pytest.approx([_expected(tok, text)], abs=1e-4)


def test_label_must_exist(tmp_path):
    tok = make_tokenizer()
    with pytest.raises(ConfigError, match=r"rewards.reward_model.label = 2, but the model has 2 output\(s\)"):
        RewardModel(_classifier(tok, labels=2), tok, label=2)
    folder = tmp_path / "rm"
    _classifier(tok, labels=2).save_pretrained(folder)
    tok.save_pretrained(folder)
    rm = load_reward_model(RewardModelConfig(path=str(folder), label=1), "cpu")
    assert rm.label == 1 and rm.model.config.num_labels == 2


def test_a_name_taken_twice_is_refused(tmp_path):
    tok = make_tokenizer()
    _classifier(tok).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    cfg = load_config(None, [f"rewards.reward_model={json.dumps({'path': str(tmp_path / 'rm'), 'weight': 0.5})}"])
    assert (cfg.rewards.reward_model.path, cfg.rewards.reward_model.weight) == (str(tmp_path / "rm"), 0.5)
    fns = with_model_rewards({"accuracy": (None, 1.0)}, cfg)
    assert set(fns) == {"accuracy", "reward_model"} and fns["reward_model"][1] == 0.5
    with pytest.raises(ConfigError, match=r"rewards\.funcs names 'reward_model'"):
        with_model_rewards({"reward_model": (None, 1.0)}, cfg)


ASYNC_REWARD = '''
import asyncio

async def tagged(prompts, completions, **kwargs):
    await asyncio.sleep(0.01)
    return [float("<answer>" in c[0]["content"]) for c in completions]
'''


def test_a_run_logs_the_reward_model_beside_an_async_reward(tmp_path):
    from test_trainer import _overrides

    from groupo.report.keys import documented
    from groupo.trainer.loop import train

    tok = make_tokenizer()
    _classifier(tok, seed=3).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    (tmp_path / "async_reward.py").write_text(ASYNC_REWARD)
    async_name = f"{tmp_path / 'async_reward.py'}:tagged"
    run = tmp_path / "run"
    over = _overrides(tmp_path, 1, **{"rewards.reward_model.path": str(tmp_path / "rm"),
                                      "rewards.reward_model.weight": 0.5, "task.eval_size": 2,
                                      "rewards.funcs": json.dumps({async_name: 1.0})})
    train(load_config(None, [*over, f"run.dir={run}"]), run)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    # a file's reward is logged under the file's name, not its path (groupo.rewards.trl_compat.metric_name)
    assert math.isfinite(row["reward/fn/reward_model"]) and row["reward/fn/async_reward.py:tagged"] is not None
    assert row["reward/none_frac/reward_model"] == 0.0 and row["time/reward/reward_model"] > 0
    assert all(documented(k) for k in row)
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[0])
    assert set(sample["rewards"]) == {"reward_model", async_name}
