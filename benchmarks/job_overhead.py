"""The main job's time beyond its training steps: start-up, probes and saving against its wall time (target ≤ 10%),
measured on the main job itself (``python -m experiments.sweep rank=4,8,16,64``: MiniLM, SST-2, the CPU budget).

One ``python -m experiments.sweep`` process, as a user runs it, with W&B offline and a fresh cache folder: its first
run tokenizes and measures the forgetting probe's "before" score, the later runs read both from the cache. For each
run, from its metrics.json:
- training steps: ``train_examples × epochs / train_examples_per_s``; evaluation: the epochs' dev evaluations (the
  rest of ``wall_time_s`` once the steps and ``overhead_s`` are taken out), excluded from the overhead as issue 26 asks;
- overhead: ``overhead_s`` (start-up in train(), the probes, saving, each named), its share of ``wall_time_s``.
For the job: the process's wall time, start to exit; its overhead is the runs' plus what no run holds (imports,
Hydra, the disk estimate, W&B and the run table between and around the runs).
``--ranks 4 --short`` measures one run of fewer examples and epochs (a quick check; the shares are then not the main
job's); ``--keep`` keeps the sweep (the README's main-job table is its runs table).

    python -m benchmarks.job_overhead --threads 1 --keep multirun/main_job_<date>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common

SHORT = ["train.max_train_samples=2000", "train.epochs=1"]
MAIN_RANKS = "4,8,16,64"


def run_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """One run's wall time split into training steps, evaluation and overhead (module docstring)."""
    steps = metrics["data"]["train_examples"] * len(metrics["epochs"]) / metrics["train_examples_per_s"]
    named = metrics.get("overhead_s") or {}
    overhead = sum(named.values())
    wall = metrics["wall_time_s"]
    return {"run": metrics["run"]["name"], "wall_s": round(wall, 1), "training_steps_s": round(steps, 1),
            "evaluation_s": round(wall - steps - overhead, 1), "overhead_s": round(overhead, 1),
            "overhead_share": round(overhead / wall, 3), "overhead_by_part_s": named}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.setup(args)
    overrides = [f"rank={args.ranks}", f"execution.threads={args.threads}", *(SHORT if args.short else [])]
    if args.keep is not None and args.keep.exists():
        raise SystemExit(f"--keep {args.keep} exists: the main job there would skip its complete runs; name a new folder")
    folder = Path(tempfile.mkdtemp(prefix="lorakit-job-overhead-"))
    sweep = args.keep or folder / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "LORAKIT_CACHE": str(folder / "cache")}  # fmt: skip
    share = common.CpuShare()
    try:
        with share.measure():
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "experiments.sweep", f"hydra.sweep.dir={sweep}",
                                   *overrides], cwd=Path(__file__).resolve().parent.parent, env=env,
                                  capture_output=True, text=True)  # fmt: skip
            wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"the main job failed: {done.stderr[-2000:]}")
        runs = [run_record(json.loads(p.read_text())) for p in sorted(sweep.glob("*/metrics.json"),
                                                                           key=lambda p: p.stat().st_mtime)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    outside = wall - sum(r["wall_s"] for r in runs)  # process start and exit, and between the runs
    overhead = sum(r["overhead_s"] for r in runs) + outside
    job = {"wall_s": round(wall, 1), "runs": len(runs), "overhead_s": round(overhead, 1),
           "overhead_share": round(overhead / wall, 3), "outside_runs_s": round(outside, 1)}
    return {"benchmark": "job_overhead", "machine": common.machine_info("cpu", "fp32"),
            "settings": {"command": "python -m experiments.sweep " + " ".join(overrides), "short": args.short,
                         "target": "overhead ≤ 10% of the job's wall time"},
            "runs": runs, "job": job, "cpu_share": share.record()}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    rows = [[r["run"], r["wall_s"], r["training_steps_s"], r["evaluation_s"], r["overhead_s"],
             f"{r['overhead_share']:.1%}", ", ".join(f"{k} {v:g}" for k, v in r["overhead_by_part_s"].items())]
            for r in result["runs"]]  # fmt: skip
    job = result["job"]
    rows.append([f"the job ({job['runs']} runs)", job["wall_s"], "", "", job["overhead_s"],
                 f"{job['overhead_share']:.1%}", f"outside the runs (process start and exit, between runs) "
                 f"{job['outside_runs_s']:g}"])  # fmt: skip
    return "\n\n".join([f"### The main job's overhead: `{result['settings']['command']}`",
                        common.machine_line(result["machine"], result["cpu_share"]),
                        common.markdown_table(["run", "wall s", "training steps s", "evaluation s", "overhead s",
                                               "overhead share", "start-up, probes, saving (s)"], rows)])  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default=MAIN_RANKS, help=f"the sweep's ranks (the main job's: {MAIN_RANKS})")
    p.add_argument("--keep", type=Path, help="a new folder the main job's sweep is written to and kept (its runs "
                   "table is the README's); by default a temporary one, removed")
    p.add_argument("--short", action="store_true", help=f"train {' '.join(SHORT)} instead of the main job's budget")
    common.add_machine_args(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("job_overhead", parser(), run, render, argv)


if __name__ == "__main__":
    main()
