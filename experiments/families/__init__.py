"""What a run's task asks the model to produce: a label per input (GLUE: sequence classification on an encoder) or a
text (E2E NLG: a causal LM trained on the completion and scored on what it generates).

A family owns what differs between the two — the model class it loads, the data it reads and batches, and how an
epoch is evaluated — so ``train(cfg)`` runs either without asking which. The task file and the model file each name
their family (``family: causal_lm``); files without the key are ``sequence_classification``, the GLUE tasks and the
encoders, whose runs keep the identity they had before the key existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from experiments.config import ConfigError

DEFAULT = "sequence_classification"


class Evaluation(Protocol):
    """An epoch's evaluation: ``(metrics, predictions)``; the predictions feed ``flags`` and ``save``."""

    def __call__(self, model: nn.Module, device: torch.device, autocast) -> tuple[dict[str, float], Any]: ...

    def flags(self, predictions: Any) -> list[str]: ...

    def save(self, predictions: Any, out_dir) -> None: ...


@dataclass
class RunData:
    train: DataLoader  # the training batches, in the seed's order
    evaluation: Evaluation
    counts: dict[str, int]  # examples per split, for metrics.json
    source: str  # where the data came from: a folder or ``hub:<id>``


class Family:
    name: ClassVar[str]

    def check(self, cfg: DictConfig) -> None:
        """Checks of the run's config that only this family needs; raise ConfigError."""

    def load_tokenizer(self, cfg: DictConfig, path: str): ...

    def load_model(self, cfg: DictConfig, path: str) -> nn.Module: ...

    def data(self, cfg: DictConfig, tokenizer) -> RunData: ...


def family_of(node: DictConfig) -> str:
    """The family a task or model file names (``family:``); absent: sequence classification."""
    return node.get("family") or DEFAULT


def _families() -> dict[str, Callable[[], Family]]:
    from experiments.families.causal_lm import CausalLM
    from experiments.families.classification import SequenceClassification

    return {f.name: f for f in (SequenceClassification, CausalLM)}


def for_run(cfg: DictConfig) -> Family:
    """The run's family; one line when the task and the model are of different families, or a family is unknown."""
    known = _families()
    task, model = family_of(cfg.task), family_of(cfg.model)
    for what, name in (("task", task), ("model", model)):
        if name not in known:
            raise ConfigError(f"{what}.family={name!r} is not known; known: {', '.join(known)}")
    if task != model:
        suggestion = "a decoder such as model=smollm2" if task == "causal_lm" else "an encoder such as model=minilm"
        raise ConfigError(f"task={cfg.task.name} is a {task} task but model={cfg.model.name} is a {model} model; "
                          f"use {suggestion}")
    return known[task]()
