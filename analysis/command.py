"""Regenerate the paper's tables and figures from run folders.

    python -m analysis multirun/2025-01-01/12-00-00-abc [more sweeps ...] --out results/<name>
    python -m analysis.figures ...          # the same command under its earlier name

Writes into ``--out`` (tables as CSV + Markdown, figures as PNG, ``--formats png pdf`` for PDF too): ``table2``,
``table5``, ``table6`` + ``fig_metric_vs_rank``, ``fig3`` + ``fig3_delta`` + ``fig4`` (and their φ grids as CSV),
``subspace_summary`` (+ ``_agg``), ``init_drift``, ``table7``, ``spectra`` + ``fig_spectra``, ``overlap`` +
``fig_overlap``, ``intruders`` + ``fig_intruders``, ``truncation`` + ``truncation_summary`` + ``fig_truncation``,
``forgetting`` + ``fig_forgetting``, ``cross_task`` + ``cross_task_agg`` + ``fig_cross_task``, ``interpolation`` +
``fig_interpolation`` (the one analysis that runs the model: one pair of tasks, ≤ 3 seeds, 11 points), ``runs.csv``
(the runs read) and ``index.md`` (what was produced from which runs, the controls missing, the runs left out, what
was skipped and why). ``analysis.products`` says what each writes. An analysis whose runs are missing is skipped
with one line naming what is missing; the command fails only when nothing at all could be produced (or, with
``--strict``, when an analysis raised an error). Nothing written names a path on this machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from .maths.linalg import use_device
from .products import PRODUCTS, Options
from .runs import RunError, runs_footnote, scan_runs, short_path


@dataclass
class Outcome:
    key: str
    title: str
    files: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    missing_controls: list[str] = field(default_factory=list)
    reason: str = ""
    failed: bool = False


def run_all(runs: pd.DataFrame, out: Path, opts: Options, only: list[str] | None = None) -> list[Outcome]:
    """Produce every analysis the runs allow; one ``Outcome`` per analysis, in ``PRODUCTS`` order."""
    outcomes = []
    for key, (title, make) in PRODUCTS.items():
        if only and key not in only:
            continue
        outcome = Outcome(key, title)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # matplotlib's missing-glyph notices, one per figure
                made = make(runs, opts, out)
            outcome.files, outcome.runs = made.files, made.runs
            outcome.left_out, outcome.missing_controls = made.left_out, made.missing_controls
            print(f"[analysis] {key}: wrote {', '.join(p.name for p in outcome.files)}")
            for line in outcome.missing_controls:
                print(f"[analysis] {key}: missing control: {line}")
        except RunError as err:  # includes MissingRuns: the expected "cannot do this from these runs"
            outcome.reason = str(err)
            print(f"[analysis] {key}: skipped — {err}")
        except Exception as err:  # noqa: BLE001 - one broken analysis must not lose the others; --strict fails
            outcome.reason, outcome.failed = f"error: {type(err).__name__}: {err}", True
            print(f"[analysis] {key}: FAILED — {type(err).__name__}: {err}", file=sys.stderr)
            traceback.print_exc()
        outcomes.append(outcome)
    return outcomes


# An absolute POSIX path of two or more components, up to a quote, space, comma, colon or closing bracket.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"`,:;()\[\]]+/)+([^\s'\"`,:;()\[\]/]+)")


def strip_machine_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last component ('/home/u/.venv/.../all-MiniLM-L6-v2' ->
    'all-MiniLM-L6-v2'): index.md is committed with the results and must not name the machine it was made on."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), text)


def run_label(path: str) -> str:
    """'sweep/run' for a run folder: what files name a run by, never the machine's absolute path."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def write_runs_csv(runs: pd.DataFrame, out: Path) -> Path:
    """The runs read, one row each, without machine paths: model_path shortened, run_dir dropped (label names it)."""
    path = out / "runs.csv"
    runs.drop(columns="run_dir").assign(model_path=runs["model_path"].map(short_path)).to_csv(path, index=False)
    return path


def write_index(out: Path, outcomes: list[Outcome], runs: pd.DataFrame, skipped, argv: list[str]) -> Path:
    lines = [
        "# Analysis index",
        "",
        f"Generated {dt.datetime.now().isoformat(timespec='seconds')} by "
        f"`python -m analysis {' '.join(argv)}`.",
        f"Input: {len(runs)} complete runs ({runs_footnote(runs['run']) if len(runs) else 'none'}); "
        f"runs.csv lists them.",
        "",
        "## Produced",
        "",
    ]
    made = [o for o in outcomes if o.files]
    for o in made:
        lines.append(f"- **{o.title}** — {', '.join(f'`{p.name}`' for p in o.files)} — {runs_footnote(o.runs)}")
        lines += [f"  - missing control: {line}" for line in o.missing_controls]
        if o.left_out:
            lines.append(f"  - left out ({len(o.left_out)}): " + "; ".join(o.left_out))
    lines += ["- nothing"] if not made else []
    missing = [o for o in outcomes if not o.files]
    if missing:
        lines += ["", "## Skipped", ""] + [f"- **{o.title}** — {o.reason}" for o in missing]
    if skipped:
        lines += ["", "## Run folders not read", ""] + [f"- `{run_label(s.path)}` — {s.reason}" for s in skipped]
    path = out / "index.md"
    path.write_text(strip_machine_paths("\n".join(lines) + "\n"))
    return path


def _log_to_wandb(out: Path, outcomes: list[Outcome], runs: pd.DataFrame, argv: list[str], mode: str) -> bool:
    """One W&B analysis run of what was written (analysis/dashboard.py); True when it failed (the files stay)."""
    from .dashboard import log_analysis

    try:
        run_id = log_analysis(out, outcomes, runs, argv, mode)
    except Exception as err:  # noqa: BLE001 - the files are written; say why W&B has none of them
        print(f"[analysis] W&B: FAILED — {type(err).__name__}: {err}", file=sys.stderr)
        return True
    if run_id:
        print(f"[analysis] W&B: analysis run {run_id} in {out / 'wandb'} (offline runs upload with `wandb sync`)")
    return False


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("sweeps", nargs="+", type=Path, help="sweep folders, run folders or folders of sweeps")
    p.add_argument("--out", type=Path, required=True, help="output folder, e.g. results/<name>")
    p.add_argument("--task", help="task for the weight analyses (default: the one with the most runs)")
    p.add_argument("--layer", type=int, help="layer for Figures 3-4 and Table 7 (default: the middle adapted layer)")
    p.add_argument("--ranks", type=int, nargs=2, metavar=("LO", "HI"),
                   help="Figure 3 ranks (default 8 64, else the smallest and largest present)")
    p.add_argument("--seed-rank", type=int, help="Figure 4 rank (default 64, else the largest with two seeds)")
    p.add_argument("--table7-ranks", type=int, nargs="+", default=[4, 64], help="Table 7 ranks (default 4 64)")
    p.add_argument("--intruder-k", type=int, default=10, help="top-k singular vectors examined (default 10)")
    p.add_argument("--intruder-eps", type=float, default=0.5, help="cosine threshold ε (default 0.5)")
    p.add_argument("--random-draws", type=int, default=100,
                   help="random orthonormal U, V drawn for Table 7's random interval (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines (default 0)")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"),
                   help="the two tasks of the interpolation curve (default: the pair with the most common seeds)")
    p.add_argument("--interpolation-seeds", type=int, default=3,
                   help="seeds of the interpolation curve, the lowest common ones (default 3)")
    p.add_argument("--interpolation-points", type=int, default=11,
                   help="values of w from 0 to 1 on the interpolation curve (default 11: 0, 0.1, ..., 1)")
    p.add_argument("--data-dir", help="GLUE folders for the interpolation's dev sets (default: where each run read "
                                      "them, else ../shared/glue)")  # fmt: skip
    p.add_argument("--formats", nargs="+", default=["png"], help="figure formats (default png; add pdf on request)")
    p.add_argument("--only", nargs="+", choices=list(PRODUCTS), help="produce only these analyses")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the SVDs (default 1: these matrices gain little from more, and OpenMP "
                        "threads on a busy machine can make one SVD 100x slower)")  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the SVDs run (default auto: the GPU when torch sees one; float64 either way)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any analysis raises an error")
    p.add_argument("--wandb", nargs="?", const="auto", choices=["auto", "offline", "online", "disabled"],
                   help="log every table and figure as one W&B analysis run in the sweeps' project and group "
                        "(analysis/dashboard.py); without a value: the runs' execution.wandb.mode, else offline")
    args = p.parse_args(argv)
    if args.random_draws < 2:
        p.error(f"--random-draws must be at least 2 (100 or more for a 95% interval), got {args.random_draws}")
    if args.interpolation_seeds < 1 or args.interpolation_points < 2:
        p.error(f"--interpolation-seeds must be at least 1 and --interpolation-points at least 2 (w = 0 and 1), got "
                f"{args.interpolation_seeds} and {args.interpolation_points}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        runs, skipped = scan_runs(args.sweeps)
    except RunError as err:
        print(f"[analysis] {err}", file=sys.stderr)
        return 2
    for s in skipped:
        print(f"[analysis] {s}", file=sys.stderr)
    print(f"[analysis] read {len(runs)} complete runs from {', '.join(map(str, args.sweeps))}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        write_runs_csv(runs, args.out)
    except OSError as err:
        print(f"[analysis] --out {args.out} cannot be written: {err.strerror or err}; choose another --out", file=sys.stderr)
        return 2
    opts = Options(
        task=args.task, layer=args.layer, ranks=tuple(args.ranks) if args.ranks else None, seed_rank=args.seed_rank,
        table7_ranks=tuple(args.table7_ranks), random_draws=args.random_draws, intruder_k=args.intruder_k,
        intruder_eps=args.intruder_eps,
        seed=args.seed, formats=tuple(args.formats), pair=tuple(args.pair) if args.pair else None,
        interpolation_seeds=args.interpolation_seeds, interpolation_points=args.interpolation_points,
        data_dir=args.data_dir,
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    use_device(args.device)
    try:
        outcomes = run_all(runs, args.out, opts, args.only)
    finally:
        torch.set_num_threads(threads)
        use_device("cpu")
    index = write_index(args.out, outcomes, runs, skipped, argv)
    if args.wandb and _log_to_wandb(args.out, outcomes, runs, argv, args.wandb):
        return 1
    produced = sum(bool(o.files) for o in outcomes)
    print(f"[analysis] {produced}/{len(outcomes)} analyses produced; see {index}")
    if produced == 0:
        print("[analysis] nothing could be produced from these runs", file=sys.stderr)
        return 1
    return 1 if args.strict and any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
