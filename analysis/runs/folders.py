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

import numpy as np
import pandas as pd

from experiments import records
from experiments.integrity import run_damage
from experiments.records import FACTORS, FACTORS_INIT

_MARKERS = ("COMPLETE", "FAILED", "metrics.json", "config.yaml")
CLASSIFICATION = records.CLASSIFICATION  # the task family of GLUE runs; causal_lm: generation (E2E)


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


def read_config(run_dir: str | os.PathLike) -> dict:
    """A run's resolved ``config.yaml`` as a dict; empty when the folder has none."""
    return records.read_config(run_dir)


def scan_runs(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[Skipped]]:
    """(one row per complete run, the folders skipped and why).

    Each row is the run's record (experiments/records.py: the one reader shared with the sweep's runs.csv): its
    identity flattened into columns by rule (``task``, ``method``, ``rank``, ``train.batch_size``, ...: a new
    method's keys appear with no edit here), ``config_id`` (the seeds of one configuration share it, and nothing
    else does), ``label`` (the method's own name for the configuration), ``run`` (``<sweep>/<folder>``: how files
    and notes name one run), the method's facts ``has_delta`` / ``has_factors``, and the metrics: ``score`` is the
    task's primary metric at the reported epoch (``metrics.json["best"][metric]``), as in the paper's Table 2.
    ``has_weights`` says whether the run's ΔW is there for the weight analyses (delta_weights.safetensors, or the
    factors of a method that has them), ``has_init`` whether ``adapter_init/`` (the factors at step 0) is."""
    rows, skipped = [], []
    for run_dir in find_run_dirs(paths):
        state = records.status(run_dir)
        if state == "failed":
            try:
                error = json.loads((run_dir / "FAILED").read_text()).get("error", "")
            except (OSError, ValueError):
                error = ""
            skipped.append(Skipped(str(run_dir), f"run failed ({error})" if error else "run failed"))
            continue
        if state != "complete":
            skipped.append(Skipped(str(run_dir), "incomplete (no COMPLETE file)"))
            continue
        damage = run_damage(run_dir)  # experiments/integrity.py: the check python -m experiments.verify makes
        if damage:
            skipped.append(Skipped(str(run_dir), f"damaged: {damage}"))
            continue
        try:
            row = records.read_record(run_dir)
        except (OSError, ValueError, AttributeError, TypeError, KeyError) as err:
            skipped.append(Skipped(str(run_dir), f"unreadable metrics.json or config.yaml ({err})"))
            continue
        row["has_weights"] = (run_dir / "delta_weights.safetensors").exists() or (
            row["has_factors"] and (run_dir / FACTORS).is_dir())  # older runs give ΔW through their factors
        row["has_init"] = (run_dir / FACTORS_INIT).is_dir()
        if row["has_delta"] and not row["has_weights"]:
            warnings.warn(f"{row['run']}: no delta_weights.safetensors; usable for metric tables only", RunWarning,
                          stacklevel=2)  # fmt: skip
        rows.append(row)
    return runs_table(rows), skipped


def runs_table(rows: list[dict]) -> pd.DataFrame:
    """Records (experiments/records.py) as the analyses' run table: typed and sorted."""
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=sorted(records.RECORD_COLUMNS | {"task", "method", "seed", "data.shuffle_labels"}))
    return _typed(table).reset_index(drop=True)


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Whole numbers as nullable integers (rank 8, not 8.0, beside a full fine-tune's missing rank), flags as bools,
    scores as floats; sorted by task, label (numbers in it by value), configuration and seed."""
    for col in table.columns:
        values = table[col].dropna()
        if col in ("score", "score_last", "forgetting", "forgetting_before", "forgetting_after", "lr"):
            table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
        elif len(values) and all(isinstance(v, (bool, np.bool_)) for v in values):
            table[col] = table[col].map(lambda v: bool(v) if v is not None and v == v else False).astype(bool)
        elif len(values) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            table[col] = pd.array(table[col].astype(object).where(table[col].notna(), None), dtype="Int64")
    for col in ("has_weights", "has_init", "has_truncation", "has_delta", "has_factors"):
        if col in table:
            table[col] = table[col].astype(bool)
    if "data.shuffle_labels" not in table and len(table):
        table["data.shuffle_labels"] = False
    keys = [k for k in ("task", "label", "config_id", "seed", "run") if k in table]
    return table.sort_values(keys, key=natural_order, na_position="first") if len(table) else table


def natural_order(column: pd.Series) -> pd.Series:
    """A sort key for ``DataFrame.sort_values``: text by ``records.natural_key``, other columns as they are."""
    return column.map(records.natural_key) if column.dtype == object else column


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
