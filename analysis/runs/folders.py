"""Run folders (docs/CONTRACTS.md) into one pandas table, one row per complete run.

A run folder holds ``config.yaml``, ``metrics.json``, ``adapter/`` (LoRA) or ``delta_weights.safetensors`` (full
fine-tuning), and ``COMPLETE``, written last. Folders without ``COMPLETE`` (still running, or ``FAILED``) are
skipped with a message naming them.
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

_MARKERS = ("COMPLETE", "FAILED", "metrics.json", "config.yaml")

COLUMNS = (
    "label", "sweep", "name", "task", "method", "model", "model_path", "rank", "alpha", "targets", "seed", "init",
    "rslora", "metric", "score", "score_last", "best_epoch", "trainable_params", "method_params", "total_params",
    "adapted_modules", "has_weights", "run_dir",
)  # fmt: skip


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


def _read_run(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = metrics.get("run") or {}
    metric = metrics.get("metric")
    best, last = metrics.get("best") or {}, metrics.get("last") or {}
    method = run.get("method")
    if method not in ("lora", "full", "head"):
        raise RunError(f"run.method must be 'lora', 'full' or 'head', got {method!r}")
    sweep = run_dir.parent.name
    name = run.get("name") or run_dir.name
    return {
        "label": f"{sweep}/{run_dir.name}",
        "sweep": sweep,
        "name": name,
        "task": run.get("task"),
        "method": method,
        "model": run.get("model"),
        "model_path": run.get("model_path"),
        "rank": run.get("rank"),
        "alpha": run.get("alpha"),
        "targets": run.get("targets"),
        "seed": run.get("seed", metrics.get("seed")),
        "init": run.get("init"),
        "rslora": run.get("rslora"),
        "metric": metric,
        "score": best.get(metric, math.nan),
        "score_last": last.get(metric, math.nan),
        "best_epoch": best.get("epoch"),
        "trainable_params": metrics.get("trainable_params"),
        # Runs written before method_params existed: a full fine-tune trains everything; LoRA's head is unknown here.
        "method_params": metrics.get("method_params", metrics.get("trainable_params") if method == "full" else None),
        "total_params": metrics.get("total_params"),
        "adapted_modules": list(metrics.get("adapted_modules") or []),
        "run_dir": str(run_dir),
    }


def scan_runs(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[Skipped]]:
    """(one row per complete run, the folders skipped and why). Columns: ``COLUMNS``; ``score`` is the task's
    primary metric at the best epoch (``metrics.json["best"][metric]``), as in the paper's Table 2; ``has_weights``
    says whether the run's adapter/ or delta_weights.safetensors is there for the weight analyses."""
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
        except (OSError, ValueError, AttributeError) as err:
            skipped.append(Skipped(str(run_dir), f"unreadable metrics.json ({err})"))
            continue
        what = {"lora": "adapter", "full": "delta_weights.safetensors"}.get(row["method"])  # head: none to keep
        row["has_weights"] = what is not None and (run_dir / what).exists()
        if what is not None and not row["has_weights"]:
            warnings.warn(f"{row['label']}: no {what}; usable for metric tables only", RunWarning, stacklevel=2)
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("rank", "seed", "best_epoch", "trainable_params", "method_params", "total_params"):
        table[col] = pd.array(table[col], dtype="Int64")
    table["has_weights"] = table["has_weights"].astype(bool)
    table["score"] = table["score"].astype(float)
    table["score_last"] = table["score_last"].astype(float)
    table = table.sort_values(["task", "method", "targets", "rank", "seed", "label"], na_position="first")
    return table.reset_index(drop=True), skipped


def load_runs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """``scan_runs`` that warns (``RunWarning``) once per skipped folder and returns the table alone."""
    table, skipped = scan_runs(paths)
    for s in skipped:
        warnings.warn(str(s), RunWarning, stacklevel=2)
    return table


def runs_footnote(labels: Iterable[str], limit: int = 4) -> str:
    """'runs: a/rank=8,seed=1; a/rank=64,seed=1', or '12 runs from sweeps a, b' when there are many."""
    labels = sorted(dict.fromkeys(labels))
    if len(labels) <= limit:
        return "runs: " + "; ".join(labels)
    sweeps = sorted(dict.fromkeys(label.split("/", 1)[0] for label in labels))
    return f"{len(labels)} runs from sweep{'s' if len(sweeps) > 1 else ''} " + ", ".join(sweeps)
