"""The results store: atomic writes, completion markers and the table of a sweep's runs (docs/CONTRACTS.md).

A run folder is complete when it holds ``COMPLETE``, written last; every file before it is written to a temporary name
and renamed, so a run killed half-way leaves no file that looks finished. ``FAILED`` records a run that raised.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lorakit.state import CONFIG_NAME

CONFIG, METRICS, ADAPTER, DELTAS = "config.yaml", "metrics.json", "adapter", "delta_weights.safetensors"
COMPLETE, FAILED = "COMPLETE", "FAILED"
RUN_FILES = (CONFIG, METRICS, ADAPTER, DELTAS, COMPLETE, FAILED, "wandb")
TABLE = "runs"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it is renamed to ``path`` (replacing it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o777 & ~_UMASK if is_dir else 0o666 & ~_UMASK)  # mkstemp/mkdtemp create owner-only
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock (flock) on a run folder itself while a job works in it; nothing is left behind.
    A file system without flock on folders (some network mounts) runs the job unlocked."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


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
    """Remove a previous attempt's results; Hydra's own files (.hydra/, the job log) stay."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def mark_complete(run_dir: Path, metrics: dict) -> None:
    write_json(Path(run_dir) / METRICS, metrics)
    write_text(Path(run_dir) / COMPLETE, "")


def mark_failed(run_dir: Path, err: BaseException) -> dict:
    record = {
        "error": f"{type(err).__name__}: {err}",
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
    }
    write_json(Path(run_dir) / FAILED, record)
    return record


def run_status(run_dir: Path) -> str:
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
    else:
        config = stored_config(run_dir) or {}
        row.update({k: config.get(k) for k in ("rank", "alpha", "targets", "seed") if k in config})
        row.update({"task": config.get("task", {}).get("name"), "method": config.get("method", {}).get("name")})
        if row["status"] == "failed":
            row["error"] = json.loads((run_dir / FAILED).read_text())["error"]
    return row


def run_folders(sweep_dir: Path) -> list[Path]:
    """Folders of a sweep that a job wrote to (Hydra's .hydra/ or one of our files), in name order."""
    return sorted(
        p for p in Path(sweep_dir).iterdir()
        if p.is_dir() and not p.name.startswith(".") and ((p / ".hydra").is_dir() or (p / CONFIG).is_file())
    )


def collect_runs(sweep_dir: Path) -> pd.DataFrame:
    """One row per run folder: its overrides' values, status, best/last metrics, size and cost."""
    return pd.DataFrame([_row(p) for p in run_folders(sweep_dir)])


def write_run_table(sweep_dir: Path) -> pd.DataFrame:
    table = collect_runs(sweep_dir)
    if "targets" in table:  # a column of strings and lists, which parquet cannot store
        table["targets"] = table["targets"].map(lambda t: ",".join(t) if isinstance(t, (list, tuple)) else t)
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
            if run["task"] == init_from.task and run["method"] == "lora" and run["seed"] == seed:
                return run_dir / ADAPTER
    raise FileNotFoundError(
        f"init_from: no complete LoRA run of task={init_from.task} with seed={seed} in {root}; "
        f"run it into that sweep folder first (task={init_from.task} seed={seed})"
    )
