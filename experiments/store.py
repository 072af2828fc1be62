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
from typing import Any, Callable, Iterator

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from experiments import records
from lorakit.files import atomic_path

from experiments.records import COMPLETE, CONFIG, DELTAS, FAILED, METRICS, SUPERSEDED  # noqa: E402 (the contract's names)

GENERATIONS = "generations.jsonl"  # a causal-LM run's outputs on its eval inputs
STAGING = ".partial"  # a run's files until it completes: nothing usable-looking sits in an unfinished run folder
# What in a run folder is not a result: Hydra's own files (.hydra/, the job's log) and the checkpoint a rerun resumes
# from (experiments/checkpoint.py). Everything else is the run's (the method's files, whatever they are, included).
NOT_RESULTS = (".hydra", ".checkpoint")
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
    for path in results(run_dir):
        remove(path)


def results(run_dir: Path) -> list[Path]:
    """Every entry of a run folder that a run wrote (``NOT_RESULTS`` and Hydra's ``*.log`` left out), temporary files
    a killed write left included."""
    return [p for p in sorted(Path(run_dir).iterdir())
            if p.name not in NOT_RESULTS and not (p.is_file() and p.suffix == ".log")]


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (apparent sizes), 0 when it is gone."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else 0


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
    for path in results(run_dir):
        os.replace(path, aside / path.name)
    write_json(aside / SUPERSEDED, {"by": str(run_dir), "reason": reason})
    return aside


def drop_superseded(run_dir: Path) -> None:
    aside = Path(run_dir).with_name(Path(run_dir).name + "@superseded")
    if (aside / SUPERSEDED).is_file():
        shutil.rmtree(aside)


def publish(run_dir: Path, metrics: dict, seal: Callable[[Path], str] | None = None) -> None:
    """Move the staged files into the run folder, then write metrics.json and COMPLETE, last (holding ``seal(run_dir)``:
    the files' checksums, experiments/integrity.py)."""
    staging = Path(run_dir) / STAGING
    if staging.is_dir():
        for path in staging.iterdir():
            target = Path(run_dir) / path.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
        staging.rmdir()
    mark_complete(run_dir, metrics, seal)


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))


def mark_complete(run_dir: Path, metrics: dict, seal: Callable[[Path], str] | None = None) -> None:
    write_json(Path(run_dir) / METRICS, metrics)
    write_text(Path(run_dir) / COMPLETE, seal(Path(run_dir)) if seal else "")


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
    return records.status(run_dir)


def _row(run_dir: Path) -> dict:
    """A run's row in runs.csv: experiments/records.py's record (one reader for this table and the analyses'), the
    run's folder as ``path``; a folder whose files cannot be read is listed as damaged, never dropped."""
    try:
        row = records.read_record(run_dir)
    except (OSError, ValueError) as err:
        return {"name": run_dir.name, "status": "damaged", "error": f"{type(err).__name__}: {err}",
                "path": str(run_dir)}
    row["path"] = row.pop("run_dir")
    row.pop("label_parts", None), row.pop("method_columns", None)
    row["size_on_disk_mb"] = folder_bytes(run_dir) / 1e6  # what the run keeps: ΔW dominates a full fine-tune
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


SORT_KEYS = ("task", "label", "config_id", "seed", "name")


def collect_runs(sweep_dir: Path) -> pd.DataFrame:
    """One row per run folder (set-aside ones included): its identity, status, best/last metrics, size and cost; sorted
    by task, label, configuration and seed, numbers as numbers (4, 8, 16, 64)."""
    table = pd.DataFrame([_row(p) for p in run_folders(sweep_dir, superseded=True)])
    by = [k for k in SORT_KEYS if k in table]
    return table.sort_values(by, key=_sortable, na_position="last", ignore_index=True) if by else table


def _sortable(column: pd.Series) -> pd.Series:
    """Numbers before text, numbers by value, and the numbers inside text by value too: rank 2, 16, 64; 'LoRA (r=4)'
    before 'LoRA (r=16)'; missing values last."""

    def key(value):
        if value is None or isinstance(value, float) and value != value:
            return (2, 0.0, ())
        try:
            return (0, float(value), ())
        except (TypeError, ValueError):
            return (1, 0.0, records.natural_key(value))

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
