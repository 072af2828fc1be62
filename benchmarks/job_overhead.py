"""The main job's time beyond its training steps: start-up, probes and saving against the run's wall time (target
≤ 10%), on the main job's own config (``python -m experiments.sweep rank=4``: MiniLM, SST-2, the CPU budget).

Two runs of the same configuration, each a fresh ``python -m experiments.sweep`` process with W&B offline as the
main job logs, sharing a fresh cache folder: the first tokenizes and measures the forgetting probe's "before" score,
the second reads both from the cache, as every run of a sweep after its first does. For each run, from outside the
process and from its metrics.json:
- wall: the process, start to exit (imports, Hydra, the disk estimate, W&B, the run table included);
- training steps: ``train_examples / train_examples_per_s``; evaluation: the epochs' dev evaluations (the rest of
  ``wall_time_s`` once the steps and ``overhead_s`` are taken out), excluded from the overhead as the issue asks;
- overhead: wall − steps − evaluation = start-up + probes + saving (``overhead_s`` names each, the process's own
  start-up and exit are the remainder).
``--short`` trains fewer examples and epochs than the main job (a shared 2-core machine cannot spare two 5-minute
runs); the overhead is then also projected onto the main job's budget, the steps and evaluations scaled by examples
and epochs (the overhead does not depend on them).

    python -m benchmarks.job_overhead --short
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
MAIN_EXAMPLES, MAIN_EPOCHS = 8000, 3  # the main job's SST-2 budget (conf/task/sst2.yaml's cpu block)


def one_run(folder: Path, name: str, overrides: list[str], cache: Path) -> dict[str, Any]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "LORAKIT_CACHE": str(cache)}  # fmt: skip
    sweep = folder / name
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "experiments.sweep", f"hydra.sweep.dir={sweep}", *overrides],
                          cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the run failed: {done.stderr[-2000:]}")
    (metrics_file,) = sweep.glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    steps = metrics["data"]["train_examples"] * len(metrics["epochs"]) / metrics["train_examples_per_s"]
    named = metrics.get("overhead_s") or {}
    evaluation = metrics["wall_time_s"] - steps - sum(named.values())
    overhead = wall - steps - evaluation
    plan = next((l for l in done.stdout.splitlines() if "this sweep will write about" in l), None)
    return {"run": name, "wall_s": round(wall, 1), "train_wall_time_s": round(metrics["wall_time_s"], 1),
            "training_steps_s": round(steps, 1), "evaluation_s": round(evaluation, 1), "overhead_s": round(overhead, 1),
            "overhead_share": round(overhead / wall, 3), "overhead_by_part_s": named,
            "process_start_and_exit_s": round(wall - metrics["wall_time_s"], 1),
            "epochs": len(metrics["epochs"]), "train_examples": metrics["data"].get("train_examples"),
            "disk_plan": plan}  # fmt: skip


def projected(run: dict[str, Any]) -> dict[str, Any]:
    """The same overhead on the main job's budget: steps scaled by examples x epochs, evaluation by epochs."""
    steps = run["training_steps_s"] * MAIN_EXAMPLES * MAIN_EPOCHS / (run["train_examples"] * run["epochs"])
    evaluation = run["evaluation_s"] * MAIN_EPOCHS / run["epochs"]
    wall = steps + evaluation + run["overhead_s"]
    return {"wall_s": round(wall, 1), "training_steps_s": round(steps, 1), "evaluation_s": round(evaluation, 1),
            "overhead_s": run["overhead_s"], "overhead_share": round(run["overhead_s"] / wall, 3)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.setup(args)
    overrides = ["rank=4", f"execution.threads={args.threads}", *(SHORT if args.short else [])]
    folder = Path(tempfile.mkdtemp(prefix="lorakit-job-overhead-"))
    share = common.CpuShare()
    try:
        with share.measure():
            runs = [one_run(folder, name, overrides, folder / "cache") for name in ("first", "cached")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {"benchmark": "job_overhead", "machine": common.machine_info("cpu", "fp32"),
              "settings": {"command": "python -m experiments.sweep " + " ".join(overrides), "short": args.short,
                           "target": "overhead ≤ 10% of the run's wall time"},
              "runs": runs, "cpu_share": share.record()}  # fmt: skip
    if args.short:
        result["projected_main_job"] = {r["run"]: projected(r) for r in runs}
    return result


def render(result: dict[str, Any]) -> str:
    rows = [[r["run"], r["wall_s"], r["training_steps_s"], r["evaluation_s"], r["overhead_s"],
             f"{r['overhead_share']:.0%}", ", ".join(f"{k} {v:g}" for k, v in r["overhead_by_part_s"].items()),
             r["process_start_and_exit_s"]] for r in result["runs"]]  # fmt: skip
    parts = [f"### The main job's overhead: `{result['settings']['command']}`",
             common.machine_line(result["machine"], result["cpu_share"]),
             common.markdown_table(["run", "wall s", "training steps s", "evaluation s", "overhead s", "overhead share",
                                    "in train(): start-up, probes, saving (s)", "process start and exit s"], rows)]
    if "projected_main_job" in result:
        proj = [[name, p["wall_s"], p["training_steps_s"], p["evaluation_s"], p["overhead_s"], f"{p['overhead_share']:.0%}"]
                for name, p in result["projected_main_job"].items()]  # fmt: skip
        parts += [f"Projected onto the main job's budget ({MAIN_EXAMPLES:,} examples x {MAIN_EPOCHS} epochs; the steps "
                  "and evaluations scaled, the overhead as measured):",
                  common.markdown_table(["run", "wall s", "training steps s", "evaluation s", "overhead s",
                                         "overhead share"], proj)]  # fmt: skip
    return "\n\n".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help=f"train {' '.join(SHORT)} instead of the main job's budget")
    common.add_machine_args(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("job_overhead", parser(), run, render, argv)


if __name__ == "__main__":
    main()
