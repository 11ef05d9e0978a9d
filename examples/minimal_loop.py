"""GRPO in one page, using only groupo's pure functions (algorithms + rewards) and transformers.

This is the whole algorithm without the trainer's conveniences (checkpoints, evaluation, logging,
micro-batches): sample G completions per prompt, score them, turn rewards into group-relative
advantages, and take a clipped policy-gradient step.

    python examples/minimal_loop.py --model path/to/hf-model-folder --steps 5

Any causal LM folder with a chat template works (`groupo.models.resolve_model` turns the
built-in name `smollm2-135m-instruct` into such a folder).
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from groupo.algorithms import group_advantages, policy_loss
from groupo.rewards import accuracy_reward


def problems(n: int, rng: random.Random) -> list[tuple[str, str]]:
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n)]
    return [(f"What is {a} + {b}? Put the final answer in <answer></answer>.", str(a + b)) for a, b in pairs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rng, temperature = random.Random(0), 0.7

    for step in range(args.steps):
        batch = problems(args.prompts, rng)
        chats = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                         add_generation_prompt=True) for q, _ in batch]
        enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=temperature,
                                 max_new_tokens=args.max_new_tokens, num_return_sequences=args.group,
                                 pad_token_id=tok.pad_token_id)
        L = enc.input_ids.shape[1]
        completion_BT = out[:, L:]                                        # (B, T), B = P * G
        # tokens after the first EOS are padding; the EOS itself is learned
        is_eos = (completion_BT == tok.eos_token_id).int()
        mask_BT = ((is_eos.cumsum(-1) - is_eos) == 0).float()
        texts = tok.batch_decode(completion_BT, skip_special_tokens=True)
        answers = [a for _, a in batch for _ in range(args.group)]
        rewards_PG = torch.tensor(accuracy_reward(completions=texts, answer=answers)).view(args.prompts, args.group)
        adv_B = group_advantages(rewards_PG, scale="group", std="unbiased", eps=1e-4).flatten()

        attn = torch.cat([enc.attention_mask.repeat_interleave(args.group, 0), mask_BT.long()], dim=1)
        logits = model(out, attention_mask=attn).logits[:, L - 1:-1].float() / temperature
        logp_BT = torch.log_softmax(logits, -1).gather(-1, completion_BT[..., None]).squeeze(-1)
        # one update per batch (mu = 1): the sampling policy is the current one, detached
        loss = policy_loss(logp_BT, logp_BT.detach(), adv_B, mask_BT, preset="grpo", beta=0.0)
        opt.zero_grad()
        loss.loss.backward()
        opt.step()
        print(f"step {step}: reward {rewards_PG.mean():.3f}  loss {loss.loss.item():+.4f}  "
              f"clip_high {loss.metrics['clip_high_frac']:.3f}")


if __name__ == "__main__":
    main()
