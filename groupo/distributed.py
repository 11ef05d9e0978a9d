"""Where this process runs (its device and rank) and the few collectives the trainer needs.

One process (no torchrun) is rank 0 of a world of 1 and every helper here is a no-op, so the
single-process trainer never touches torch.distributed. Under torchrun (WORLD_SIZE, RANK,
LOCAL_RANK and the rendezvous in the environment) `init` joins the process group: nccl on CUDA,
gloo on CPU, unless the config names one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from groupo.config import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_world() -> Dist:
    """The rank layout torchrun put in the environment (a world of 1 without it)."""
    env = os.environ
    return Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def resolve_device(spec: str, world: Dist) -> torch.device:
    """`run.device` -> a torch.device. Under torchrun, auto and cuda mean cuda:LOCAL_RANK."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(f"run.device = {spec!r}, but no CUDA device is available here (torch "
                          f"{torch.__version__}, {build}); use run.device=cpu or run.device=auto")
    count = torch.cuda.device_count()
    if (m := re.fullmatch(r"cuda:(\d+)", spec)) is not None:
        if world.enabled:
            raise ConfigError(f"run.device = {spec!r} names one GPU, but {world.world_size} processes "
                              "run; use run.device=cuda (each rank takes cuda:LOCAL_RANK)")
        index = int(m.group(1))
    else:
        index = world.local_rank
    if index >= count:
        raise ConfigError(f"run.device = {spec!r} asks for GPU {index}, but this machine has {count} "
                          f"(cuda:0 .. cuda:{count - 1}); start at most {count} processes per machine")
    return torch.device("cuda", index)


def init(backend: str, device: torch.device) -> Dist:
    """Join the torchrun process group (if any) and return this process's rank layout."""
    world = launched_world()
    if not world.enabled:
        return world
    if dist.is_initialized():
        return world
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
        raise ConfigError(f"train.backend = 'nccl' needs CUDA devices and a torch built with NCCL; this "
                          f"process runs on {device}: use train.backend=gloo (or auto)")
    if backend == "gloo" and not dist.is_gloo_available():
        raise ConfigError("train.backend = 'gloo' is not available in this torch build; use nccl on GPUs")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return world


def shutdown(world: Dist) -> None:
    """Leave the process group once every rank is done (call it on the success path only: after a
    failure the other ranks may never arrive). Without the barrier a rank that finished first
    could tear down the group while another was still leaving it (seen: a rank hung in
    destroy_process_group after rank 0 had exited). One process leaves torch.distributed alone:
    a group there is someone else's (the in-process vLLM engine makes a world of 1 of its own,
    and tearing it down made vLLM's exit fail).

    The barrier's work object is held here until the group is gone. Gloo's worker thread drops its
    reference to a finished work after waking the waiter; were that the last one, the work's
    tensors would be freed on that thread, which needs the GIL, while this thread, holding the GIL,
    joins it in the group's destructor: a deadlock (seen under torchrun with gloo: one rank hung at
    exit, in the group's destructor, after the other had left). Held here, the work is freed on
    this thread, after the join."""
    if world.enabled and dist.is_initialized():
        done = dist.barrier(async_op=True)
        done.wait()
        dist.destroy_process_group()
        del done


def gather_objects(obj: Any, world: Dist) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not world.enabled:
        return [obj]
    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: Dist) -> Any:
    """Rank 0's `obj` on every rank (e.g. a decision that must be the same everywhere)."""
    if not world.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(t: torch.Tensor, op: str, world: Dist) -> torch.Tensor:
    """`t` reduced over the ranks ("sum", "min" or "max"); `t` itself with one process."""
    if world.enabled:
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(t, op=ops[op])
    return t


def barrier(world: Dist) -> None:
    if world.enabled:
        dist.barrier()


def setup(device_spec: str, backend: str) -> tuple[Dist, torch.device]:
    """(rank layout, device) of this process; joins the process group under torchrun (idempotent)."""
    device = resolve_device(device_spec, launched_world())
    return init(backend, device), device
