"""Data parallelism on torch.distributed: DDP replicas or FSDP2 shards, and what each needs.

`wrap` returns the module the update's forward passes go through: the policy itself with one
process, `DistributedDataParallel(policy)` for ddp, the policy sharded in place by
`fully_shard` (one FSDP unit per decoder layer, then the transformers model as the root) for fsdp2.

Both average gradients over the ranks; the trainer scales each rank's loss by the world size so
that the average is the global batch's gradient (each rank's loss is already divided by the
global denominator). Micro-batches before the last skip the gradient all-reduce (`grad_sync`).

FSDP2 and generation: a sharded layer all-gathers its weights in every forward, which is a
collective, and ranks decode different numbers of steps (their completions end at different
lengths), so generation would deadlock. `full_params` gathers every layer once before a rollout
or an evaluation and keeps it gathered until the block ends (the usual RL practice of gathering
weights for the rollout engine); it costs one unsharded copy of the weights while it lasts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from groupo.config import ConfigError
from groupo.distributed import Dist


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face model (its `_no_split_modules` classes)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in base.modules() if type(m).__name__ in names]


def wrap(model: torch.nn.Module, ref_model: torch.nn.Module | None, kind: str, world: Dist,
         device: torch.device) -> torch.nn.Module:
    """The module to train through (see the module docstring); `ref_model` is sharded too."""
    if not world.enabled:
        return model
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # broadcast_buffers=False: DDP would otherwise broadcast the buffers (rotary caches, the
        # same on every rank) in every forward, a collective, and the number of forwards differs
        # between ranks (a micro-batch whose rows share prompts takes two, see models.logprobs).
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    if kind != "fsdp2":
        raise ConfigError(f"train.parallel = {kind!r} is unknown; valid: ddp, fsdp2")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    modules = [(m, decoder_layers(m)) for m in (model, ref_model) if m is not None]
    for module, layers in modules:
        if not layers:
            mtype = getattr(getattr(module, "config", None), "model_type", type(module).__name__)
            raise ConfigError(f"train.parallel = 'fsdp2' cannot wrap this model (model_type {mtype!r}): it "
                              "names no decoder layer class in _no_split_modules; use train.parallel=ddp")
    mesh = init_device_mesh(device.type, (world.world_size,))
    for module, layers in modules:
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        # The root is the transformers model, not peft's wrapper: generation enters through
        # the inner model's forward, and FSDP2 needs every forward to start at its root.
        fully_shard(module.get_base_model() if hasattr(module, "get_base_model") else module, mesh=mesh)
    return model


def fsdp_units(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The FSDP2 units inside `module` (none unless `wrap` sharded it)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def is_fsdp(module: torch.nn.Module) -> bool:
    return bool(fsdp_units(module))


def shares_prompts(module: torch.nn.Module) -> bool:
    """Whether the update may encode each prompt once per group (models.logprobs).

    Not under FSDP2: the prompt pass hands its keys and values to the completion pass through a
    KV cache, which FSDP2's backward hooks do not see, so the prompt pass's backward would run on
    weights FSDP2 has already freed (measured: "storage of size 0" in backward).
    """
    return not is_fsdp(module)


@contextlib.contextmanager
def grad_sync(module: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Backward passes in this block all-reduce gradients only if `enabled` (the last micro-batch)."""
    from torch.nn.parallel import DistributedDataParallel

    if enabled:
        yield
    elif isinstance(module, DistributedDataParallel):
        with module.no_sync():
            yield
    elif units := fsdp_units(module):
        for unit in units:
            unit.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for unit in units:
                unit.set_requires_gradient_sync(True, recurse=False)
    else:
        yield


@contextlib.contextmanager
def full_params(module: torch.nn.Module) -> Iterator[None]:
    """Under FSDP2: every layer's full weights, gathered once, for the block (see the docstring)."""
    units = fsdp_units(module)
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s result as a plain tensor (a DTensor under FSDP2)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def full_state_dict(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor] | None:
    """Under FSDP2: the whole (unsharded) state dict on rank 0's CPU, {} on the other ranks; every rank
    must call it. None without FSDP2 (the model's own state_dict is already whole)."""
    if not is_fsdp(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                 ignore_frozen_params=trainable_only))
    if trainable_only:  # a tied frozen weight (lm_head = embeddings) slips through ignore_frozen_params
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        whole = {k: v for k, v in whole.items() if k in names}
    return whole
