"""Fine-tuning methods: one module and one config file (``conf/method/<name>.yaml``) each.

``train(cfg)`` never asks which method it runs: it asks the method object to prepare the model, for its optimizer
groups, for the parameters the paper counts, for ΔW, and to save what the analyses read. Adding a method is a module
here with a ``@register``-ed ``Method`` subclass and its config file (docs/ADDING_A_METHOD.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import ClassVar, Iterable, Mapping

import torch
from omegaconf import DictConfig
from torch import nn

import lorakit
from experiments.errors import ConfigError
from experiments.accepts import Accepts

_REGISTRY: dict[str, type["Method"]] = {}


def register(cls: type["Method"]) -> type["Method"]:
    _REGISTRY[cls.name] = cls
    return cls


def known_methods() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def get_method(name: str) -> "Method":
    _import_all()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def find_method(name: str) -> "Method | None":
    """The registered method of that name, or None: how a reader of old run folders asks without failing."""
    _import_all()
    return _REGISTRY[name]() if name in _REGISTRY else None


def _import_all() -> None:
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__name__}.{module.name}")


class Method:
    """A fine-tuning method. Subclasses set ``name`` (the config file's stem) and ``accepts`` (their own keys of the
    ``method`` node and the values each accepts), and override what differs from "train the head alone"."""

    name: ClassVar[str]
    title: ClassVar[str] = ""  # how tables name it ("full FT", "LoRA"); the name when empty
    accepts: ClassVar[dict[str, Accepts]] = {}
    has_delta: ClassVar[bool] = False  # whether the run writes ΔW (delta_weights.safetensors) for the analyses
    has_factors: ClassVar[bool] = False  # whether ΔW is s·B·A with factors the run keeps (adapter/, adapter_init/)
    files: ClassVar[tuple[str, ...]] = ()  # the files and folders of its own it writes into the run folder (save)

    def describe(self, method: Mapping) -> dict[str, str]:
        """The parts of the method's configuration a table names it by, key → text (LoRA: ``{"rank": "r=8",
        "targets": "Wq, Wv"}``), from its resolved ``method`` node as a plain mapping (an old run's config.yaml reads
        the same). Default: each of its own keys as ``key=value``. Parts are names, never a grouping: runs are grouped
        by ``config_id`` (experiments/identity.py), and what else varies between runs of one label is named beside it."""
        return {key: f"{key}={_text(method[key])}" for key in self.accepts if key in method}

    def label(self, method: Mapping) -> str:
        """'LoRA (r=8, Wq, Wv)', 'full FT': the title and ``describe``'s parts."""
        return join_label(self.display_title(method), self.describe(method).values())

    def display_title(self, method: Mapping) -> str:
        return self.title or self.name

    @classmethod
    def facts(cls) -> dict:
        """What the analyses need to know about the method, written into each run (``run.facts`` of metrics.json)."""
        return {"has_delta": cls.has_delta, "has_factors": cls.has_factors, "files": list(cls.files)}

    def check(self, cfg: DictConfig) -> None:
        """Checks across keys that ``accepts`` cannot express; raise ConfigError."""

    def prepare(self, model: nn.Module, cfg: DictConfig) -> list[str]:
        """Make the model trainable as the method does, in place; return the modules it adapts (in model order)."""
        kept = lorakit.freeze_except(model, cfg.model.head)
        if not kept:
            children = ", ".join(n for n, _ in model.named_children())
            raise ConfigError(f"model.head={list(cfg.model.head)} matches no module of the model; give module names "
                              f"or suffixes of {children} (e.g. classifier, pooler)")
        return []

    def parameter_groups(self, model: nn.Module, cfg: DictConfig) -> list[dict]:
        """AdamW parameter groups; one group at the method's learning rate unless the method says otherwise."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.method.lr}]

    def method_params(self, model: nn.Module, cfg: DictConfig) -> int:
        """What the method itself trains, the task head left out: the paper's "# Trainable Parameters"."""
        return lorakit.count_method_parameters(model, head=tuple(cfg.model.head))

    def delta_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Module name → ΔW against the pretrained W (fp32), for the analyses; empty when the method has none."""
        return {}

    def factors(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
        """Module name → (A, B, A₀, B₀): the factors of ΔW = s·B·A now and at step 0, for the run monitor's drift
        from init (experiments/monitor.py); empty when ΔW is not made of factors."""
        return {}

    def save(self, model: nn.Module, out_dir: Path, model_path: str) -> None:
        """Write the method's own files into the run folder (beyond ΔW, which train() writes)."""

    def run_info(self, cfg: DictConfig) -> dict:
        """The method's keys for the ``run`` block of metrics.json and the runs table."""
        return {key: cfg.method[key] for key in self.accepts}


def join_label(title: str, parts: Iterable[str]) -> str:
    parts = [p for p in parts if p]
    return f"{title} ({', '.join(parts)})" if parts else title


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
