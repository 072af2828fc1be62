"""A model's adapter to and from disk in HF PEFT's format (``lorakit.peft_format``).

The trained head is saved the way PEFT saves ``modules_to_save``. A PiSSA model is saved as the plain LoRA of rank 2r
that applies its update to the unmodified pretrained W (``PiSSALinear.as_plain_lora``, PEFT's
``path_initial_model_for_weight_conversion``). An adapter written here loads with ``peft.PeftModel.from_pretrained``
and one written by PEFT loads here.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .adapters import add_adapter
from .config import LoRAConfig, LoRAError
from .dora import DoRALinear
from .files import save_tensors, write_json
from .inject import inject_lora, layer_kind, linear_module_names, lora_modules
from .layers import LoRALinear
from .linear import features, is_conv1d, is_linear
from .peft_format import A_KEY, B_KEY, CONFIG_NAME, MAGNITUDE_KEY, PREFIX, WEIGHTS_NAME, Adapter, read_adapter
from .pissa import PiSSALinear
from .registry import DEFAULT_NAME, AdapterSet, adapter_set, check_name, claim_head, head_values

# PEFT's task_type from the model class's name (lorakit does not import transformers); None for a bare model.
_TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForCausalLM": "CAUSAL_LM", "LMHeadModel": "CAUSAL_LM",
               "ForTokenClassification": "TOKEN_CLS", "ForQuestionAnswering": "QUESTION_ANS"}


def save_adapter(
    model: nn.Module, path: str | os.PathLike, base_model_name_or_path: str | None = None, name: str | None = None
) -> Path:
    """Write adapters with their trained heads, atomically per file: the adapter ``name`` into the folder ``path``,
    or, without a name, every adapter of the model in PEFT's multi-adapter layout — "default" in ``path`` itself,
    each other adapter in ``path/<name>`` (a model with one adapter, "default", is the folder of one adapter). A
    PiSSA model is written as the plain LoRA of rank 2r that loads on the unmodified pretrained model."""
    if not lora_modules(model):
        raise LoRAError("save_adapter: the model has no LoRA layers; call inject_lora first")
    record, path = adapter_set(model), Path(path)
    if name is not None:
        record.check_known(name, "save_adapter")
        return _save_one(model, record, path, name, base_model_name_or_path)
    for adapter in record.names():
        _save_one(model, record, path if adapter == DEFAULT_NAME else path / adapter, adapter, base_model_name_or_path)
    return path


def _save_one(model: nn.Module, record: AdapterSet, path: Path, name: str, base_model_name_or_path: str | None) -> Path:
    modules = {n: m for n, m in lora_modules(model).items() if name in m.adapter_names}
    kinds = {layer_kind(m) for m in modules.values()}
    if len(kinds) > 1:
        raise LoRAError(f"save_adapter: the model mixes {' and '.join(sorted(kinds))} layers; PEFT's format holds one")
    config: LoRAConfig | None = record.configs.get(name)

    tensors, shapes = {}, {}
    for module_name, module in modules.items():
        slot = module.slot(name)
        if isinstance(module, PiSSALinear):
            A, B, r, alpha = module.as_plain_lora()
        else:
            A, B, r, alpha = slot.lora_A.detach(), slot.lora_B.detach(), slot.r, slot.alpha
        shapes[module_name] = (r, alpha, slot.rslora)
        tensors[PREFIX + module_name + A_KEY] = A
        tensors[PREFIX + module_name + B_KEY] = B
        if isinstance(module, DoRALinear):
            tensors[PREFIX + module_name + MAGNITUDE_KEY] = slot.magnitude.detach()
    if len({rslora for _, _, rslora in shapes.values()}) > 1:
        raise LoRAError("save_adapter: LoRA layers differ in rslora; PEFT's format has one use_rslora flag")
    (r, rank_pattern), (alpha, alpha_pattern) = (_default_and_pattern({n: s[i] for n, s in shapes.items()})
                                                 for i in (0, 1))
    rslora, first = next(iter(shapes.values()))[2], next(iter(modules.values()))
    tensors.update({PREFIX + key: value for key, value in head_values(model, record, name).items()})
    modules_to_save = list(config.trainable) if config and record.head_keys.get(name) else []

    name_or_path = base_model_name_or_path or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    dropout = first.slot(name).dropout
    # PEFT's init_lora_weights: "gaussian", or True for Kaiming A and for a converted PiSSA (PEFT writes True then).
    init = config.init if config else "gaussian"
    peft_config = {
        "peft_type": "LORA",
        "task_type": task_type(model),
        "base_model_name_or_path": str(name_or_path) if name_or_path else None,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        "use_rslora": rslora,
        "use_dora": isinstance(first, DoRALinear),
        "init_lora_weights": "gaussian" if init == "gaussian" else True,
        "target_modules": sorted(modules),
        "modules_to_save": modules_to_save or None,
        "bias": "none",
        # PEFT's flag for GPT-2's Conv1D (W stored in × out); A and B have the same shapes either way.
        "fan_in_fan_out": any(m.fan_in_fan_out for m in modules.values()),
        "inference_mode": True,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
    }
    metadata = {"format": "pt", "lorakit_model_class": type(model).__name__}
    if isinstance(first, PiSSALinear):
        metadata["lorakit_pissa_rank"] = str(first.r)  # r' = 2r on disk: [A; A0], [B, -B0]
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS_NAME, tensors, metadata)
    write_json(path / CONFIG_NAME, peft_config)
    return path


def _default_and_pattern(values: dict[str, float]) -> tuple[float, dict[str, float]]:
    """(the value most modules hold, {pattern: value} for the others): PEFT's r (lora_alpha) and rank_pattern
    (alpha_pattern). Each pattern is the module's full name, escaped and anchored, so under PEFT's rule
    (``config.pattern_key``) it matches that module alone, whatever patterns built the model."""
    counts = Counter(values.values())
    default = max(counts, key=lambda v: (counts[v], -list(values.values()).index(v)))  # ties: the first module's
    return default, {"^" + re.escape(name): value for name, value in values.items() if value != default}


def task_type(model: nn.Module) -> str | None:
    """PEFT's ``task_type`` for a transformers model class: SEQ_CLS, CAUSAL_LM (``*ForCausalLM``, GPT-2's
    ``*LMHeadModel``), TOKEN_CLS, QUESTION_ANS, or None."""
    model_class = type(model).__name__
    return next((kind for suffix, kind in _TASK_TYPES.items() if model_class.endswith(suffix)), None)


def load_adapter(model: nn.Module, path: str | os.PathLike, head: bool = True, name: str = DEFAULT_NAME) -> list[str]:
    """Load an adapter into ``model`` as adapter ``name``, injecting LoRA first when the model has none. Returns the
    adapted names.

    ``path`` is an adapter folder, or a folder in PEFT's multi-adapter layout whose subfolder ``name`` is one. Into a
    model that holds an adapter ``name`` already, the factors are loaded in place (same modules and rank); a new
    name adds an adapter, inactive until ``set_adapter`` (``lorakit.adapters``). ``head=False`` loads the LoRA factors
    alone and leaves the model's own head (and other saved modules) as they are: how one task starts from another
    task's adapter (the paper's MRPC, RTE and STS-B from MNLI). Refuses, with one line naming the module, an adapter
    whose modules or shapes do not exist in this model, and one of another kind (plain LoRA, DoRA, PiSSA) than the
    LoRA layers the model already has; a refused load changes nothing.
    """
    check_name(name)
    path = _adapter_folder(Path(path), name)
    adapter = read_adapter(path)
    if not head:
        adapter = replace(adapter, extra={})
    _check_fits(model, adapter, path)
    if not lora_modules(model):
        inject_lora(model, _config(adapter, tuple(adapter.config.get("modules_to_save") or ())), name)
    elif name not in adapter_set(model).configs:
        if adapter.kind == "PiSSA":
            raise LoRAError(f"adapter at {path} is PEFT's unconverted PiSSA adapter, which rewrites W: load it into a "
                            f"model without LoRA")
        trainable = tuple(adapter.config.get("modules_to_save") or ()) if adapter.extra else ()
        add_adapter(model, name, _config(adapter, trainable), adapter.factors, adapter.magnitudes, adapter.extra)
        return sorted(adapter.factors)
    else:
        _check_replaces(model, adapter, path, name)
    modules = lora_modules(model)
    with torch.no_grad():
        for module_name, (A, B) in adapter.factors.items():
            module = modules[module_name]
            module.unmerge()
            slot = module.slot(name)
            slot.lora_A.copy_(A)
            slot.lora_B.copy_(B)
            if module_name in adapter.magnitudes:
                slot.magnitude.copy_(adapter.magnitudes[module_name])
    claim_head(model, adapter_set(model), name, tuple(adapter.extra), adapter.extra)
    return sorted(adapter.factors)


def _config(adapter: Adapter, trainable: tuple[str, ...]) -> LoRAConfig:
    """The ``LoRAConfig`` that rebuilds ``adapter``."""
    init = adapter.config.get("init_lora_weights")
    return LoRAConfig(
        r=adapter.r,
        alpha=float(adapter.config["lora_alpha"]),
        dropout=float(adapter.config.get("lora_dropout") or 0.0),
        targets=tuple(adapter.factors),
        init=init if init in ("gaussian", "pissa") else "kaiming",
        rslora=bool(adapter.config.get("use_rslora") or False),
        trainable=trainable,
        use_dora=adapter.kind == "DoRA",
        rank_pattern=adapter.config.get("rank_pattern") or {},
        alpha_pattern=adapter.config.get("alpha_pattern") or {},
    )


def _adapter_folder(path: Path, name: str) -> Path:
    """``path``, or ``path/name`` in PEFT's multi-adapter layout (adapters other than "default" in subfolders)."""
    if name != DEFAULT_NAME and (path / name / CONFIG_NAME).is_file():
        return path / name
    if not (path / CONFIG_NAME).is_file() and path.is_dir():
        held = sorted(sub.name for sub in path.iterdir() if (sub / CONFIG_NAME).is_file())
        if held:
            raise LoRAError(f"no adapter {name!r} at {path}: the folder holds adapters in subfolders {held} "
                            f"(PEFT's multi-adapter layout); load one with name=<subfolder>")
    return path


def _check_replaces(model: nn.Module, adapter: Adapter, path: Path, name: str) -> None:
    """An adapter loaded in place of the model's adapter ``name`` must be of its kind, modules and rank."""
    existing = {n: m for n, m in lora_modules(model).items() if name in m.adapter_names}
    kinds = {layer_kind(m) for m in existing.values()}
    if kinds != {adapter.kind}:
        raise LoRAError(
            f"adapter at {path} is a {adapter.kind} adapter, the model's LoRA layers are {'/'.join(sorted(kinds))}"
            f"; load it into a model without LoRA, or one injected for {adapter.kind}"
        )
    if set(existing) != set(adapter.factors):
        raise LoRAError(
            f"adapter at {path} adapts {len(adapter.factors)} modules, the model's LoRA layers are "
            f"{len(existing)} others; load it into a model without LoRA, or under another name"
        )
    mismatched = [n for n, m in existing.items()
                  if m.slot(name).r != adapter.factors[n][0].shape[0] or m.slot(name).scale != adapter.scale_of(n)]
    if mismatched:
        n = mismatched[0]
        raise LoRAError(f"adapter at {path} has r={adapter.factors[n][0].shape[0]}, the model's LoRA layer {n} differs "
                        f"(adapter: scale {adapter.scale_of(n):g}; layer: r={existing[n].slot(name).r}, scale "
                        f"{existing[n].slot(name).scale:g})")


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
