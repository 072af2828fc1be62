"""What the run monitor (experiments/monitor.py: ΔW's spectra and A's drift at every evaluation, logged to metrics.json
and W&B) adds to a run's wall time at its default settings (every evaluation, every adapted module); target ≤ 5%.

A short MiniLM SST-2 LoRA run (the main job's method: r = 8, Wq and Wv, α = 16) on a few hundred training examples,
evaluated on the full dev split each epoch, W&B offline as by default, one thread. The probes (truncation,
forgetting) are off, so the run is short and the monitor's share of it is larger than in a real run: an upper bound.
Runs with the monitor on and off alternate (off, on, on, off, ...), each through the sweep's own job
(``experiments.job.run_job``) into a temporary folder; two numbers are reported:
- the paired difference of whole-job wall times (including W&B's start and finish), which a loaded machine blurs;
- the monitor's own time, timed inside the run (``spectral_history[*].seconds``), as a share of the run's wall time.

    python -m benchmarks.monitor_overhead                  # ~3 min on 2 CPU cores
    python -m benchmarks.monitor_overhead --train-samples 64 --epochs 1 --repeats 1 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common

TARGET = 0.05


def overrides(args: argparse.Namespace, cache: Path, monitor: bool) -> list[str]:
    return [
        f"rank={args.rank}", "targets=qv", f"train.max_train_samples={args.train_samples}",
        f"train.epochs={args.epochs}",
        "probes.truncation=false", "probes.forgetting=false", f"execution.threads={args.threads}",
        f"execution.cache_dir={cache}", "execution.checkpoint_every=0", "execution.progress=false",
        "execution.wandb.mode=offline", f"execution.monitor.enabled={str(monitor).lower()}",
    ] + ([f"execution.data_dir={args.glue_dir}"] if args.glue_dir else []) + (
        [f"model.path={args.model_path}"] if args.model_path else [])


def one_run(args: argparse.Namespace, root: Path, name: str, monitor: bool) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir

    from experiments.config import CONF_DIR, register_resolvers
    from experiments.job import run_job

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("sweep", overrides=overrides(args, root / "cache", monitor))
    started = time.perf_counter()
    status = run_job(cfg, root / name, name=name, group="bench/monitor_overhead")
    job_s = time.perf_counter() - started
    if status["status"] != "complete":
        raise SystemExit(f"{name}: the run failed: {status.get('error')}")
    metrics = json.loads((root / name / "metrics.json").read_text())
    history = metrics.get("spectral_history") or []
    return {"monitor": monitor, "job_s": round(job_s, 2), "run_wall_s": round(metrics["wall_time_s"], 2),
            "monitor_s": round(sum(r["seconds"] for r in history), 3), "measurements": len(history),
            "modules": len(history[0]["modules"]) if history else 0, "best": metrics["best"][metrics["metric"]]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.setup(args)
    runs: list[dict[str, Any]] = []
    share = common.CpuShare()
    with tempfile.TemporaryDirectory(prefix="monitor_overhead-") as tmp:
        root = Path(tmp)
        one_run(args, root, "warmup", monitor=False)  # tokenizes into the cache and loads the libraries, untimed
        order = [m for i in range(args.repeats) for m in ((False, True) if i % 2 == 0 else (True, False))]
        with share.measure():
            for index, monitor in enumerate(order):
                runs.append(one_run(args, root, f"run{index}", monitor))
        if args.keep_wandb:  # the last monitored run's offline W&B files, e.g. for docs/dashboard_history.png
            kept = next(f"run{i}" for i in reversed(range(len(order))) if order[i])
            import shutil

            shutil.copytree(root / kept / "wandb", args.keep_wandb, dirs_exist_ok=True)
    on = [r for r in runs if r["monitor"]]
    off = [r for r in runs if not r["monitor"]]
    paired = [a["job_s"] / b["job_s"] - 1 for a, b in zip(on, off)]
    own = [r["monitor_s"] / r["run_wall_s"] for r in on]
    return {
        "benchmark": "monitor_overhead",
        "machine": common.machine_info(device, args.dtype),
        "settings": {"model": "minilm", "task": "sst2", "method": "lora", "rank": args.rank, "targets": "qv",
                     "train_examples": args.train_samples, "epochs": args.epochs, "dev_examples": "all (872)",
                     "probes": "off", "wandb": "offline", "monitor": "defaults: every evaluation, every adapted module",
                     "repeats": args.repeats},
        "runs": runs,
        "overhead": {
            "monitor_share_of_run": round(statistics.median(own), 4),
            "paired_job_time_increase": round(statistics.median(paired), 4),
            "paired_job_time_increases": [round(p, 4) for p in paired],
            "target": TARGET,
            "met": statistics.median(own) <= TARGET,
        },
        "cpu_share": share.record(),
    }


def render(result: dict[str, Any]) -> str:
    s, o = result["settings"], result["overhead"]
    rows = [["on" if r["monitor"] else "off", r["job_s"], r["run_wall_s"], r["monitor_s"], r["measurements"],
             r["modules"], r["best"]] for r in result["runs"]]
    verdict = "met" if o["met"] else "missed"
    return "\n\n".join([
        f"### Run monitor overhead (MiniLM SST-2 LoRA r={s['rank']} {s['targets']}, {s['train_examples']} training "
        f"examples × {s['epochs']} epochs, full dev set, probes off, W&B offline)",
        common.machine_line(result["machine"], result["cpu_share"]),
        common.markdown_table(["monitor", "job s", "run wall s", "monitor s", "measurements", "modules",
                               "dev accuracy"], rows),
        f"The monitor's own time is {o['monitor_share_of_run']:.2%} of a run's wall time (median over the monitored "
        f"runs; target ≤ {o['target']:.0%}: {verdict}). Whole-job wall time with it against without, paired: "
        f"{o['paired_job_time_increase']:+.2%} (each pair: "
        f"{', '.join(f'{p:+.2%}' for p in o['paired_job_time_increases'])}); the load of other processes (above) "
        f"blurs this one.",
    ])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--train-samples", type=int, default=320, help="training examples (default 320)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="pairs of runs, monitor off and on (default 2)")
    p.add_argument("--glue-dir", type=Path, default=None, help="default: the sweep's (execution.data_dir)")
    p.add_argument("--model-path", type=Path, default=None, help="another checkpoint than MiniLM (tests: a tiny one)")
    p.add_argument("--keep-wandb", type=Path, default=None, help="copy the last monitored run's wandb/ folder here")
    common.add_machine_args(p)
    p.set_defaults(threads=1)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.run_cli("monitor_overhead", parser(), run, render, argv)


if __name__ == "__main__":
    main()
