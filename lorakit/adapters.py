"""Several named adapters on one frozen model: switch, combine, delete (HF PEFT's multi-adapter API).

LoRA's adapters are small and swappable: one frozen model serves many tasks, switched by replacing A and B (Hu
et al. 2021, §1 and §4.1). Each ``LoRALinear`` holds any number of named adapters and adds the updates of the active
ones, h = W₀x + b + Σᵢ scaleᵢ·BᵢAᵢx. ``load_adapter(model, path, name=...)`` adds one (inactive until ``set_adapter``),
``save_adapter(model, path, name=...)`` writes one, and ``combine_adapters`` makes a new one from a weighted sum:

* ``how="cat"`` is exact: A' = [w₁s₁A₁; w₂s₂A₂; …], B' = [B₁, B₂, …], scale 1, so B'A' = Σ wᵢ sᵢ BᵢAᵢ = Σ wᵢ ΔWᵢ with
  rank Σ rᵢ (PEFT's ``add_weighted_adapter(..., combination_type="cat")``, with the same products);
* ``how="svd"`` keeps rank r (default: the largest rᵢ): B' = U_r S_r, A' = V_rᵀ from the SVD of Σ wᵢ ΔWᵢ, its best
  rank-r approximation (Eckart–Young; PEFT's ``"svd"``).

Weights may be negative (task subtraction: {a: 1, b: −1}) or interpolate ({a: w, b: 1 − w}). Adapters on different
target modules combine over the union of their modules, an adapter adding nothing where it has no factors (PEFT's
rule). DoRA and PiSSA adapters are left out of combinations: DoRA's magnitudes rescale W₀ row by row and do not add,
and a PiSSA layer's frozen W is the residual of its one adapter. Every function checks all its input before it
changes anything, so a refused call leaves the model as it was.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .config import LoRAConfig, LoRAError
from .dora import DoRALinear
from .inject import layer_kind, lora_layer, lora_modules
from .layers import LoRALinear
from .pissa import PiSSALinear
from .registry import AdapterSet, adapter_set, check_name, claim_head, head_values, show_head

COMBINATIONS = ("cat", "svd")


def adapter_names(model: nn.Module) -> list[str]:
    """The model's adapters, in the order they arrived ([] for a model without LoRA)."""
    return adapter_set(model).names() if lora_modules(model) else []


def active_adapters(model: nn.Module) -> list[str]:
    """The active adapters, the one whose head the model shows first."""
    return list(adapter_set(model).active) if lora_modules(model) else []


def set_adapter(model: nn.Module, names: str | Sequence[str]) -> None:
    """Make ``names`` (one name, or several whose updates add) the active adapters; the first one's task head is the
    model's. Their factors train, the others' are frozen (LoRA-FA's A stays frozen). A merged model is unmerged
    first. DoRA layers serve one adapter at a time."""
    record = _record(model, "set_adapter")
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        raise LoRAError(f"set_adapter: name at least one adapter; the model's adapters are {record.names()}")
    for name in names:
        record.check_known(name, "set_adapter")
    if len(set(names)) != len(names):
        raise LoRAError(f"set_adapter: {list(names)} names an adapter twice")
    if len(names) > 1 and any(isinstance(m, DoRALinear) for m in lora_modules(model).values()):
        raise LoRAError(f"set_adapter: DoRA layers serve one adapter at a time (each rescales W₀ by its own "
                        f"magnitudes), got {list(names)}; accepted: one name")
    _activate(model, record, names)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove the adapter ``name``. A layer left without adapters becomes the original linear layer again; when no
    adapter is left the model is the base model, its own head included. When ``name`` was active, the other active
    adapters stay so, or else the first remaining adapter becomes active (PEFT's rule)."""
    record = _record(model, "delete_adapter")
    record.check_known(name, "delete_adapter")
    layers = {n: m for n, m in lora_modules(model).items() if name in m.adapter_names}
    if any(isinstance(m, PiSSALinear) for m in layers.values()):
        raise LoRAError(f"delete_adapter: {name!r} is a PiSSA adapter, whose layers hold the residual of W, not W; "
                        f"load the pretrained model again instead")
    for module_name, layer in layers.items():
        if not layer.remove_adapter(name):
            _unwrap(model, module_name, layer)
    del record.configs[name]
    record.heads.pop(name, None)
    record.head_keys.pop(name, None)
    remaining = tuple(n for n in record.active if n != name) or tuple(record.names()[:1])
    if remaining:
        _activate(model, record, remaining)
        return
    show_head(model, record, None)  # the model's own head back: the base model
    del model.lora_adapters
    if hasattr(model, "lora_config"):
        del model.lora_config


def combine_adapters(
    model: nn.Module,
    weights: Mapping[str, float],
    new_name: str,
    how: str = "cat",
    rank: int | None = None,
    head: str | None = None,
) -> list[str]:
    """Add adapter ``new_name`` with ΔW = Σ wᵢ ΔWᵢ over ``weights`` ({name: wᵢ}): exactly (``how="cat"``, rank
    Σ rᵢ) or as its best rank-``rank`` approximation (``how="svd"``; default rank: the largest rᵢ). It is an ordinary
    adapter (inactive until ``set_adapter``) that saves, loads and merges. ``head`` names the adapter whose task head
    it takes (default: none of its own, so the model's own head). Returns the adapted module names."""
    record = _record(model, "combine_adapters")
    if not isinstance(weights, Mapping) or not weights:
        raise LoRAError(f"combine_adapters: weights must be a non-empty {{adapter name: weight}} mapping, got "
                        f"{weights!r}; the model's adapters are {record.names()}")
    for name, weight in weights.items():
        record.check_known(name, "combine_adapters")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise LoRAError(f"combine_adapters: the weight of {name!r} must be a finite number, got {weight!r}")
    check_name(new_name)
    if new_name in record.configs:
        raise LoRAError(f"combine_adapters: an adapter named {new_name!r} exists; delete_adapter it or pick another "
                        f"name")
    if how not in COMBINATIONS:
        raise LoRAError(f"combine_adapters: unknown how={how!r}; accepted: 'cat' (exact, ranks add) or 'svd' "
                        f"(best rank-r approximation)")
    if rank is not None and (how != "svd" or isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise LoRAError(f"combine_adapters: rank={rank!r} is for how='svd' and must be a positive integer; with "
                        f"'cat' the rank is the sum of the adapters' ranks")
    if head is not None:
        record.check_known(head, "combine_adapters (head)")

    layers = {n: m for n, m in lora_modules(model).items() if set(weights) & set(m.adapter_names)}
    other = next((m for m in layers.values() if type(m) is not LoRALinear), None)
    if other is not None:
        kind = "DoRA" if isinstance(other, DoRALinear) else "PiSSA"
        raise LoRAError(f"combine_adapters combines plain LoRA adapters; these are {kind} adapters (DoRA's "
                        f"magnitudes rescale W₀ and do not add; a PiSSA layer's W is its one adapter's residual)")
    ranks = {name: next(m.slot(name).r for m in layers.values() if name in m.adapter_names) for name in weights}
    new_rank = sum(ranks.values()) if how == "cat" else rank or max(ranks.values())
    for module_name, layer in layers.items():
        if new_rank > min(layer.in_features, layer.out_features):
            raise LoRAError(f"combine_adapters: rank {new_rank} exceeds min(in, out) = "
                            f"{min(layer.in_features, layer.out_features)} of {module_name}; accepted: how='svd' "
                            f"with a smaller rank")

    combine = _cat if how == "cat" else _svd
    factors = {module_name: combine(layer, weights, ranks, new_rank) for module_name, layer in layers.items()}
    first = next(iter(weights))
    dropout = next(m.slot(first).dropout for m in layers.values() if first in m.adapter_names)
    head_config = record.configs.get(head) if head is not None else None
    config = LoRAConfig(r=new_rank, alpha=float(new_rank), dropout=getattr(dropout, "p", 0.0),
                        targets=tuple(factors), init="gaussian",
                        trainable=tuple(head_config.trainable) if head_config is not None else ())
    add_adapter(model, new_name, config, factors, head=head_values(model, record, head) if head else None)
    return sorted(factors)


@torch.no_grad()
def _cat(layer: LoRALinear, weights: Mapping[str, float], ranks: Mapping[str, int], new_rank: int):
    """[w₁s₁A₁; …] and [B₁, …], zero blocks for adapters without factors here (PEFT's cat, same products)."""
    blocks_A, blocks_B = [], []
    for name, weight in weights.items():
        if name in layer.adapter_names:
            slot = layer.slot(name)
            blocks_A.append(slot.lora_A.detach() * weight * slot.scale)
            blocks_B.append(slot.lora_B.detach())
        else:
            blocks_A.append(layer.lora_A.new_zeros(ranks[name], layer.in_features))
            blocks_B.append(layer.lora_B.new_zeros(layer.out_features, ranks[name]))
    return torch.cat(blocks_A, dim=0), torch.cat(blocks_B, dim=1)


@torch.no_grad()
def _svd(layer: LoRALinear, weights: Mapping[str, float], ranks: Mapping[str, int], new_rank: int):
    """A' = V_rᵀ, B' = U_r S_r of Σ wᵢ ΔWᵢ (fp32), PEFT's placement of the singular values."""
    total = sum(weight * layer.delta_weight(name).float() for name, weight in weights.items()
                if name in layer.adapter_names)
    U, S, Vh = torch.linalg.svd(total, full_matrices=False)
    return Vh[:new_rank], U[:, :new_rank] * S[:new_rank]


def add_adapter(
    model: nn.Module,
    name: str,
    config: LoRAConfig,
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    magnitudes: Mapping[str, torch.Tensor] | None = None,
    head: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Add adapter ``name`` (inactive, frozen) to a model that has LoRA layers: its factors go into the layers that
    exist and new layers wrap the modules that have none. Everything is checked first; shapes are the caller's
    (``state._check_fits``)."""
    record = _record(model, "load_adapter")
    check_name(name)
    if name in record.configs:
        raise LoRAError(f"an adapter named {name!r} exists; delete_adapter it first or pick another name")
    modules, existing = dict(model.named_modules()), lora_modules(model)
    kinds = {layer_kind(m) for m in existing.values()}
    kind = "DoRA" if config.use_dora else "plain LoRA"
    if "PiSSA" in kinds:
        raise LoRAError(f"this model's LoRA layers hold a PiSSA adapter, whose frozen W is that adapter's residual: "
                        f"it holds no other adapter; add {name!r} to a model loaded without PiSSA")
    if kinds != {kind}:
        raise LoRAError(f"adapter {name!r} is a {kind} adapter, the model's LoRA layers are {'/'.join(sorted(kinds))}"
                        f"; adapters on one model are all plain LoRA or all DoRA")
    for module_name, (A, B) in factors.items():
        module = modules[module_name]
        if isinstance(module, LoRALinear):
            if not 0 < A.shape[0] <= min(module.in_features, module.out_features):
                raise LoRAError(f"rank r={A.shape[0]} must be in [1, min(in, out)] = "
                                f"[1, {min(module.in_features, module.out_features)}] for {module_name}")
        else:
            type(next(iter(existing.values()))).check(module, A.shape[0])

    for module_name, (A, B) in factors.items():
        module, magnitude = modules[module_name], (magnitudes or {}).get(module_name)
        if isinstance(module, LoRALinear):
            module.add_adapter(name, A, B, config.alpha_for(module_name), config.rslora, config.dropout, magnitude)
            continue
        layer = lora_layer(module, config, name, module_name)
        with torch.no_grad():
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)
            if magnitude is not None:
                layer.magnitude.copy_(magnitude)
        layer.active_adapters = ()
        layer.requires_grad_(False)
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    record.configs[name] = config
    claim_head(model, record, name, tuple(head or ()), dict(head or {}))


def _activate(model: nn.Module, record: AdapterSet, names: tuple[str, ...]) -> None:
    """Switch every layer and the head to ``names``; the active adapters train, the others are frozen."""
    for layer in lora_modules(model).values():
        layer.set_active(names)
        for name in layer.adapter_names:
            slot, on = layer.slot(name), name in names
            frozen_a = getattr(record.configs.get(name), "freeze_a", False)
            slot.lora_A.requires_grad_(on and not frozen_a)
            slot.lora_B.requires_grad_(on)
            if isinstance(layer, DoRALinear):
                slot.magnitude.requires_grad_(on)
    show_head(model, record, names[0])
    record.active = names
    model.lora_config = record.configs[names[0]]


def _unwrap(model: nn.Module, module_name: str, layer: LoRALinear) -> None:
    """Put back the linear layer ``layer`` wrapped, with its (unmerged) weight and bias."""
    layer.unmerge()
    base = layer.base_layer
    base.weight, base.bias = layer.weight, layer.bias
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, base)


def _record(model: nn.Module, action: str) -> AdapterSet:
    if not lora_modules(model):
        raise LoRAError(f"{action}: the model has no LoRA adapters; inject_lora or load_adapter one first")
    return adapter_set(model)
