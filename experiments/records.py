"""A run folder read back as one flat record: the one reader behind the sweep's ``runs.csv`` (experiments/store.py)
and the analyses' run table (analysis/runs/folders.py). Hydra-free: it reads ``config.yaml`` and ``metrics.json``.

A record has two kinds of columns.
- The run's identity (experiments/identity.py), flattened by one rule and no list of keys: a node's ``name`` is the
  node's column (``task``, ``model``, ``method``), the ``method`` node's other keys keep their own names (``rank``,
  ``alpha``, ``lr``: what users type), every other key its dotted path (``train.batch_size``, ``data.subset_seed``);
  lists become comma-joined text. A new method's keys appear here with no edit anywhere.
- What the run is and gave: ``run`` (``<sweep>/<folder>``), ``config_id`` (the seeds of one configuration share it),
  ``label`` (the method's own name for it, ``Method.label``: ``title`` and ``label_parts``), the method's facts (``has_delta``,
  ``has_factors``), the status, and the metrics (``score`` is the task metric at the reported epoch).

Runs written before metrics.json carried ``identity``, ``config_id`` and ``label`` get the same values from their
``config.yaml`` through the same functions, so old sweeps regroup exactly as new ones.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from experiments.identity import canonical, config_id, method_keys

CONFIG, METRICS, FAILED, COMPLETE, SUPERSEDED = "config.yaml", "metrics.json", "FAILED", "COMPLETE", "SUPERSEDED"
DELTAS = "delta_weights.safetensors"
FACTORS, FACTORS_INIT = "adapter", "adapter_init"  # a factorised method's factors, trained and at step 0 (PEFT's format)
CLASSIFICATION = "sequence_classification"  # the family of a run written before the run block named it


def natural_key(value: object) -> tuple:
    """Text ordered with the numbers inside it by value ('LoRA (r=4, ...)' before 'LoRA (r=16, ...)'): the one rule
    the runs table and the analyses' tables sort names by."""
    chunks = re.split(r"(\d+(?:\.\d+)?)", str(value))
    return tuple((0, float(c), "") if i % 2 else (1, 0.0, c) for i, c in enumerate(chunks))


def read_config(run_dir: str | Path) -> dict:
    """A run's resolved ``config.yaml`` as a plain dict; empty when the folder has none."""
    path = Path(run_dir) / CONFIG
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def status(run_dir: str | Path) -> str:
    """superseded | complete | failed | running (a job holds the folder's lock: another sweep's, side by side in one
    folder) | incomplete (killed or crashed: a rerun resumes it)."""
    run_dir = Path(run_dir)
    if (run_dir / SUPERSEDED).is_file():
        return "superseded"
    if (run_dir / COMPLETE).is_file() and (run_dir / METRICS).is_file():
        return "complete"
    if (run_dir / FAILED).is_file():
        return "failed"
    return "running" if _locked(run_dir) else "incomplete"


def _locked(run_dir: Path) -> bool:
    """Whether a job holds ``run_dir``'s lock (experiments/store.run_lock's flock); False where flock is refused."""
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases a lock taken here
    return False


def describe_run(config: dict, run: dict | None = None) -> dict:
    """``identity``, ``config_id``, ``label``, ``label_parts`` and ``facts`` of a run: from its ``run`` block where it
    has them (a run describes itself), else computed from its resolved config as the run would have."""
    run = run or {}
    config = _with_run_block(config, run)
    method_node = config.get("method") or {}
    method = _method(method_node.get("name") or run.get("method"))
    described = {
        "identity": run.get("identity") or canonical(config),
        "config_id": run.get("config_id") or config_id(config),
        "label": run.get("label"),
        "title": run.get("title"),
        "label_parts": run.get("label_parts"),
        "facts": run.get("facts"),
    }
    if described["label"] is None:
        described["label"] = method.label(method_node) if method else str(method_node.get("name"))
        described["title"] = method.display_title(method_node) if method else str(method_node.get("name"))
        described["label_parts"] = method.describe(method_node) if method else {}
    if described["facts"] is None and method:
        described["facts"] = method.facts()
    return described


def _with_run_block(config: dict, run: dict) -> dict:
    """``config`` with what only the run block says filled in: a folder whose config.yaml is missing or partial (a
    hand-made or truncated one) still says what it is, its config.yaml winning wherever both speak."""
    if not run.get("method") or run.get("identity") is not None:
        return config
    from_run = {"task": {"name": run.get("task")}, "model": {"name": run.get("model")},
                "method": {"name": run["method"], **{k: run[k] for k in method_keys(run["method"]) if k in run}},
                "data": {"shuffle_labels": bool(run.get("shuffle_labels", False))}}
    if run.get("seed") is not None:
        from_run["seed"] = run["seed"]
    return _merge(from_run, config)


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _method(name: str | None):
    from experiments.methods import find_method  # torch and lorakit: only when a run needs describing

    return find_method(name) if isinstance(name, str) else None


def flatten_identity(identity: dict) -> dict[str, Any]:
    """The identity as columns, by the module docstring's rule."""
    columns: dict[str, Any] = {}

    def walk(node: dict, prefix: str, bare: bool) -> None:
        for key, value in node.items():
            column = key if bare else f"{prefix}{key}"
            if key == "name" and prefix:
                columns[prefix[:-1]] = value
            elif isinstance(value, dict) and value:
                walk(value, f"{column}.", False)
            else:
                columns[column] = ",".join(map(str, value)) if isinstance(value, list) else value

    for key, value in identity.items():
        if key == "method" and isinstance(value, dict):
            columns["method"] = value.get("name")
            walk({k: v for k, v in value.items() if k != "name"}, "", True)
        elif isinstance(value, dict) and value:
            walk(value, f"{key}.", False)
        else:
            columns[key] = value
    return columns


def method_columns(identity: dict) -> list[str]:
    """The columns ``flatten_identity`` makes of the ``method`` node: how an analysis finds a method's setting."""
    return list(flatten_identity({"method": identity.get("method") or {}}))


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """One row for a run folder of any status: its identity columns, what it is, and (complete runs) its metrics.
    Raises ValueError (or OSError) when a file it needs cannot be read; the callers name the folder and skip it."""
    run_dir = Path(run_dir)
    state = status(run_dir)
    config = read_config(run_dir)
    metrics = json.loads((run_dir / METRICS).read_text()) if state == "complete" else {}
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics.json holds a JSON {type(metrics).__name__}, expected an object")
    run = metrics.get("run") or {}
    if state == "complete" and not isinstance(run.get("method") or (config.get("method") or {}).get("name"), str):
        raise ValueError("run.method must name the method (lora, full, head, ...)")
    described = describe_run(config, run)
    facts = described["facts"] or {}
    row: dict[str, Any] = {
        "run": f"{run_dir.parent.name}/{run_dir.name}",
        "sweep": run_dir.parent.name,
        "name": run.get("name") or run_dir.name,
        "status": state,
        "config_id": described["config_id"],
        "label": described["label"],
        "title": described["title"] or described["label"],
        "label_parts": described["label_parts"] or {},
        "has_delta": bool(facts.get("has_delta", (run_dir / DELTAS).is_file())),
        "has_factors": bool(facts.get("has_factors", (run_dir / FACTORS).is_dir())),
        "family": run.get("family") or (config.get("task") or {}).get("family") or CLASSIFICATION,
        "model_path": run.get("model_path"),
        **flatten_identity(described["identity"]),
        "method_columns": method_columns(described["identity"]),
        "run_dir": str(run_dir),
    }
    if row.get("seed") is None:
        row["seed"] = run.get("seed", metrics.get("seed"))
    if state == "complete":
        row.update(_results(metrics, row["method"]))
    elif state == "failed":
        try:
            row["error"] = json.loads((run_dir / FAILED).read_text()).get("error", "")
        except (OSError, ValueError):
            row["error"] = ""
    return row


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _results(metrics: dict, method: str | None) -> dict[str, Any]:
    """The metric columns of a complete run: the task metric at the reported and the last epoch, every metric of both
    as ``best_<k>`` / ``last_<k>``, parameters, forgetting, cost."""
    metric = metrics.get("metric")
    best, last = metrics.get("best") or {}, metrics.get("last") or {}
    forgetting = metrics.get("forgetting")
    if forgetting is not None and not isinstance(forgetting, dict):
        raise ValueError(f"metrics.json forgetting must be a dict (probe, before, after, value), got {forgetting!r}")
    forgetting = forgetting or {}
    row = {
        "metric": metric,
        "score": _number(best.get(metric)),
        "score_last": _number(last.get(metric)),
        "best_epoch": best.get("epoch"),
        **{f"best_{k}": v for k, v in best.items() if k != "epoch"},
        **{f"last_{k}": v for k, v in last.items() if k != "epoch"},
        "trainable_params": metrics.get("trainable_params"),
        # Runs written before method_params existed: a full fine-tune trains everything (the paper's count).
        "method_params": metrics.get("method_params",
                                     metrics.get("trainable_params") if method == "full" else None),
        "total_params": metrics.get("total_params"),
        "forgetting": _number(forgetting.get("value")),
        "forgetting_before": _number(forgetting.get("before")),
        "forgetting_after": _number(forgetting.get("after")),
        "forgetting_probe": forgetting.get("probe"),
        "adapted_modules": list(metrics.get("adapted_modules") or []),
        "has_truncation": bool(metrics.get("truncation")),
        "flags": "; ".join(metrics.get("flags") or []) or None,
    }
    for key in ("wall_time_s", "train_examples_per_s", "peak_memory_mb", "device"):
        row[key] = metrics.get(key)
    row["train_examples"] = (metrics.get("data") or {}).get("train_examples")  # trained on (less the selection slice)
    return row


# The columns of a record that are not the run's identity (the identity's own columns have no list: they are the rest).
RECORD_COLUMNS = frozenset({
    "run", "sweep", "name", "status", "config_id", "method_columns", "label", "title", "label_parts", "has_delta", "has_factors",
    "family", "model_path", "run_dir", "path", "error", "metric", "score", "score_last", "best_epoch",
    "trainable_params", "method_params", "total_params", "forgetting", "forgetting_before", "forgetting_after",
    "forgetting_probe", "adapted_modules", "has_truncation", "flags", "wall_time_s", "train_examples_per_s",
    "train_examples", "peak_memory_mb", "device", "has_weights", "has_init",
})  # fmt: skip


def identity_columns(columns) -> list[str]:
    """Which of a run table's columns are identity columns: all but the record's own and the per-epoch metrics."""
    return [c for c in columns if c not in RECORD_COLUMNS and not str(c).startswith(("best_", "last_", "size_"))]
