"""Sequence classification (GLUE): a new head of ``task.num_labels`` outputs on a pretrained encoder, scored on the
dev split(s) with the task's GLUE metrics (experiments/metrics.py), and on the selection slice held out of the
training split where ``data.selection_examples`` > 0 (its metrics with the suffix ``_selection``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from experiments import models
from experiments.errors import ConfigError
from experiments.data import SELECTION, SELECTION_SUFFIX, eval_loader, load_tokenized, train_loader
from experiments.families.base import Family, RunData
from experiments.metrics import glue_metrics
from lorakit.files import atomic_path

Predictions = dict[str, tuple[np.ndarray, np.ndarray, float]]  # split → (outputs, labels, mean loss), example order
PREDICTIONS = "predictions.npz"  # the reported epoch's per-example outputs (docs/CONTRACTS.md)


class SequenceClassification(Family):
    name: ClassVar[str] = "sequence_classification"

    def check(self, cfg: DictConfig) -> None:
        data_dir = cfg.execution.data_dir
        if data_dir is not None and not Path(data_dir).is_dir():
            raise ConfigError(
                f"data folder {data_dir} does not exist; expected <dir>/<task>/train.parquet and validation.parquet "
                f"(the layout of ../shared/glue); set it with execution.data_dir=... or the GLUE_DIR environment variable"
            )
        if cfg.train.select_on == "selection" and not cfg.data.selection_examples:
            raise ConfigError("train.select_on=selection needs a selection slice: set data.selection_examples to the "
                              "number of training examples to hold out (e.g. 500), or use train.select_on=dev")

    def load_tokenizer(self, cfg: DictConfig, path: str):
        return models.load_tokenizer(path)

    def load_model(self, cfg: DictConfig, path: str) -> nn.Module:
        return models.load_model(path, cfg.task.num_labels)

    def data(self, cfg: DictConfig, tokenizer) -> RunData:
        task, hp = cfg.task, cfg.train
        splits, source = load_tokenized(cfg, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = train_loader(splits[task.train_split], hp.batch_size, pad_id, cfg.seed, hp.group_by_length)
        evaluated = [*task.eval_splits, *([SELECTION] if SELECTION in splits else [])]
        loaders = {split: eval_loader(splits[split], 2 * hp.batch_size, pad_id) for split in evaluated}
        return RunData(batches, Dev(loaders, task), {f"{s}_examples": len(splits[s]) for s in splits}, source)


class Dev:
    """Loss and the task's GLUE metrics on every eval split (MNLI's mismatched one with suffix ``_mm``) and on the
    selection slice (suffix ``_selection``) where there is one."""

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
        """``predictions.npz`` (no pickle): per evaluated split ``<split>/outputs`` (n × num_labels float32: logits,
        or the regression score in column 0), ``<split>/labels`` and ``<split>/index`` (the example's position in the
        evaluated split: its row in the split's parquet when ``train.max_eval_samples`` is null, else in the subset
        fixed by ``data.subset_seed``), so two runs are compared example by example (analysis/maths/stats.py)."""
        arrays = {}
        for split, (outputs, labels, _) in predictions.items():
            arrays |= {f"{split}/outputs": outputs.astype(np.float32), f"{split}/labels": labels,
                       f"{split}/index": np.arange(len(labels), dtype=np.int64)}
        with atomic_path(Path(out_dir) / PREDICTIONS) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_predictions(run_dir) -> dict[str, dict[str, np.ndarray]]:
    """A run folder's ``predictions.npz`` as split → {"outputs", "labels", "index"} (read without pickle)."""
    with np.load(Path(run_dir) / PREDICTIONS, allow_pickle=False) as arrays:
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in arrays.files:
            split, field = key.rsplit("/", 1)
            out.setdefault(split, {})[field] = arrays[key]
    return out


def score(predictions: Predictions, task: DictConfig) -> dict[str, float]:
    results = {}
    for split, (outputs, labels, loss) in predictions.items():
        suffix = SELECTION_SUFFIX if split == SELECTION else task.eval_splits[split]
        results[f"eval_loss{suffix}"] = loss
        results.update(glue_metrics(task.metrics, outputs, labels, suffix=suffix))
    return results


@torch.no_grad()
def predict(model: nn.Module, loaders: dict, device: torch.device, autocast) -> Predictions:
    """Per eval split: the model's outputs and the labels in the split's example order (the loader batches by
    length), and the mean loss."""
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
        order = np.concatenate([np.asarray(b, dtype=np.int64) for b in loader.batch_sampler])
        inverse = np.argsort(order, kind="stable")  # row k of the concatenation is example order[k]
        outputs, labels = np.concatenate(outputs)[inverse], np.concatenate(labels)[inverse]
        out[split] = (outputs, labels, loss_sum / len(labels))
    return out
