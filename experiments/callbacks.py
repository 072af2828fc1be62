"""Sweep-level hooks (Hydra callbacks, conf/sweep.yaml ``hydra.callbacks``), run in the process that launches jobs."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments import disk, distributed, faults
from experiments.errors import ConfigError
from experiments.schema import check_config as validate
from experiments.store import TABLE, collect_runs, unwritable, write_run_table


def _plan_disk(config: DictConfig) -> None:
    """One line: what the sweep's runs will write (ΔW and the methods' files) and the free space where they go; a
    warning, on stderr, when the estimate exceeds it (experiments/disk.py). An estimate never stops a sweep."""
    try:
        total, runs, failed = disk.sweep_bytes(config)
    except Exception as err:  # composing a job's config can fail on what the job itself will report
        print(f"[lorakit] no disk estimate for this sweep ({type(err).__name__}: {str(err).splitlines()[0][:160]})",
              flush=True)  # fmt: skip
        return
    line, short = disk.plan_line(total, runs, Path(config.hydra.sweep.dir))
    print(line, file=sys.stderr if short else sys.stdout, flush=True)
    for reason in failed[:3]:
        print(f"[lorakit] not in the estimate: {reason}", flush=True)


def _create(folder: Path) -> str | None:
    """Create the sweep folder now, before Hydra does (its mkdir fails with a traceback), and write a file in it: why
    that failed (permissions, a read-only or full file system), or None. Root passes ``unwritable``'s access check
    wherever it goes, so only trying tells."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lorakit-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        where = err.filename or folder
        return faults.describe(err, folder) or f"{err.strerror or err} ({errno.errorcode.get(err.errno, '?')}) at {where}"
    return None


class SweepCallback(Callback):
    """Checks the config before any job starts; writes the run table after all finish (any launcher: it scans)."""

    failed: list[str] = []  # runs of the last sweep that did not complete; the entry point's exit status

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse a bad config in one line, exit status 1, before any job starts. This checks the values all jobs
        share; a swept value (``rank=0,8``) is checked by its own job, which fails alone."""
        try:
            validate(config)
            reason = unwritable(Path(config.hydra.sweep.dir)) or _create(Path(config.hydra.sweep.dir))
            if reason:
                raise ConfigError(f"hydra.sweep.dir={config.hydra.sweep.dir} cannot be written: {reason}; "
                                  f"choose another with hydra.sweep.dir=...")
            sweeper = config.hydra.sweeper
            if "optuna" in str(sweeper.get("_target_", "")) and not sweeper.get("params"):
                raise ConfigError(f"hydra/sweeper=optuna has no search space: method={config.method.name} has no "
                                  f"`search:` block in conf/method/{config.method.name}.yaml; add one or give "
                                  f"hydra.sweeper.params.train.lr='tag(log, interval(1e-5, 1e-2))'")
        except ConfigError as err:
            print(err, file=sys.stderr, flush=True)
            raise SystemExit(1) from None  # Hydra turns a callback's Exception into a warning and carries on
        if distributed.is_main():
            _plan_disk(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the runs table and a one-line summary; the entry point exits 1 when any run did not complete."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir() or not distributed.is_main():
            return
        try:
            table = write_run_table(sweep_dir)
        except OSError as err:  # a full disk: the runs are what they are; the table is one line short
            print(f"[lorakit] runs table not written: {faults.describe(err, sweep_dir) or err}", file=sys.stderr,
                  flush=True)
            table = collect_runs(sweep_dir)
        counts = table["status"].value_counts().to_dict() if len(table) else {}
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no runs"
        print(f"[lorakit] {summary}; table: {sweep_dir / (TABLE + '.csv')}", flush=True)
        # Not this sweep's to answer for: a run another sweep is training in the same folder ("running").
        unfinished = table["status"].isin(["failed", "incomplete"]) if len(table) else []
        SweepCallback.failed = table.loc[unfinished, "name"].tolist() if len(table) else []
        flagged = table[(table["status"] == "complete") & table["flags"].notna()] if "flags" in table else table[:0]
        for _, row in flagged.iterrows():  # complete, counted as results, and said: e.g. constant predictions
            print(f"[lorakit] flagged: {row['name']}: {row['flags']}", flush=True)
