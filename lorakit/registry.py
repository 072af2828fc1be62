"""Which named adapters a model holds, which are active, and whose task head it shows.

A model's LoRA layers hold the factors (``LoRALinear``); this record, kept as ``model.lora_adapters``, holds the rest:
each adapter's ``LoRAConfig``, the active ones, and the task heads. An adapter may carry a trained head (PEFT's
``modules_to_save``, e.g. a classifier): the model's head Parameters always show the head of the first active adapter
(so switching adapters switches tasks), the other adapters' head values wait here, and an adapter without a head of
its own runs on the model's own head, as it stood before any adapter's head was loaded or trained (PEFT's
``ModulesToSaveWrapper.original_module``). The head Parameters themselves stay where they are, so the base model's
state-dict keys never change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import LoRAConfig, LoRAError

DEFAULT_NAME = "default"  # PEFT's name for an adapter not given one
_NAME = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass
class AdapterSet:
    """``configs`` in the order the adapters arrived; ``active`` with the one whose head is shown first."""

    configs: dict[str, LoRAConfig | None]
    active: tuple[str, ...]
    head_keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # adapter -> parameter names of its head
    heads: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # head values of adapters not in front
    base_head: dict[str, torch.Tensor] = field(default_factory=dict)  # the model's own values of every claimed key

    @property
    def front(self) -> str | None:
        return self.active[0] if self.active else None

    def names(self) -> list[str]:
        return list(self.configs)

    def check_known(self, name: str, action: str) -> None:
        if name not in self.configs:
            raise LoRAError(f"{action}: no adapter named {name!r}; the model's adapters are {self.names()}")


def adapter_set(model: nn.Module) -> AdapterSet:
    """The model's record, made on first use for a model given LoRA layers without ``inject_lora`` (one adapter,
    "default")."""
    record = getattr(model, "lora_adapters", None)
    if record is None:
        config = getattr(model, "lora_config", None)
        record = AdapterSet({DEFAULT_NAME: config}, (DEFAULT_NAME,))
        model.lora_adapters = record
        claim_head(model, record, DEFAULT_NAME, head_parameter_names(model, config.trainable if config else ()))
    return record


def check_name(name) -> str:
    """A usable adapter name: letters, digits, '_' and '-' (it keys a ModuleDict in every layer), not a name that
    ModuleDict already uses."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or hasattr(nn.ModuleDict(), name):
        raise LoRAError(f"adapter name {name!r} is not usable; accepted: a non-empty string of letters, digits, '_' "
                        f"and '-' that is not a ModuleDict attribute (e.g. 'default', 'sst2', 'task-a')")
    return name


def head_parameter_names(model: nn.Module, modules: tuple[str, ...]) -> tuple[str, ...]:
    """The parameter names of the modules matched by ``modules`` (like targets: exact or ending in "." + name)."""
    return tuple(f"{name}.{key}" for name, module in model.named_modules()
                 if name and any(name == m or name.endswith("." + m) for m in modules)
                 for key, _ in module.named_parameters())


@torch.no_grad()
def claim_head(model: nn.Module, record: AdapterSet, name: str, keys, values: dict | None = None) -> None:
    """Record ``keys`` as part of adapter ``name``'s head, with ``values`` (None: the model's current ones). The
    model's own value of a key is kept the first time any adapter claims it; the values go into the model when
    ``name`` is in front, else they wait in the record."""
    for key in keys:
        if key not in record.base_head:
            record.base_head[key] = model.get_parameter(key).detach().clone()
    record.head_keys[name] = tuple(dict.fromkeys((*record.head_keys.get(name, ()), *keys)))
    if not values:
        return
    if name == record.front:
        for key, value in values.items():
            model.get_parameter(key).copy_(value)
    else:
        record.heads.setdefault(name, {}).update({key: value.detach().clone() for key, value in values.items()})


def head_values(model: nn.Module, record: AdapterSet, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s head, from the model when it is in front, else from the record."""
    if name == record.front:
        return {key: model.get_parameter(key).detach() for key in record.head_keys.get(name, ())}
    stored = record.heads.get(name, {})
    return {key: stored.get(key, record.base_head[key]) for key in record.head_keys.get(name, ())}


@torch.no_grad()
def show_head(model: nn.Module, record: AdapterSet, new_front: str | None) -> None:
    """Put ``new_front``'s head values into the model (the model's own for keys it has no head for), keeping the
    current front's (possibly trained) values in the record."""
    old = record.front
    if old == new_front:
        return
    if old is not None and old in record.configs:
        record.heads[old] = {key: model.get_parameter(key).detach().clone() for key in record.head_keys.get(old, ())}
    incoming = record.heads.pop(new_front, {}) if new_front is not None else {}
    own = record.head_keys.get(new_front, ())
    for key, base in record.base_head.items():
        model.get_parameter(key).copy_(incoming.get(key, base) if key in own else base)
