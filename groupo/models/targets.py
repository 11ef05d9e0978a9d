"""What `lora.target_modules` names, resolved on a model: module names, and three groups whose
members differ by architecture.

    all-linear   every linear layer but the output head: handed to PEFT as that word, so it means
                 exactly what it means there. On a mixture-of-experts model that includes what were
                 linear layers before transformers 5 fused them: the experts (gate_up_proj at twice the
                 rank, as the gate and up projections it fuses) and the router
    attention    the linear layers inside each layer's attention block (q/k/v/o on Llama, Qwen,
                 Gemma and Mistral; qkv_proj and o_proj on Phi-3)
    mlp          the linear layers inside each layer's MLP (gate/up/down, or Phi-3's gate_up_proj and
                 down_proj); on a mixture-of-experts model the experts' weights, which transformers 5
                 stores as one 3D parameter per projection rather than as linear layers, so PEFT
                 adapts them as parameters (`target_parameters`); the router is left alone

Blocks are recognised by their class names (`...Attention`, `...MLP`, `...SparseMoeBlock`,
`...Experts`), which every decoder in transformers follows, rather than by a table per
architecture that each new model would need a row in. A name that is neither a group nor a module
is one line naming the linear layers the model has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from groupo.config import ConfigError

GROUPS = ("all-linear", "attention", "mlp")
ADAPTABLE = (torch.nn.Linear, torch.nn.Embedding)  # what a name may pick besides the groups (PEFT adapts both)


@dataclass(frozen=True)
class Targets:
    modules: tuple[str, ...] | str  # PEFT's target_modules: module names (the last part of each path), or "all-linear"
    parameters: tuple[str, ...]     # parameter paths from the decoder layer, PEFT's target_parameters


def _block(name: str) -> str | None:
    """"attention" or "mlp" for a module class of that block, else None."""
    lower = name.lower()
    if lower.endswith("attention"):
        return "attention"
    if lower.endswith(("mlp", "moeblock", "experts")):
        return "mlp"
    return None


def _linear_layers(model: torch.nn.Module) -> dict[str, str | None]:
    """Every linear layer but the output head: full path -> the block it sits in (None: neither)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out: dict[str, str | None] = {}
    blocks: list[tuple[str, str]] = []  # (path prefix, kind), outermost first
    for path, m in model.named_modules():
        kind = _block(type(m).__name__)
        if kind is not None:
            blocks.append((path + ".", kind))
        # bitsandbytes' quantized layers subclass nn.Linear, so a 4-bit base is targeted alike
        if isinstance(m, torch.nn.Linear) and m is not head:
            out[path] = next((k for prefix, k in reversed(blocks) if path.startswith(prefix)), None)
    return out


def _expert_parameters(model: torch.nn.Module) -> list[str]:
    """The fused expert weights (3D parameters of an `...Experts` module), as PEFT's
    target_parameters name them: the path from the decoder layer, e.g. mlp.experts.gate_up_proj."""
    out = []
    for path, m in model.named_modules():
        if type(m).__name__.lower().endswith("experts"):
            for name, p in m.named_parameters(recurse=False):
                if p.dim() == 3:
                    out.append(".".join([*path.split(".")[-2:], name]))
    return sorted(set(out))


def resolve_targets(model: torch.nn.Module, entries: list[str] | tuple[str, ...]) -> Targets:
    """The modules (and expert parameters) `entries` name on `model`: "all-linear" is kept for PEFT,
    the other groups are expanded, module names are kept where some module's path ends with them,
    expert parameter paths likewise. ConfigError for a name that matches nothing, all-linear beside
    other entries, or a list that selects no layer at all."""
    if "all-linear" in entries:
        if len(entries) > 1:
            raise ConfigError(f"lora.target_modules = {list(entries)}: all-linear already covers every linear layer; "
                              "give it alone, or list groups and names without it")
        return Targets("all-linear", ())
    linear = _linear_layers(model)
    experts = _expert_parameters(model)
    named = dict(model.named_modules())
    modules: set[str] = set()
    parameters: set[str] = set()
    for entry in entries:
        if entry in ("attention", "mlp"):
            modules |= {p.rsplit(".", 1)[-1] for p, kind in linear.items() if kind == entry}
            if entry == "mlp":
                parameters |= set(experts)
        elif entry in experts:
            parameters.add(entry)
        else:  # PEFT's rule for a list: a module whose path is the name or ends with "." + the name
            found = [m for p, m in named.items() if p and (p == entry or p.endswith("." + entry))]
            have = ", ".join(sorted({p.rsplit(".", 1)[-1] for p in linear}))
            if not found:
                raise ConfigError(f"lora.target_modules: {entry!r} is not a module of this model "
                                  f"({type(model).__name__}); its linear layers: {have}; or a group: "
                                  f"{', '.join(GROUPS)}")
            if not all(isinstance(m, ADAPTABLE) for m in found):
                raise ConfigError(f"lora.target_modules: {entry!r} is a {type(found[0]).__name__}, not a linear "
                                  f"layer; the linear layers of {type(model).__name__}: {have}")
            modules.add(entry)
    if not modules and not parameters:
        raise ConfigError(f"lora.target_modules = {list(entries)} selects no layer of {type(model).__name__}")
    return Targets(tuple(sorted(modules)), tuple(sorted(parameters)))
