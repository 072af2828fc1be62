"""Run folders (docs/CONTRACTS.md) into one pandas table, one row per complete run.

A run folder holds ``config.yaml``, ``metrics.json``, ``delta_weights.safetensors`` (every method with a ΔW: LoRA,
DoRA, full fine-tuning), ``adapter/`` and ``adapter_init/`` (LoRA-family methods, PEFT format, after training and at
step 0), and ``COMPLETE``, written last. Folders without ``COMPLETE`` (still running, or ``FAILED``) are skipped with
a message naming them. Keys a run written before a field existed lacks read as missing, never as an error.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd
import yaml

_MARKERS = ("COMPLETE", "FAILED", "metrics.json", "config.yaml")

COLUMNS = (
    "label", "sweep", "name", "task", "family", "method", "model", "model_path", "rank", "alpha", "targets", "seed", "init",
    "rslora", "use_dora", "loraplus_ratio", "freeze_a", "quantize", "adapter_size", "shuffle_labels", "metric", "score",
    "score_last", "best_epoch", "trainable_params", "method_params", "total_params", "forgetting",
    "forgetting_before", "forgetting_after", "forgetting_probe", "adapted_modules", "has_weights", "has_init",
    "has_truncation", "lr", "several_lrs", "train_samples", "epochs", "run_dir",
)  # fmt: skip
CLASSIFICATION = "sequence_classification"  # the task family of GLUE runs; causal_lm: generation (E2E)
# Methods that change the encoder's weight matrices, so have a ΔW; the others (head, bitfit, adapter) do not.
DELTA_METHODS = ("lora", "dora", "full")


class RunError(ValueError):
    """A run folder or sweep that cannot be read as the contract describes."""


class MissingRuns(RunError):
    """The runs an analysis needs are not among those given; the message names what is missing."""


class RunWarning(UserWarning):
    """A run folder skipped because it is incomplete, failed or unreadable."""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


def _is_run_dir(path: Path) -> bool:
    return any((path / m).exists() for m in _MARKERS)


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every run folder at or under ``paths`` (sweep folders, run folders, or folders of sweeps)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise RunError(f"no such sweep or run folder: {p}")
        if not p.is_dir():
            raise RunError(f"not a folder: {p} (pass a sweep folder or a run folder)")
        if _is_run_dir(p):
            found.append(p.resolve())
            continue
        for root, dirs, _ in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(root)
            if here != p and _is_run_dir(here):
                found.append(here.resolve())
                dirs[:] = []  # adapter/ and friends live inside a run folder; nothing to find there
    return sorted(dict.fromkeys(found))


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _read_forgetting(metrics: dict) -> dict:
    block = metrics.get("forgetting")
    if block is None:
        return {"forgetting": math.nan, "forgetting_before": math.nan, "forgetting_after": math.nan,
                "forgetting_probe": None}  # fmt: skip
    if not isinstance(block, dict):
        raise RunError(f"metrics.json forgetting must be a dict (probe, before, after, value), got {block!r}")
    return {"forgetting": _number(block.get("value")), "forgetting_before": _number(block.get("before")),
            "forgetting_after": _number(block.get("after")), "forgetting_probe": block.get("probe")}  # fmt: skip


def read_config(run_dir: str | os.PathLike) -> dict:
    """A run's resolved ``config.yaml`` as a dict; empty when the folder has none."""
    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _from_config(run_dir: Path) -> dict:
    """What only the run's config.yaml holds: the method's learning rate and the training budget (``train_samples``
    None: the whole training split), and the task family of a run written before metrics.json named it (else GLUE
    classification)."""
    config = read_config(run_dir)
    method, train = config.get("method") or {}, config.get("train") or {}
    return {"lr": _number(method.get("lr")), "train_samples": train.get("max_train_samples"),
            "epochs": train.get("epochs"), "family": (config.get("task") or {}).get("family") or CLASSIFICATION}


def _read_run(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = metrics.get("run") or {}
    metric = metrics.get("metric")
    best, last = metrics.get("best") or {}, metrics.get("last") or {}
    method = run.get("method")
    if not isinstance(method, str) or not method:
        raise RunError(f"run.method must name the method (lora, dora, full, head, bitfit, adapter, ...), "
                       f"got {method!r}")
    sweep = run_dir.parent.name
    name = run.get("name") or run_dir.name
    config = _from_config(run_dir)
    return {
        "label": f"{sweep}/{run_dir.name}",
        "sweep": sweep,
        "name": name,
        "task": run.get("task"),
        "family": run.get("family") or config["family"],
        "method": method,
        "model": run.get("model"),
        "model_path": run.get("model_path"),
        **{key: run.get(key) for key in ("rank", "alpha", "targets")},
        "seed": run.get("seed", metrics.get("seed")),
        **{key: run.get(key) for key in ("init", "rslora", "use_dora", "loraplus_ratio", "freeze_a", "quantize",
                                           "adapter_size")},
        "shuffle_labels": bool(run.get("shuffle_labels") or False),
        "metric": metric,
        "score": best.get(metric, math.nan),
        "score_last": last.get(metric, math.nan),
        "best_epoch": best.get("epoch"),
        "trainable_params": metrics.get("trainable_params"),
        # Runs written before method_params existed: a full fine-tune trains everything; LoRA's head is unknown here.
        "method_params": metrics.get("method_params", metrics.get("trainable_params") if method == "full" else None),
        "total_params": metrics.get("total_params"),
        **_read_forgetting(metrics),
        "adapted_modules": list(metrics.get("adapted_modules") or []),
        "has_truncation": bool(metrics.get("truncation")),
        **{key: config[key] for key in ("lr", "train_samples", "epochs")},
        "run_dir": str(run_dir),
    }


def scan_runs(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[Skipped]]:
    """(one row per complete run, the folders skipped and why). Columns: ``COLUMNS``; ``score`` is the task's
    primary metric at the best epoch (``metrics.json["best"][metric]``), as in the paper's Table 2; ``has_weights``
    says whether the run's ΔW is there for the weight analyses (delta_weights.safetensors, or a LoRA adapter/),
    ``has_init`` whether adapter_init/ (the LoRA factors at step 0) is; ``forgetting*`` come from
    ``metrics.json["forgetting"]`` and ``has_truncation`` says whether ``metrics.json["truncation"]`` is there."""
    rows, skipped = [], []
    for run_dir in find_run_dirs(paths):
        if (run_dir / "FAILED").exists():
            try:
                error = json.loads((run_dir / "FAILED").read_text()).get("error", "")
            except (OSError, ValueError):
                error = ""
            skipped.append(Skipped(str(run_dir), f"run failed ({error})" if error else "run failed"))
            continue
        if not (run_dir / "COMPLETE").exists():
            skipped.append(Skipped(str(run_dir), "incomplete (no COMPLETE file)"))
            continue
        try:
            row = _read_run(run_dir)
        except (OSError, ValueError, AttributeError, TypeError) as err:
            skipped.append(Skipped(str(run_dir), f"unreadable metrics.json ({err})"))
            continue
        # LoRA runs written before every method saved delta_weights.safetensors give ΔW through adapter/.
        row["has_weights"] = (run_dir / "delta_weights.safetensors").exists() or (
            row["method"] == "lora" and (run_dir / "adapter").is_dir())
        row["has_init"] = (run_dir / "adapter_init").is_dir()
        if row["method"] in DELTA_METHODS and not row["has_weights"]:
            warnings.warn(f"{row['label']}: no delta_weights.safetensors; usable for metric tables only", RunWarning,
                          stacklevel=2)  # fmt: skip
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("rank", "seed", "best_epoch", "trainable_params", "method_params", "total_params", "adapter_size",
                "train_samples", "epochs"):
        table[col] = pd.array(table[col], dtype="Int64")
    for col in ("has_weights", "has_init", "has_truncation", "shuffle_labels"):
        table[col] = table[col].astype(bool)
    for col in ("score", "score_last", "forgetting", "forgetting_before", "forgetting_after", "lr"):
        table[col] = table[col].astype(float)
    # A method read at several learning rates: its configurations are named by rate (builders.config_label), so no
    # table pools a searched rate with the default.
    table["several_lrs"] = table.groupby("method")["lr"].transform("nunique").gt(1) if len(table) else False
    table = table.sort_values(["task", "method", "targets", "rank", "seed", "label"], na_position="first")
    return table.reset_index(drop=True), skipped


def load_runs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """``scan_runs`` that warns (``RunWarning``) once per skipped folder and returns the table alone."""
    table, skipped = scan_runs(paths)
    for s in skipped:
        warnings.warn(str(s), RunWarning, stacklevel=2)
    return table


def short_path(path: object) -> str:
    """A path as it may appear in a written file: the last component of a local path ('/…/.venv/…/all-MiniLM-L6-v2'
    -> 'all-MiniLM-L6-v2'), a hub id ('org/model') unchanged; results must not name the machine they came from."""
    if path is None or (isinstance(path, float) and math.isnan(path)):
        return ""
    text = str(path)
    return Path(text).name if os.path.isabs(text) or text.startswith(("~", ".")) else text


def runs_footnote(labels: Iterable[str], limit: int = 4) -> str:
    """'runs: a/rank=8,seed=1; a/rank=64,seed=1', or '12 runs from sweeps a, b' when there are many."""
    labels = sorted(dict.fromkeys(labels))
    if len(labels) <= limit:
        return "runs: " + "; ".join(labels)
    sweeps = sorted(dict.fromkeys(label.split("/", 1)[0] for label in labels))
    return f"{len(labels)} runs from sweep{'s' if len(sweeps) > 1 else ''} " + ", ".join(sweeps)


def read_best(run_dir: str | os.PathLike) -> dict[str, float]:
    """Every metric of a run's best epoch (``metrics.json["best"]``): E2E's BLEU, NIST and ROUGE-L beside the loss."""
    best = json.loads((Path(run_dir) / "metrics.json").read_text()).get("best") or {}
    return {k: float(v) for k, v in best.items() if k != "epoch" and isinstance(v, (int, float))}


def read_generations(run_dir: str | os.PathLike) -> list[dict]:
    """A causal-LM run's ``generations.jsonl``: per eval input its ``mr``, ``generation`` and ``references``."""
    path = Path(run_dir) / "generations.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_truncation(run_dir: str | os.PathLike, metric: str) -> list[tuple[int, float]]:
    """[(k, the task's ``metric`` with every ΔW cut to rank k)] from ``metrics.json["truncation"]``, sorted by k.

    The contract: a list of ``{"k": 0, "<metric>": value, ...}`` for k = 0 (ΔW removed: the trained head on the
    pretrained encoder), 1, 2, 4, …; the untruncated value is ``metrics.json["last"]``. Empty when the run has no
    truncation block.
    """
    path = Path(run_dir) / "metrics.json"
    block = json.loads(path.read_text()).get("truncation") or []
    if not isinstance(block, list):
        raise RunError(f"{path}: truncation must be a list of {{'k': int, '{metric}': float}}, "
                       f"got {type(block).__name__}")
    points = []
    for entry in block:
        k = entry.get("k") if isinstance(entry, dict) else None
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or not isinstance(entry.get(metric), (int, float)):
            raise RunError(f"{path}: each truncation entry needs an integer k >= 0 and a number for {metric!r}, "
                           f"got {entry!r}")  # fmt: skip
        points.append((k, float(entry[metric])))
    return sorted(points)
