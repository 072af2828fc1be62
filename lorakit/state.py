"""A model's adapter to and from disk in HF PEFT's format (``lorakit.peft_format``).

The trained head is saved the way PEFT saves ``modules_to_save``. A PiSSA model is saved as the plain LoRA of rank 2r
that applies its update to the unmodified pretrained W (``PiSSALinear.as_plain_lora``, PEFT's
``path_initial_model_for_weight_conversion``). An adapter written here loads with ``peft.PeftModel.from_pretrained``
and one written by PEFT loads here.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .config import LoRAConfig, LoRAError
from .dora import DoRALinear
from .files import atomic_write, save_tensors, write_json  # noqa: F401  (atomic_write: its former home)
from .inject import inject_lora, linear_module_names, lora_modules, matches
from .layers import LoRALinear
from .linear import features, is_conv1d, is_linear
from .peft_format import A_KEY, B_KEY, CONFIG_NAME, MAGNITUDE_KEY, PREFIX, WEIGHTS_NAME, Adapter, read_adapter
from .pissa import PiSSALinear

# PEFT's task_type from the model class's name (lorakit does not import transformers); None for a bare model.
_TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM",
               "ForTokenClassification": "TOKEN_CLS", "ForQuestionAnswering": "QUESTION_ANS"}


def save_adapter(model: nn.Module, path: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA factors (DoRA: and magnitudes) and trainable head to ``path`` (a folder), atomically
    per file. A PiSSA model is written as the plain LoRA of rank 2r that loads on the unmodified pretrained model."""
    modules = lora_modules(model)
    if not modules:
        raise LoRAError("save_adapter: the model has no LoRA layers; call inject_lora first")
    kinds = {layer_kind(m) for m in modules.values()}
    if len(kinds) > 1:
        raise LoRAError(f"save_adapter: the model mixes {' and '.join(sorted(kinds))} layers; PEFT's format holds one")
    config: LoRAConfig | None = getattr(model, "lora_config", None)

    tensors, shapes = {}, set()
    for name, module in modules.items():
        if isinstance(module, PiSSALinear):
            A, B, r, alpha = module.as_plain_lora()
        else:
            A, B, r, alpha = module.lora_A.detach(), module.lora_B.detach(), module.r, module.alpha
        shapes.add((r, alpha, module.rslora))
        tensors[PREFIX + name + A_KEY] = A.contiguous().cpu()
        tensors[PREFIX + name + B_KEY] = B.contiguous().cpu()
        if isinstance(module, DoRALinear):
            tensors[PREFIX + name + MAGNITUDE_KEY] = module.magnitude.detach().contiguous().cpu()
    if len(shapes) > 1:
        raise LoRAError("save_adapter: LoRA layers differ in r, alpha or rslora; PEFT's format needs one of each")
    (r, alpha, rslora), first = shapes.pop(), next(iter(modules.values()))
    modules_to_save = list(config.trainable) if config else []
    for name, module in model.named_modules():
        if modules_to_save and matches(name, modules_to_save):
            for param_name, param in module.named_parameters():
                tensors[f"{PREFIX}{name}.{param_name}"] = param.detach().contiguous().cpu()

    name_or_path = base_model_name_or_path or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    # PEFT's init_lora_weights: "gaussian", or True for Kaiming A and for a converted PiSSA (PEFT writes True then).
    init = config.init if config else "gaussian"
    peft_config = {
        "peft_type": "LORA",
        "task_type": task_type(model),
        "base_model_name_or_path": str(name_or_path) if name_or_path else None,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "use_rslora": rslora,
        "use_dora": isinstance(first, DoRALinear),
        "init_lora_weights": "gaussian" if init == "gaussian" else True,
        "target_modules": sorted(modules),
        "modules_to_save": modules_to_save or None,
        "bias": "none",
        # PEFT's flag for GPT-2's Conv1D (W stored in × out); A and B have the same shapes either way.
        "fan_in_fan_out": any(m.fan_in_fan_out for m in modules.values()),
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    metadata = {"format": "pt", "lorakit_model_class": type(model).__name__}
    if isinstance(first, PiSSALinear):
        metadata["lorakit_pissa_rank"] = str(first.r)  # r' = 2r on disk: [A; A0], [B, -B0]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS_NAME, tensors, metadata)
    write_json(path / CONFIG_NAME, peft_config)
    return path


def task_type(model: nn.Module) -> str | None:
    """PEFT's ``task_type`` for a transformers model class: SEQ_CLS, CAUSAL_LM (``*ForCausalLM``, GPT-2's
    ``*LMHeadModel``), TOKEN_CLS, QUESTION_ANS, or None."""
    name = type(model).__name__
    return next((kind for suffix, kind in _TASK_TYPES.items() if name.endswith(suffix)), None)


def layer_kind(module: LoRALinear) -> str:
    """"DoRA", "PiSSA" or "plain LoRA": the names used in messages, read from the layer's type."""
    if isinstance(module, DoRALinear):
        return "DoRA"
    return "PiSSA" if isinstance(module, PiSSALinear) else "plain LoRA"


def load_adapter(model: nn.Module, path: str | os.PathLike, head: bool = True) -> list[str]:
    """Load an adapter into ``model``, injecting LoRA first when the model has none. Returns the adapted names.

    ``head=False`` loads the LoRA factors alone and leaves the model's own head (and other saved modules) as they
    are: how one task starts from another task's adapter (the paper's MRPC, RTE and STS-B from MNLI).
    Refuses, with one line naming the module, an adapter whose modules or shapes do not exist in this model, and
    one of another kind (plain LoRA, DoRA, PiSSA) than the LoRA layers the model already has.
    """
    adapter = read_adapter(path)
    if not head:
        adapter = replace(adapter, extra={})
    _check_fits(model, adapter, path)
    existing = lora_modules(model)
    if existing:
        kinds = {layer_kind(m) for m in existing.values()}
        if kinds != {adapter.kind}:
            raise LoRAError(
                f"adapter at {path} is a {adapter.kind} adapter, the model's LoRA layers are {'/'.join(sorted(kinds))}"
                f"; load it into a model without LoRA, or one injected for {adapter.kind}"
            )
        if set(existing) != set(adapter.factors):
            raise LoRAError(
                f"adapter at {path} adapts {len(adapter.factors)} modules, the model's LoRA layers are "
                f"{len(existing)} others; load it into a model without LoRA"
            )
        mismatched = [n for n, m in existing.items() if m.r != adapter.r or m.scale != adapter.scale]
        if mismatched:
            raise LoRAError(f"adapter at {path} has r={adapter.r}, the model's LoRA layer {mismatched[0]} differs")
    else:
        init = adapter.config.get("init_lora_weights")
        init = init if init in ("gaussian", "pissa") else "kaiming"
        config = LoRAConfig(
            r=adapter.r,
            alpha=float(adapter.config["lora_alpha"]),
            dropout=float(adapter.config.get("lora_dropout") or 0.0),
            targets=tuple(adapter.factors),
            init=init,
            rslora=bool(adapter.config.get("use_rslora", False)),
            trainable=tuple(adapter.config.get("modules_to_save") or ()),
            use_dora=adapter.kind == "DoRA",
        )
        inject_lora(model, config)
        model.lora_config = config
    modules = lora_modules(model)
    with torch.no_grad():
        for name, (A, B) in adapter.factors.items():
            module = modules[name]
            if module.merged:
                module.unmerge()
            module.lora_A.copy_(A)
            module.lora_B.copy_(B)
            if name in adapter.magnitudes:
                module.magnitude.copy_(adapter.magnitudes[name])
        parameters = dict(model.named_parameters())
        for key, tensor in adapter.extra.items():
            parameters[key].copy_(tensor)
    return sorted(adapter.factors)


def _check_fits(model: nn.Module, adapter: Adapter, path) -> None:
    named = dict(model.named_modules())
    for name, (A, B) in adapter.factors.items():
        module = named.get(name)
        if module is None or not (is_linear(module) or isinstance(module, LoRALinear)):
            linears = linear_module_names(model, include_head=True)
            raise LoRAError(
                f"adapter at {path} was saved for another model: it adapts {name!r}, which this "
                f"{type(model).__name__} does not have (its Linear modules start with {linears[:3]})"
            )
        in_features, out_features = features(module) if is_linear(module) else (module.in_features, module.out_features)
        if (out_features, in_features) != (B.shape[0], A.shape[1]):
            raise LoRAError(
                f"adapter at {path} was saved for another model: {name} is {B.shape[0]}x{A.shape[1]} in the adapter, "
                f"{out_features}x{in_features} in this {type(model).__name__}"
            )
        magnitude = adapter.magnitudes.get(name)
        if magnitude is not None and tuple(magnitude.shape) != (out_features,):
            raise LoRAError(
                f"adapter at {path}: {name}{MAGNITUDE_KEY} has shape {tuple(magnitude.shape)}, expected ({B.shape[0]},)"
            )
    _check_fan_in_fan_out(model, adapter, path)
    parameters = dict(model.named_parameters())
    for key, tensor in adapter.extra.items():
        if key not in parameters:
            raise LoRAError(f"adapter at {path} was saved for another model: this model has no parameter {key!r}")
        if parameters[key].shape != tensor.shape:
            raise LoRAError(
                f"adapter at {path} was saved for another model: {key} is {tuple(tensor.shape)} in the adapter, "
                f"{tuple(parameters[key].shape)} here (e.g. a head with another number of labels)"
            )


def _check_fan_in_fan_out(model: nn.Module, adapter: Adapter, path) -> None:
    """PEFT's ``fan_in_fan_out`` says the adapted layers store W as in × out (GPT-2's Conv1D). A and B have the same
    shapes either way, so the flag only tells which model the adapter was made for: when all its layers are of one
    kind, the flag must say that kind (an adapter over both kinds cannot, and is taken as it is)."""
    stored = {name: is_conv1d(m) or (isinstance(m, LoRALinear) and m.fan_in_fan_out)
              for name, m in model.named_modules() if name in adapter.factors}
    flag = bool(adapter.config.get("fan_in_fan_out", False))
    if len(set(stored.values())) == 1 and flag != next(iter(stored.values())):
        name = next(iter(stored))
        kind = "GPT-2's Conv1D (weight stored in x out)" if stored[name] else "an nn.Linear (weight stored out x in)"
        raise LoRAError(
            f"adapter at {path} has fan_in_fan_out={str(flag).lower()}, but {name} is {kind} in this "
            f"{type(model).__name__}: it was saved for another model; "
            f"accepted: fan_in_fan_out true for Conv1D layers, false for nn.Linear"
        )
