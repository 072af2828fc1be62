"""A run's dev set, rebuilt from its ``config.yaml``, and the task's metric of a model on it.

For the analyses that evaluate a model rather than read files (the interpolation between two tasks' adapters): the
same splits, subset, max length and metric as the run's own evaluation (``experiments.data.load_tokenized``,
``experiments.families.classification.Dev``), so a run's adapter scores here what its metrics.json says.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from .folders import RunError

_NEEDED = ("task", "train", "data", "execution")


@dataclass
class DevSet:
    """The eval splits of one task as the run built them: ``score(model)`` is the task's primary metric (``metric``,
    on the first eval split: MNLI's matched) of ``model`` on the CPU."""

    task: str
    metric: str
    num_labels: int
    loaders: dict
    task_config: object

    def score(self, model: torch.nn.Module) -> float:
        from experiments.families.classification import Dev

        scores, _ = Dev(self.loaders, self.task_config)(model, torch.device("cpu"), nullcontext())
        return float(scores[self.metric])


def _data_dir(recorded: str | None, data_dir: str | os.PathLike | None) -> str | None:
    """``data_dir`` when given, else the folder the run read when it is still there, else the sweep's default
    (../shared/glue beside the repository)."""
    if data_dir is not None:
        return str(data_dir)
    if recorded and Path(recorded).is_dir():
        return str(recorded)
    from experiments.config import _default_data_dir

    return _default_data_dir("glue")


def dev_set(run_dir: str | os.PathLike, tokenizer, data_dir: str | os.PathLike | None = None) -> DevSet:
    """The dev set of the run at ``run_dir`` from its resolved ``config.yaml``; ``data_dir`` overrides where the GLUE
    folders are (default: where the run read them, else ../shared/glue). Raises ``RunError`` naming what is missing."""
    from omegaconf import OmegaConf

    from experiments.errors import ConfigError
    from experiments.data import eval_loader, load_tokenized

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: no config.yaml; the dev set is rebuilt from the run's resolved config")
    cfg = OmegaConf.load(path)
    absent = [key for key in _NEEDED if key not in cfg]
    if absent:
        raise RunError(f"{path} lacks {absent}; the dev set is rebuilt from the resolved config a sweep writes "
                       f"(with {', '.join(_NEEDED)})")  # fmt: skip
    cfg.execution.data_dir = _data_dir(cfg.execution.get("data_dir"), data_dir)
    try:
        splits, _ = load_tokenized(cfg, tokenizer)
    except ConfigError as err:  # DataError: the GLUE folder is not where it was, and the hub is offline
        raise RunError(f"cannot rebuild the {cfg.task.name} dev set of {Path(run_dir).name}: {err} "
                       f"(--data-dir points at the GLUE folders)") from None  # fmt: skip
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loaders = {split: eval_loader(splits[split], 2 * cfg.train.batch_size, pad_id) for split in cfg.task.eval_splits}
    return DevSet(str(cfg.task.name), str(cfg.task.metric), int(cfg.task.num_labels), loaders, cfg.task)
