"""The results store: atomic writes, completion markers and the table of a sweep's runs (docs/CONTRACTS.md).

A run folder is complete when it holds ``COMPLETE``, written last; every file before it is written to a temporary name
and renamed, so a run killed half-way leaves no file that looks finished. ``FAILED`` records a run that raised.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lorakit.files import atomic_path
from lorakit.state import CONFIG_NAME

CONFIG, METRICS, DELTAS = "config.yaml", "metrics.json", "delta_weights.safetensors"
ADAPTER, ADAPTER_INIT, BOTTLENECK = "adapter", "adapter_init", "bottleneck_adapters"
GENERATIONS = "generations.jsonl"  # a causal-LM run's outputs on its eval inputs
COMPLETE, FAILED, SUPERSEDED = "COMPLETE", "FAILED", "SUPERSEDED"
STAGING = ".partial"  # a run's files until it completes: nothing usable-looking sits in an unfinished run folder
RUN_FILES = (CONFIG, METRICS, ADAPTER, ADAPTER_INIT, BOTTLENECK, DELTAS, GENERATIONS, COMPLETE, FAILED, "wandb", STAGING)
TABLE = "runs"
log = logging.getLogger(__name__)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock (flock) on a run folder itself while a job works in it; nothing is left behind.
    A file system without flock on folders (some network mounts) runs the job unlocked."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            log.warning("%s: cannot lock the run folder (%s); two identical jobs started at once could both train",
                        run_dir, err.strerror)
        yield
    finally:
        os.close(fd)  # releases the lock


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` could not be created or written to (its nearest existing ancestor decides), or None."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def is_complete(run_dir: Path) -> bool:
    return (Path(run_dir) / COMPLETE).is_file() and (Path(run_dir) / METRICS).is_file()


def stored_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CONFIG
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


def clear_run(run_dir: Path) -> None:
    """Remove a previous attempt's results and the temporary files a killed write left; Hydra's own files (.hydra/,
    the job log) stay."""
    run_dir = Path(run_dir)
    leftovers = [p for p in run_dir.iterdir() if any(p.name.startswith(f".{name}.") for name in RUN_FILES)]
    for path in [run_dir / name for name in RUN_FILES] + leftovers:
        remove(path)


def remove(path: Path) -> None:
    """Remove a file or folder if it is there."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def set_aside(run_dir: Path, reason: str) -> Path:
    """Move a complete run's files to ``<run>@superseded`` (marked SUPERSEDED, listed in the runs table, never read as
    a run by the analyses) so nothing is lost while its replacement trains; ``drop_superseded`` removes them once the
    replacement is COMPLETE."""
    run_dir = Path(run_dir)
    aside = run_dir.with_name(run_dir.name + "@superseded")
    if aside.exists():
        shutil.rmtree(aside)
    aside.mkdir()
    for name in RUN_FILES:
        if (run_dir / name).exists():
            os.replace(run_dir / name, aside / name)
    write_json(aside / SUPERSEDED, {"by": str(run_dir), "reason": reason})
    return aside


def drop_superseded(run_dir: Path) -> None:
    aside = Path(run_dir).with_name(Path(run_dir).name + "@superseded")
    if (aside / SUPERSEDED).is_file():
        shutil.rmtree(aside)


def publish(run_dir: Path, metrics: dict) -> None:
    """Move the staged files into the run folder, then write metrics.json and COMPLETE, last."""
    staging = Path(run_dir) / STAGING
    if staging.is_dir():
        for path in staging.iterdir():
            target = Path(run_dir) / path.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
        staging.rmdir()
    mark_complete(run_dir, metrics)


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def mark_complete(run_dir: Path, metrics: dict) -> None:
    write_json(Path(run_dir) / METRICS, metrics)
    write_text(Path(run_dir) / COMPLETE, "")


def mark_failed(run_dir: Path, err: BaseException) -> dict:
    """Write FAILED (error and traceback) and drop what the run had staged: a failed run holds nothing usable-looking."""
    staging = Path(run_dir) / STAGING
    if staging.is_dir():
        shutil.rmtree(staging)
    record = {
        "error": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }
    write_json(Path(run_dir) / FAILED, record)
    return record


def run_status(run_dir: Path) -> str:
    if (Path(run_dir) / SUPERSEDED).is_file():
        return "superseded"
    if is_complete(run_dir):
        return "complete"
    return "failed" if (Path(run_dir) / FAILED).is_file() else "incomplete"


def _row(run_dir: Path) -> dict:
    row: dict[str, Any] = {"name": run_dir.name, "status": run_status(run_dir), "path": str(run_dir)}
    if row["status"] == "complete":
        metrics = json.loads((run_dir / METRICS).read_text())
        row.update(metrics["run"])
        row["metric"] = metrics["metric"]
        row["best_epoch"] = metrics["best"]["epoch"]
        row.update({f"best_{k}": v for k, v in metrics["best"].items() if k != "epoch"})
        row.update({f"last_{k}": v for k, v in metrics["last"].items() if k != "epoch"})
        keys = ("trainable_params", "method_params", "total_params", "wall_time_s", "train_examples_per_s",
                "peak_memory_mb", "device")
        for key in keys:
            row[key] = metrics.get(key)
        row["flags"] = "; ".join(metrics.get("flags") or []) or None
        forgetting = metrics.get("forgetting") or {}
        row.update({"forgetting": forgetting.get("value"), "forgetting_before": forgetting.get("before"),
                    "forgetting_after": forgetting.get("after")})
    else:
        config = stored_config(run_dir) or {}
        method = config.get("method", {})
        row.update({k: method[k] for k in ("rank", "alpha", "targets") if k in method})
        row.update({"task": config.get("task", {}).get("name"), "method": method.get("name"), "seed": config.get("seed")})
        if row["status"] == "failed":
            row["error"] = json.loads((run_dir / FAILED).read_text())["error"]
    return row


def run_folders(sweep_dir: Path, superseded: bool = False) -> list[Path]:
    """Folders of a sweep that a job wrote to (Hydra's .hydra/ or one of our files), in name order; those set aside
    (SUPERSEDED) only when asked."""
    return sorted(
        p for p in Path(sweep_dir).iterdir()
        if p.is_dir() and not p.name.startswith(".") and ((p / ".hydra").is_dir() or (p / CONFIG).is_file()
                                                          or (superseded and (p / SUPERSEDED).is_file()))
        and (superseded or not (p / SUPERSEDED).is_file())
    )


SORT_KEYS = ("task", "method", "targets", "rank", "alpha", "seed", "name")


def collect_runs(sweep_dir: Path) -> pd.DataFrame:
    """One row per run folder (set-aside ones included): its values, status, best/last metrics, size and cost; sorted
    by task, method, targets, rank, alpha and seed, numbers as numbers (4, 8, 16, 64)."""
    table = pd.DataFrame([_row(p) for p in run_folders(sweep_dir, superseded=True)])
    by = [k for k in SORT_KEYS if k in table]
    return table.sort_values(by, key=_sortable, na_position="last", ignore_index=True) if by else table


def _sortable(column: pd.Series) -> pd.Series:
    """Numbers before text, numbers by value: rank 2, 16, 64, then 'abc'; missing values last."""

    def key(value):
        if value is None or isinstance(value, float) and value != value:
            return (2, 0.0, "")
        try:
            return (0, float(value), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(value))

    return column.map(key)


def write_run_table(sweep_dir: Path) -> pd.DataFrame:
    table = collect_runs(sweep_dir)
    for name in table.columns:  # a column of mixed types (rank=abc,8; lists and strings) is stored as text
        values = table[name].dropna()
        if table[name].dtype == object and len({type(v) for v in values}) > 1 or any(isinstance(v, (list, tuple)) for v in values):
            table[name] = table[name].map(lambda v: v if v is None or isinstance(v, float) and v != v else
                                          ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
    with atomic_path(Path(sweep_dir) / f"{TABLE}.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(Path(sweep_dir) / f"{TABLE}.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return table


def find_init_adapter(init_from: DictConfig, seed: int) -> Path | None:
    """The adapter a run's LoRA factors start from (``init_from`` in conf/sweep.yaml), or None for a fresh start.

    ``init_from.dir`` is an adapter folder, a run folder holding ``adapter/``, or a sweep folder; in a sweep folder
    ``init_from.task`` picks the source, the complete LoRA run of that task with this ``seed`` (Appendix D: MNLI for
    MRPC, RTE and STS-B), and ``task: null`` means no source (how the paper preset leaves its other tasks alone).
    A half-written or failed run is never a source.
    """
    if init_from.dir is None:
        return None
    root = Path(init_from.dir)
    if not root.is_dir():
        raise FileNotFoundError(f"init_from.dir={root} does not exist; give an adapter, run or sweep folder")
    if (root / CONFIG_NAME).is_file():  # an adapter folder
        return root
    if (root / CONFIG).is_file():  # a run folder
        if not is_complete(root) or not (root / ADAPTER).is_dir():
            raise FileNotFoundError(f"init_from.dir={root} is not a complete LoRA run (no {COMPLETE} or no {ADAPTER}/)")
        return root / ADAPTER
    if init_from.task is None:
        return None
    for run_dir in run_folders(root):
        if is_complete(run_dir) and (run_dir / ADAPTER).is_dir():
            run = json.loads((run_dir / METRICS).read_text())["run"]
            if run["task"] == init_from.task and run["method"] in ("lora", "dora") and run["seed"] == seed:
                return run_dir / ADAPTER
    raise FileNotFoundError(
        f"init_from: no complete LoRA run of task={init_from.task} with seed={seed} in {root}; "
        f"run it into that sweep folder first (task={init_from.task} seed={seed})"
    )
