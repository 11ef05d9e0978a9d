"""One update on a fixed global batch, as the trainer runs it, in one process or under torchrun.

    python tests/dist_update.py PARALLEL OUT_DIR                     # one process
    torchrun --nproc_per_node 2 tests/dist_update.py PARALLEL OUT_DIR

For each case (grpo with beta > 0 and dapo with LoRA; grpo with beta > 0 fully fine-tuned, whose
frozen reference copy FSDP2 shards too; dapo in two mini-batches with adaptive entropy control and
importance weights; grpo with padding-free passes, train.packing) it builds the same tiny model and
the same 12-completion batch on every rank, runs `trainer.prepare.prepare` then `trainer.update.update`
(mu = 2, so the second update has ratios != 1 and clipping), and rank 0 writes the reduced
metrics and the updated trainable weights (gathered whole under FSDP2) to OUT_DIR/<case>.json / .safetensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import make_tiny, nonzero_lora

from groupo.algorithms.presets import get_preset
from groupo.config import LoraConfig
from groupo.distributed import setup, shutdown
from groupo.models import load_policy_from
from groupo.trainer import parallel
from groupo.trainer.collect import RolloutBatch
from groupo.trainer.prepare import prepare
from groupo.trainer.settings import UpdateSettings
from groupo.trainer.update import EntropyControl, build_optimizer, update
from groupo.types import Completion, Problem

G = 3
PROMPTS = [[5, 6, 7], [8, 9], [20, 21, 22, 23], [30, 31]]
REWARDS = [[1.0, 0.0, 0.5], [0.2, 0.2, 0.2], [0.0, 1.0, 1.0], [0.3, 0.9, 0.1]]  # group 1: zero variance


def fixed_batch() -> RolloutBatch:
    """4 groups of 3 completions of lengths 1..6, two of them truncated."""
    gen = torch.Generator().manual_seed(0)
    completions = []
    for p in range(len(PROMPTS)):
        for j in range(G):
            n = 1 + (p * G + j) % 6
            ids = torch.randint(3, 300, (n,), generator=gen).tolist()
            completions.append(Completion(PROMPTS[p], ids, [0.0] * n, "", "length" if n == 6 else "stop"))
    problems = [Problem([{"role": "user", "content": str(p)}], "0") for p in range(len(PROMPTS))]
    return RolloutBatch(problems, completions, torch.tensor(REWARDS), {}, [p for p in PROMPTS for _ in range(G)],
                        n_zero_var=1, n_groups=4, group_size=G)


def main(kind: str, out: Path) -> None:
    world, device = setup("cpu", "gloo")
    cases = (("grpo", "grpo", 0.04, 4), ("dapo", "dapo", 0.0, 4), ("grpo_full", "grpo", 0.04, 0),
             ("dapo_minibatches", "dapo", 0.0, 4), ("grpo_packed", "grpo", 0.04, 4))
    for case in cases:
        run_case(*case, kind, world, device, out)
    shutdown(world)


def run_case(name: str, preset: str, beta: float, rank: int, kind: str, world, device, out: Path) -> None:
    """One case; its model, wrapper and optimizer are freed when it returns, so every rank leaves
    the process group (distributed.shutdown) holding nothing of it, as `groupo train` does."""
    torch.manual_seed(0)  # peft draws lora_A from the global RNG
    model, tok = make_tiny()
    policy = load_policy_from(model, tok, LoraConfig(rank=rank, alpha=8), beta=beta)
    with torch.random.fork_rng():
        torch.manual_seed(1)  # a non-zero adapter, so every LoRA matrix gets a gradient
        nonzero_lora(policy.model, 0.05)
    module = parallel.wrap(policy.model, policy.ref_model, kind, world, device)
    # dapo_minibatches: 2 mini-batches (one group per rank each), an entropy bonus under adaptive control
    # (its entropy all-reduced at every optimizer step) and truncated importance weights against the
    # engine's log-probs (0 here: weights pi_trainer)
    knobs = name == "dapo_minibatches"
    loss = get_preset(preset).with_overrides(beta=beta, mask_truncated=preset == "dapo",
                                             entropy_coef=0.01 if knobs else None)
    s = UpdateSettings(loss=loss, temperature=0.9, micro_batch_size=4, max_len=6, num_iterations=2,
                       max_grad_norm=1.0, share_prompts=parallel.shares_prompts(module),
                       packing=name == "grpo_packed",  # padding-free passes: grpo's numbers
                       **({"steps_per_generation": 2, "entropy_target": 100.0, "is_correction": "token_truncate",
                           "is_upper": 2.0} if knobs else {}))
    control = EntropyControl(coef=0.01) if knobs else None
    optimizer, scheduler = build_optimizer(policy.model, 1e-3, 0.0, [0.9, 0.999], 0, 1, "constant")
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    batch = prepare(module, policy, fixed_batch(), s, world, pad_id=tok.pad_token_id, device=device)
    metrics = update(module, optimizer, scheduler, batch, s, world, seed=123, entropy_control=control)
    whole = parallel.full_state_dict(policy.model, trainable_only=policy.is_lora)
    if whole is None:
        whole = {n: p.detach() for n, p in policy.model.named_parameters() if p.requires_grad}
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        whole = {n: t for n, t in whole.items() if n in trainable}  # full: lm_head is tied to the embeddings
        save_file({n: t.contiguous() for n, t in whole.items()}, out / f"{name}.safetensors")
        (out / f"{name}.json").write_text(json.dumps({**metrics, "world_size": world.world_size}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
