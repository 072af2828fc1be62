"""What a task family provides (``Family``) and what its data gives a run (``RunData``, ``Evaluation``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader


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
