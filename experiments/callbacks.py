"""Sweep-level hooks (Hydra callbacks, conf/sweep.yaml ``hydra.callbacks``), run in the process that launches jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments import distributed
from experiments.errors import ConfigError
from experiments.schema import check_config as validate
from experiments.store import TABLE, unwritable, write_run_table


class SweepCallback(Callback):
    """Checks the config before any job starts; writes the run table after all finish (any launcher: it scans)."""

    failed: list[str] = []  # runs of the last sweep that did not complete; the entry point's exit status

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse a bad config in one line, exit status 1, before any job starts. This checks the values all jobs
        share; a swept value (``rank=0,8``) is checked by its own job, which fails alone."""
        try:
            validate(config)
            reason = unwritable(Path(config.hydra.sweep.dir))
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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the runs table and a one-line summary; the entry point exits 1 when any run did not complete."""
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir() or not distributed.is_main():
            return
        table = write_run_table(sweep_dir)
        counts = table["status"].value_counts().to_dict() if len(table) else {}
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no runs"
        print(f"[lorakit] {summary}; table: {sweep_dir / (TABLE + '.csv')}", flush=True)
        unfinished = table["status"].isin(["failed", "incomplete"]) if len(table) else []
        SweepCallback.failed = table.loc[unfinished, "name"].tolist() if len(table) else []
