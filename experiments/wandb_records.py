"""W&B's files in a folder that logged to it (a run folder, an analysis's ``--out``): which W&B runs are there, and
what their offline transaction logs (``run-<id>.wandb``) hold, read back with W&B's own reader.

The reader is wandb-core's record inspector (``wandb leet inspect --json``, wandb ≥ 0.2x; the Python ``DataStore`` of
older releases is gone): one JSON object per record, ``{"type": "history" | "summary" | "config" | "run" | ..., ...}``.
``OfflineRun`` gathers the records a reader of a run needs: its config, summary and history rows, keyed as logged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# wandb.init(dir=...) writes <dir>/wandb/<offline-run|run>-<YYYYmmdd_HHMMSS>-<id>/run-<id>.wandb
_RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-([A-Za-z0-9]+)$")


def run_folders(folder: Path) -> list[Path]:
    """The W&B run folders under ``folder/wandb``, oldest first (a resumed run has one per attempt)."""
    root = Path(folder) / "wandb"
    found = [p for p in root.iterdir() if p.is_dir() and _RUN_FOLDER.match(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: p.name.split("-", 2)[-1] if p.name.startswith("offline-") else p.name[4:])


def run_ids(folder: Path) -> list[str]:
    """The ids of the W&B runs logged from ``folder``, oldest first; [] when it never logged to W&B."""
    return [_RUN_FOLDER.match(p.name).group(1) for p in run_folders(folder)]


def transaction_log(folder: Path) -> Path:
    """The newest W&B run's ``run-<id>.wandb`` under ``folder`` (a run folder or an analysis's ``--out``)."""
    runs = run_folders(folder)
    logs = sorted(runs[-1].glob("run-*.wandb")) if runs else []
    if not logs:
        raise FileNotFoundError(f"no W&B run under {folder}/wandb (was execution.wandb.mode disabled?)")
    return logs[0]


def read_records(path: Path) -> list[dict]:
    """Every record of a ``.wandb`` transaction log, in order, as W&B's own reader prints them."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"wandb leet inspect could not read {path}: {done.stderr.strip()[-500:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@dataclass
class OfflineRun:
    """A W&B run as its transaction log holds it."""

    run_id: str
    project: str
    group: str
    name: str
    job_type: str
    config: dict = field(default_factory=dict)  # nested as logged; W&B's own keys (_wandb) left out
    summary: dict = field(default_factory=dict)  # the last value of each key, flat ("best/accuracy")
    history: list[dict] = field(default_factory=list)  # one flat dict per logged step

    def series(self, key: str) -> list[tuple[float, float]]:
        """(epoch, value) of a history key, for the keys plotted against ``epoch`` (eval/*, delta/*, spectral/*)."""
        return [(row["epoch"], row[key]) for row in self.history if key in row and "epoch" in row]


def read_run(folder_or_log: Path) -> OfflineRun:
    """The newest W&B run under a folder (or the given ``.wandb`` file), read back from its transaction log."""
    path = Path(folder_or_log)
    records = read_records(path if path.suffix == ".wandb" else transaction_log(path))
    header = next(r["run"] for r in records if r["type"] == "run")
    run = OfflineRun(header["run_id"], header.get("project", ""), header.get("run_group", ""),
                     header.get("display_name", ""), header.get("job_type", ""))
    for record in records:
        kind = record["type"]
        if kind in ("run", "config"):
            node = (record[kind].get("config") or {}) if kind == "run" else record[kind]
            update = node.get("update", {})
            run.config.update({k: v for k, v in update.items() if not k.startswith("_wandb")})
        elif kind == "history":
            run.history.append(record["history"]["item"])
        elif kind == "summary":
            run.summary.update(record["summary"].get("update", {}))
    return run
