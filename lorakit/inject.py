"""Put LoRA into a built model by module name, and read back what it learned (ΔW)."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from .config import LoRAConfig, LoRAError
from .dora import DoRALinear
from .gradient_init import GradientLinear
from .layers import LoRALinear
from .linear import is_conv1d, is_linear
from .pissa import PiSSALinear
from .registry import DEFAULT_NAME, AdapterSet, adapter_set, check_name, claim_head, head_parameter_names


def matches(name: str, patterns: Iterable[str]) -> bool:
    """PEFT's rule: a module matches a pattern when its full name equals it or ends with "." + pattern."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def linear_module_names(
    model: nn.Module, include_head: bool = False, head: Iterable[str] = ("classifier", "lm_head")
) -> list[str]:
    """Names of the linear layers of a model (``nn.Linear`` and GPT-2's ``Conv1D``, LoRA-wrapped ones included), the
    task head (a classifier, a causal LM's ``lm_head``) left out by default."""
    head = tuple(head)
    names = []
    for name, module in model.named_modules():
        if not (is_linear(module) or isinstance(module, LoRALinear)) or _inside_lora(model, name):
            continue
        if not include_head and matches_any_prefix(name, head):
            continue
        names.append(name)
    return names


def _inside_lora(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    while parent:
        if isinstance(model.get_submodule(parent), LoRALinear):
            return True
        parent = parent.rpartition(".")[0]
    return False


def fan_in_fan_out_modules(model: nn.Module) -> list[str]:
    """Names of the linear layers whose weight is stored in × out (GPT-2's ``Conv1D``, LoRA-wrapped or not): pass
    them to ``weight_deltas`` so a full fine-tune's ΔW is out × in like LoRA's."""
    return [name for name, module in model.named_modules()
            if is_conv1d(module) or (isinstance(module, LoRALinear) and module.fan_in_fan_out)]


def inject_lora(
    model: nn.Module, config: LoRAConfig, name: str = DEFAULT_NAME, gradients: Mapping[str, torch.Tensor] | None = None
) -> list[str]:
    """Replace every linear layer (``nn.Linear``, GPT-2's ``Conv1D``) whose name matches ``config.targets`` with a
    ``LoRALinear`` (``DoRALinear``, ``PiSSALinear``: see ``lora_layer``), in place, holding one adapter, ``name``
    (PEFT's "default" unless given; more arrive with ``load_adapter(..., name=...)``).

    Every parameter is frozen except the LoRA factors and those of the modules in ``config.trainable`` (the task head).
    Each module gets the rank and α of ``config.rank_for``/``alpha_for`` (``rank_pattern``, ``alpha_pattern``).
    ``init="gradient"`` needs ``gradients``: module name → G₀ = ∂L/∂W (out × in) at the pretrained weights.
    Returns the replaced module names, in model order.
    """
    if lora_modules(model):
        raise LoRAError("model already has LoRA layers; inject into a fresh model, or load_adapter to replace them")
    check_name(name)
    gradients = dict(gradients or {})

    def check(base: nn.Module, module: str) -> None:
        lora_layer_type(config).check(base, config.rank_for(module))
        if config.init == "gradient":
            GradientLinear.check_gradient(base, gradients.get(module), module)

    names = wrap_linears(model, config.target_names, config.trainable,
                         lambda base, module: lora_layer(base, config, name, module, gradients.get(module)), check)
    model.lora_config = config  # the config of the adapter in front (PEFT's modules_to_save and init when saved)
    model.lora_adapters = AdapterSet({name: config}, (name,))
    claim_head(model, model.lora_adapters, name, head_parameter_names(model, config.trainable))
    return names


def wrap_linears(
    model: nn.Module, patterns: tuple[str, ...], trainable: tuple[str, ...], wrap, check=None
) -> list[str]:
    """Replace each linear layer (``nn.Linear``, GPT-2's ``Conv1D``) matching ``patterns`` outside the ``trainable``
    modules by ``wrap(linear)``, after freezing every parameter but those of ``trainable`` (so the wrappers' new
    parameters start trainable). ``check(linear, name)`` raises for a layer ``wrap(linear, name)`` would refuse, and
    runs on every layer first, so a refusal changes nothing. Returns the names, in model order; no match is a one-line
    error listing the model's linear modules."""
    names = [
        name
        for name, module in model.named_modules()
        if is_linear(module) and matches(name, patterns) and not matches_any_prefix(name, trainable)
    ]
    if not names:
        shown = ", ".join(_collapse_layer_indices(linear_module_names(model, include_head=True)))
        raise LoRAError(f"no nn.Linear module matches targets {list(patterns)}; the model's Linear modules are: "
                        f"{shown}")
    for name in names:
        if check is not None:
            check(model.get_submodule(name), name)
    freeze_except(model, trainable)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, wrap(getattr(parent, child), name))
    return names


def layer_kind(module: LoRALinear) -> str:
    """"DoRA", "PiSSA" or "plain LoRA": the names used in messages, read from the layer's type."""
    if isinstance(module, DoRALinear):
        return "DoRA"
    return "PiSSA" if isinstance(module, PiSSALinear) else "plain LoRA"


def lora_layer_type(config: LoRAConfig) -> type[LoRALinear]:
    """LoRALinear, DoRALinear (use_dora), PiSSALinear (init="pissa") or GradientLinear (init="gradient")."""
    if config.use_dora:
        return DoRALinear
    return {"pissa": PiSSALinear, "gradient": GradientLinear}.get(config.init, LoRALinear)


def lora_layer(base: nn.Module, config: LoRAConfig, name: str = DEFAULT_NAME, module: str | None = None,
               gradient: torch.Tensor | None = None) -> LoRALinear:
    """The layer ``config`` asks for around ``base`` (``lora_layer_type``), its adapter named ``name``, with the
    rank and α ``config`` gives the module named ``module`` (``r`` and ``alpha`` without a name); ``gradient`` is
    G₀ for ``init="gradient"``. With ``freeze_a`` (LoRA-FA) A keeps its random init and only B trains."""
    r, alpha = (config.rank_for(module), config.alpha_for(module)) if module is not None else (config.r, config.alpha)
    if config.init == "pissa":
        layer = PiSSALinear(base, r, alpha, config.dropout, config.rslora)
    elif config.init == "gradient":
        GradientLinear.check_gradient(base, gradient, module)
        layer = GradientLinear(base, r, alpha, gradient, config.dropout, config.rslora)
    else:
        layer = lora_layer_type(config)(base, r, alpha, config.dropout, config.init, config.rslora)
    if config.freeze_a:
        layer.lora_A.requires_grad_(False)
    layer.adapter_name, layer.active_adapters = name, (name,)
    return layer


def freeze_except(model: nn.Module, modules: Iterable[str]) -> list[str]:
    """Freeze every parameter but those of ``modules`` (matched like targets, e.g. the task head); returns the names
    of the modules left trainable. ``inject_lora`` does this for ``config.trainable``; alone it trains a head on a
    frozen encoder."""
    modules = tuple(modules)
    model.requires_grad_(False)
    kept = [name for name, module in model.named_modules() if name and matches(name, modules)]
    for name in kept:
        model.get_submodule(name).requires_grad_(True)
    return kept


def matches_any_prefix(name: str, modules: Iterable[str]) -> bool:
    """True when ``name`` lies inside one of ``modules`` (matched like targets), e.g. RoBERTa's classifier.dense."""
    parts = name.split(".")
    return any(matches(".".join(parts[:i]), modules) for i in range(1, len(parts) + 1))


def _collapse_layer_indices(names: list[str]) -> list[str]:
    """'encoder.layer.0.x', 'encoder.layer.1.x' -> 'encoder.layer.{0..1}.x', to keep the error message one short line."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        index = next((i for i, p in enumerate(parts) if p.isdigit()), None)
        key = name if index is None else ".".join(parts[:index] + ["{i}"] + parts[index + 1 :])
        groups.setdefault(key, []).append(parts[index] if index is not None else "")
    out = []
    for key, indices in groups.items():
        if "{i}" in key:
            span = indices[0] if len(indices) == 1 else f"{indices[0]}..{indices[-1]}"
            key = key.replace("{i}", f"{{{span}}}")
        out.append(key)
    return out


def merge_lora(model: nn.Module) -> None:
    for module in lora_modules(model).values():
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    for module in lora_modules(model).values():
        module.unmerge()


def delta_weights(model: nn.Module, name: str | None = None) -> dict[str, torch.Tensor]:
    """Module name → ΔW = scale · B A (out × in) for every LoRA layer of the model: of the active adapter(s) (their
    sum, where several are active), or of the adapter ``name``."""
    modules = lora_modules(model)
    if name is None:
        return {module_name: m.delta_weight() for module_name, m in modules.items() if m.active_adapters}
    if modules:
        adapter_set(model).check_known(name, "delta_weights")
    return {module_name: m.delta_weight(name) for module_name, m in modules.items() if name in m.adapter_names}


def weight_deltas(
    base_state_dict: Mapping[str, torch.Tensor],
    tuned_state_dict: Mapping[str, torch.Tensor],
    names: Iterable[str],
    fan_in_fan_out: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Module name → ΔW = W_ft − W₀ (out × in) for a full fine-tune, the same shape of answer as ``delta_weights``.
    The modules in ``fan_in_fan_out`` store W as in × out (GPT-2's ``Conv1D``: ``fan_in_fan_out_modules``), and
    their ΔW is transposed to out × in."""
    transposed = set(fan_in_fan_out)
    deltas = {}
    for name in names:
        key = f"{name}.weight"
        if key not in base_state_dict or key not in tuned_state_dict:
            missing = "base" if key not in base_state_dict else "tuned"
            raise LoRAError(f"weight_deltas: {key!r} is not in the {missing} state dict")
        base, tuned = base_state_dict[key], tuned_state_dict[key]
        if base.shape != tuned.shape:
            raise LoRAError(f"weight_deltas: {key!r} has shape {tuple(base.shape)} in base, {tuple(tuned.shape)} tuned")
        delta = tuned.detach().float() - base.detach().float()
        deltas[name] = delta.t().contiguous() if name in transposed else delta
    return deltas


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts. LoRA adds 2·r·d parameters per adapted d × d matrix."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def count_lora_parameters(model: nn.Module) -> int:
    """Parameters in the active adapters' LoRA factors and DoRA magnitudes (the paper's "# Trainable Parameters": the
    task head not counted). With ``freeze_a`` A is counted too, as the adapter stores it; ``count_method_parameters``
    counts what trains."""
    return sum(
        slot.lora_A.numel() + slot.lora_B.numel() + (slot.magnitude.numel() if isinstance(m, DoRALinear) else 0)
        for m in lora_modules(model).values()
        for slot in m.active_slots()
    )


def count_method_parameters(model: nn.Module, head: Iterable[str] = ("classifier",)) -> int:
    """Parameters that train outside the ``head`` modules: what a method trains, counted as the paper's
    "# Trainable Parameters" (Hu et al. 2021, Table 2), whichever method froze the model: LoRA's factors (B alone
    under LoRA-FA), DoRA's factors and magnitudes, adapters, BitFit's biases."""
    head = tuple(head)
    return sum(
        p.numel()
        for name, module in model.named_modules()
        if not matches_any_prefix(name, head)
        for p in module.parameters(recurse=False)
        if p.requires_grad
    )


def lora_parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters, by role: ``{"A": [...], "B": [...], "magnitude": [...], "other": [...]}``.

    Roles are read from the LoRA layers' types, not from names, so LoRA+ (Hayou et al. 2024: B's learning rate λ
    times A's) is one optimizer group per key. Frozen parameters (A under LoRA-FA) are left out; "other" is the
    rest that trains, e.g. the task head.
    """
    groups: dict[str, list[nn.Parameter]] = {"A": [], "B": [], "magnitude": [], "other": []}
    role = {}
    for module in lora_modules(model).values():
        for slot in map(module.slot, module.adapter_names):
            role[id(slot.lora_A)], role[id(slot.lora_B)] = "A", "B"
            if isinstance(module, DoRALinear):
                role[id(slot.magnitude)] = "magnitude"
    for param in model.parameters():
        if param.requires_grad:
            groups[role.get(id(param), "other")].append(param)
    return groups
