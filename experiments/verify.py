"""Check a sweep folder: ``python -m experiments.verify multirun/<date>/<time>-<id>``.

Every run folder's files against the checksums its ``COMPLETE`` holds (experiments/integrity.py; runs from before
checksums: every file reads back whole), and the runs table (``runs.csv``) against the folders: a row without a
folder, a folder without a row, a status that is no longer true. Prints one line per problem and, per run to redo,
the exact command: the sweep's own command for that run, into the same folder (a damaged run is set aside, not
deleted, while it trains again; the runs table is rewritten at the end). Exit status 0 when the sweep is whole,
1 when anything is damaged, unfinished or out of date, 2 when the folder is not a sweep folder.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from experiments import store
from experiments.integrity import run_damage


def check(sweep_dir: Path) -> tuple[list[str], list[Path]]:
    """(problems, run folders to redo) of a sweep folder."""
    problems, redo = [], []
    folders = store.run_folders(sweep_dir)
    for run_dir in folders:
        damage = run_damage(run_dir)
        status = store.run_status(run_dir)
        if damage:
            problems.append(f"{run_dir.name}: damaged: {damage}")
        elif status != "complete":
            problems.append(f"{run_dir.name}: {status}" + _failure(run_dir))
        if damage or status != "complete":
            redo.append(run_dir)
    table_problems = _table_problems(sweep_dir, folders)
    problems += table_problems
    if table_problems and not redo and folders:
        redo.append(folders[0])  # any run's command rewrites the table (its complete runs are skipped)
    return problems, redo


def _failure(run_dir: Path) -> str:
    """`` (the error)`` of a FAILED run, first line; empty when there is none or it cannot be read."""
    try:
        return f" ({json.loads((run_dir / store.FAILED).read_text())['error'].splitlines()[0]})"
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return ""


def _table_problems(sweep_dir: Path, folders: list[Path]) -> list[str]:
    path = Path(sweep_dir) / f"{store.TABLE}.csv"
    if not path.is_file():
        return [f"{path.name} is missing"] if folders else []
    try:
        table = pd.read_csv(path)
        rows = {str(r["name"]): str(r["status"]) for _, r in table.iterrows()}
    except Exception as err:  # pandas' parser errors, a missing column, an unreadable file alike
        return [f"{path.name} is unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"]
    problems = []
    names = {p.name for p in store.run_folders(sweep_dir, superseded=True)}
    for name, status in sorted(rows.items()):
        if name not in names:
            problems.append(f"{path.name} lists {name}, which has no run folder")
    for run_dir in folders:
        listed = rows.get(run_dir.name)
        actual = "damaged" if run_damage(run_dir) else store.run_status(run_dir)
        if listed is None:
            problems.append(f"{path.name} does not list {run_dir.name}")
        elif listed != actual:
            problems.append(f"{path.name} says {run_dir.name} is {listed}; it is {actual}")
    return problems


def redo_command(sweep_dir: Path, run_dir: Path) -> str:
    """The command that trains this run again into the same sweep folder: the job's own overrides (Hydra's
    ``.hydra/overrides.yaml``), its launcher and config (``.hydra/hydra.yaml``); without them, the folder's name."""
    hydra_dir = Path(run_dir) / ".hydra"
    words = ["python", "-m", "experiments.sweep"]
    task, extra = None, []
    try:
        task = list(OmegaConf.load(hydra_dir / "overrides.yaml"))
        hydra = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
        extra = [o for o in hydra.overrides.hydra if not str(o).startswith(("hydra.sweep.dir=", "hydra.run.dir=",
                                                                             "hydra.mode="))]
        if hydra.job.config_name not in (None, "sweep"):
            words += ["--config-name", str(hydra.job.config_name)]
        for source in hydra.runtime.config_sources:
            if source.provider == "command-line":
                words += ["--config-dir", str(source.path).removeprefix("file://")]
    except Exception:  # no Hydra record (a run written by run_job directly), or an unreadable one
        task = task if task is not None else [p for p in run_dir.name.split(",") if "=" in p]
    words += [f"hydra.sweep.dir={Path(sweep_dir).absolute()}", *map(str, extra), *map(str, task)]
    return " ".join(shlex.quote(w) for w in words)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m experiments.verify <sweep folder>", file=sys.stderr)
        return 2
    sweep_dir = Path(args[0])
    if not sweep_dir.is_dir() or not store.run_folders(sweep_dir, superseded=True):
        print(f"{sweep_dir} is not a sweep folder (no run folders in it)", file=sys.stderr)
        return 2
    problems, redo = check(sweep_dir)
    runs = len(store.run_folders(sweep_dir))
    if not problems:
        print(f"{sweep_dir}: {runs} runs, every file matches its checksum and runs.csv matches the folders")
        return 0
    for line in problems:
        print(line)
    print(f"{len(problems)} problem(s) in {runs} runs; to redo (damaged runs are set aside, not deleted):")
    for run_dir in redo:
        print(f"  {redo_command(sweep_dir, run_dir)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
