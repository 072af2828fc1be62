"""Sequence classification (GLUE): a new head of ``task.num_labels`` outputs on a pretrained encoder, scored on the
dev split(s) with the task's GLUE metrics (experiments/metrics.py)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from experiments import models
from experiments.errors import ConfigError
from experiments.data import eval_loader, load_tokenized, train_loader
from experiments.families.base import Family, RunData
from experiments.metrics import glue_metrics

Predictions = dict[str, tuple[np.ndarray, np.ndarray, float]]  # split → (outputs, labels, mean loss)


class SequenceClassification(Family):
    name: ClassVar[str] = "sequence_classification"

    def check(self, cfg: DictConfig) -> None:
        data_dir = cfg.execution.data_dir
        if data_dir is not None and not Path(data_dir).is_dir():
            raise ConfigError(
                f"data folder {data_dir} does not exist; expected <dir>/<task>/train.parquet and validation.parquet "
                f"(the layout of ../shared/glue); set it with execution.data_dir=... or the GLUE_DIR environment variable"
            )

    def load_tokenizer(self, cfg: DictConfig, path: str):
        return models.load_tokenizer(path)

    def load_model(self, cfg: DictConfig, path: str) -> nn.Module:
        return models.load_model(path, cfg.task.num_labels)

    def data(self, cfg: DictConfig, tokenizer) -> RunData:
        task, hp = cfg.task, cfg.train
        splits, source = load_tokenized(cfg, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = train_loader(splits[task.train_split], hp.batch_size, pad_id, cfg.seed, hp.group_by_length)
        loaders = {split: eval_loader(splits[split], 2 * hp.batch_size, pad_id) for split in task.eval_splits}
        return RunData(batches, Dev(loaders, task), {f"{s}_examples": len(splits[s]) for s in splits}, source)


class Dev:
    """Loss and the task's GLUE metrics on every eval split (MNLI's mismatched one with suffix ``_mm``)."""

    def __init__(self, loaders: dict, task: DictConfig) -> None:
        self.loaders, self.task = loaders, task

    def __call__(self, model: nn.Module, device: torch.device, autocast) -> tuple[dict[str, float], Predictions]:
        predictions = predict(model, self.loaders, device, autocast)
        return score(predictions, self.task), predictions

    def flags(self, predictions: Predictions) -> list[str]:
        """A run that learned nothing looks complete unless said: one line per eval split whose predictions are
        constant (one class for every example, or a regression with no spread)."""
        flags = []
        for split, (outputs, _, _) in predictions.items():
            if self.task.num_labels == 1:
                constant = outputs.reshape(-1).std() < 1e-6
            else:
                constant = len(np.unique(outputs.argmax(-1))) == 1
            if constant:
                flags.append(f"constant predictions on {split}: the model predicts the same output for every example")
        return flags

    def save(self, predictions: Predictions, out_dir) -> None:
        """The dev predictions are not kept: metrics.json holds their scores."""


def score(predictions: Predictions, task: DictConfig) -> dict[str, float]:
    results = {}
    for split, (outputs, labels, loss) in predictions.items():
        suffix = task.eval_splits[split]
        results[f"eval_loss{suffix}"] = loss
        results.update(glue_metrics(task.metrics, outputs, labels, suffix=suffix))
    return results


@torch.no_grad()
def predict(model: nn.Module, loaders: dict, device: torch.device, autocast) -> Predictions:
    """Per eval split: the model's outputs, the labels and the mean loss."""
    model.eval()
    out = {}
    for split, loader in loaders.items():
        outputs, labels, loss_sum = [], [], 0.0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                result = model(**batch)
            loss_sum += result.loss.item() * len(batch["labels"])
            outputs.append(result.logits.float().cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
        outputs, labels = np.concatenate(outputs), np.concatenate(labels)
        out[split] = (outputs, labels, loss_sum / len(labels))
    return out
