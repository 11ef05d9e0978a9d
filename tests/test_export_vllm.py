"""`groupo export` output served by vLLM (what `vllm serve OUT` loads): run with `pytest -m vllm`.

A run on a tiny Llama whose head size vLLM's CPU attention supports, exported merged and as an
adapter; vLLM's greedy tokens on the merged folder, and on the base with the exported adapter,
equal transformers' greedy tokens on the merged folder.
"""

import json
import os

import pytest
import torch
from test_export_chat import QUESTIONS
from test_trainer import REWARD_FILE
from test_vllm import _tiny_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from groupo.cli import main
from groupo.config import load_config
from groupo.trainer.loop import train

pytestmark = pytest.mark.vllm
NEW_TOKENS = 8


def test_vllm_serves_the_merged_export_and_the_adapter(tmp_path):
    pytest.importorskip("vllm")
    base = _tiny_dir(tmp_path)
    (tmp_path / "reward.py").write_text(REWARD_FILE)
    settings = {
        "model.name": str(base), "model.autocast": "none", "lora.rank": 8, "lora.alpha": 16,
        "task.difficulty": 1, "task.eval_size": 2, "rollout.group_size": 4, "rollout.max_new_tokens": 4,
        "train.prompts_per_step": 2, "train.steps": 2, "train.save_every": 0, "train.lr": 3e-2,
        "algorithm.beta": 0.0, "run.progress": "plain", "run.device": "cpu",
        "rewards.funcs": json.dumps({f"{tmp_path / 'reward.py'}:digit_share": 1.0}),
    }
    train(load_config(None, [f"{k}={v}" for k, v in settings.items()]), tmp_path / "run")
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    assert main(["export", str(tmp_path / "run"), str(merged)]) == 0
    assert main(["export", str(tmp_path / "run"), str(adapter), "--adapter"]) == 0

    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    prompts = [tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for q in QUESTIONS]
    expected = []
    for ids in prompts:
        t = torch.tensor([ids])
        with torch.no_grad():
            out = model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        expected.append(out[0, len(ids):].tolist())

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import vllm
    from vllm.lora.request import LoRARequest

    params = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    inputs = [{"prompt_token_ids": ids} for ids in prompts]
    llm = vllm.LLM(model=str(base), dtype="float32", enforce_eager=True, max_model_len=256, enable_lora=True,
                   max_lora_rank=8, max_loras=1)
    with_adapter = llm.generate(inputs, params, lora_request=LoRARequest("mine", 1, str(adapter)))
    del llm
    llm = vllm.LLM(model=str(merged), dtype="float32", enforce_eager=True, max_model_len=256)
    served = llm.generate(inputs, params)
    # ignore_eos: vLLM runs all NEW_TOKENS; transformers stops at EOS, so compare its prefix
    for e, s, a in zip(expected, served, with_adapter, strict=True):
        assert list(s.outputs[0].token_ids)[:len(e)] == e
        assert list(a.outputs[0].token_ids)[:len(e)] == e
