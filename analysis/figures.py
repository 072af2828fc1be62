"""Regenerate the paper's tables and figures from run folders.

    python -m analysis.figures multirun/2025-01-01/12-00-00-abc [more sweeps ...] --out results/<name>

Writes into ``--out``: ``table2``, ``table5``, ``table6`` (CSV + Markdown), ``fig_metric_vs_rank``, ``fig3``,
``fig4`` (PNG + PDF, and the φ grids as CSV), ``subspace_summary`` (+ ``_agg``), ``table7``, ``spectra`` +
``fig_spectra``, ``overlap`` + ``fig_overlap``, ``intruders`` + ``fig_intruders``, ``runs.csv`` (the runs read) and ``index.md`` (what was produced from which runs, what was
skipped and why). An analysis whose runs are missing is skipped with one line naming what is missing; the command
fails only when nothing at all could be produced (or, with ``--strict``, when an analysis raised an error).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from . import build, plots
from .runs import RunError, runs_footnote, scan_runs


@dataclass
class Options:
    task: str | None = None
    layer: int | None = None
    ranks: tuple[int, int] | None = None
    seed_rank: int | None = None
    table7_ranks: tuple[int, ...] = (4, 64)
    intruder_k: int = 10
    intruder_eps: float = 0.5
    seed: int = 0
    formats: tuple[str, ...] = ("png", "pdf")


@dataclass
class Outcome:
    key: str
    title: str
    files: list[Path] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    reason: str = ""
    failed: bool = False


Product = Callable[[pd.DataFrame, Options, Path], tuple[list[Path], list[str]]]


def _table(make_table: Callable[[pd.DataFrame], build.Table], stem: str) -> Product:
    def make(runs, opts, out):
        table = make_table(runs)
        return build.write_table(table, out, stem), table.runs

    return make


def _metric_vs_rank(runs, opts, out):
    table = build.table6(runs)
    files = build.write_table(table, out, "table6")
    fig = plots.plot_metric_vs_rank(runs[runs["label"].isin(table.runs) | (runs["method"] == "full")])
    return files + plots.save_figure(fig, out, "fig_metric_vs_rank", table.runs, formats=opts.formats), table.runs


def _grid_values(data, out: Path, stem: str) -> Path:
    """The numbers behind a φ figure, one row per (panel, i, j), so a reader can quote them without the picture."""
    rows = [{"panel": title, "i": i + 1, "j": j + 1, "phi": float(grid[i, j])}
            for title, grid in data.grids.items() for i in range(grid.shape[0]) for j in range(grid.shape[1])]
    path = out / f"{stem}.csv"
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.4f")
    return path


def _figure3(runs, opts, out):
    data = build.figure3_grids(runs, opts.task, opts.layer, opts.ranks)
    fig = plots.plot_subspace_grids(data, zoom=8)  # the paper's zoom: i ≤ 8, j ≤ 8
    files = plots.save_figure(fig, out, "fig3", data.runs, data.notes, opts.formats)
    return files + [_grid_values(data, out, "fig3")], data.runs


def _figure4(runs, opts, out):
    data = build.figure4_grids(runs, opts.task, opts.layer, opts.seed_rank, opts.seed)
    fig = plots.plot_subspace_grids(data)
    files = plots.save_figure(fig, out, "fig4", data.runs, data.notes, opts.formats)
    return files + [_grid_values(data, out, "fig4")], data.runs


def _subspace_summary(runs, opts, out):
    table = build.subspace_summary(runs, opts.task, seed=opts.seed)
    files = build.write_table(table, out, "subspace_summary")
    return files + build.write_table(build.subspace_summary_agg(table), out, "subspace_summary_agg"), table.runs


def _table7(runs, opts, out):
    table = build.table7(runs, opts.task, opts.layer, opts.table7_ranks, opts.seed)
    return build.write_table(table, out, "table7"), table.runs


def _spectra(runs, opts, out):
    table, curves = build.spectra_table(runs, opts.task)
    layers = sorted(set(table.frame["layer"].dropna().astype(int)))
    layer = opts.layer if opts.layer in layers else layers[len(layers) // 2]
    fig = plots.plot_spectra(table.frame, curves, layer)
    files = build.write_table(table, out, "spectra")
    return files + plots.save_figure(fig, out, "fig_spectra", table.runs, formats=opts.formats), table.runs


def _overlap(runs, opts, out):
    table = build.overlap_table(runs, opts.task)
    fig = plots.plot_overlap(table.frame)
    files = build.write_table(table, out, "overlap")
    return files + plots.save_figure(fig, out, "fig_overlap", table.runs, formats=opts.formats), table.runs


def _intruders(runs, opts, out):
    table = build.intruder_table(runs, opts.task, opts.intruder_k, opts.intruder_eps)
    fig = plots.plot_intruders(table.frame)
    files = build.write_table(table, out, "intruders")
    return files + plots.save_figure(fig, out, "fig_intruders", table.runs, formats=opts.formats), table.runs


PRODUCTS: dict[str, tuple[str, Product]] = {
    "table2": ("Table 2: LoRA vs full fine-tuning per task", _table(build.table2, "table2")),
    "table5": ("Table 5: metric per weight type at a fixed budget", _table(build.table5, "table5")),
    "table6": ("Table 6: metric vs rank (and fig_metric_vs_rank)", _metric_vs_rank),
    "fig3": ("Figure 3: subspace similarity between ranks", _figure3),
    "fig4": ("Figure 4: subspace similarity between seeds vs random", _figure4),
    "subspace": ("Figures 3-4 over every layer and pair, with the spread", _subspace_summary),
    "table7": ("Table 7: ΔW vs W", _table7),
    "spectra": ("ΔW spectra and rank at 90% energy", _spectra),
    "overlap": ("LoRA vs full fine-tuning subspace overlap", _overlap),
    "intruders": ("Intruder dimensions, LoRA vs full fine-tuning", _intruders),
}


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
                outcome.files, outcome.runs = make(runs, opts, out)
            print(f"[analysis] {key}: wrote {', '.join(p.name for p in outcome.files)}")
        except RunError as err:  # includes MissingRuns: the expected "cannot do this from these runs"
            outcome.reason = str(err)
            print(f"[analysis] {key}: skipped — {err}")
        except Exception as err:  # noqa: BLE001 - one broken analysis must not lose the others; --strict fails
            outcome.reason, outcome.failed = f"error: {type(err).__name__}: {err}", True
            print(f"[analysis] {key}: FAILED — {type(err).__name__}: {err}", file=sys.stderr)
            traceback.print_exc()
        outcomes.append(outcome)
    return outcomes


def write_index(out: Path, outcomes: list[Outcome], runs: pd.DataFrame, skipped, argv: list[str]) -> Path:
    lines = [
        "# Analysis index",
        "",
        f"Generated {dt.datetime.now().isoformat(timespec='seconds')} by "
        f"`python -m analysis.figures {' '.join(argv)}`.",
        f"Input: {len(runs)} complete runs ({runs_footnote(runs['label']) if len(runs) else 'none'}); "
        f"runs.csv lists them.",
        "",
        "## Produced",
        "",
    ]
    made = [o for o in outcomes if o.files]
    lines += [f"- **{o.title}** — {', '.join(f'`{p.name}`' for p in o.files)} — {runs_footnote(o.runs)}" for o in made]
    lines += ["- nothing"] if not made else []
    missing = [o for o in outcomes if not o.files]
    if missing:
        lines += ["", "## Skipped", ""] + [f"- **{o.title}** — {o.reason}" for o in missing]
    if skipped:
        lines += ["", "## Run folders not read", ""] + [f"- `{s.path}` — {s.reason}" for s in skipped]
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines (default 0)")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], help="figure formats (default png pdf)")
    p.add_argument("--only", nargs="+", choices=list(PRODUCTS), help="produce only these analyses")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the SVDs (default 1: these matrices gain little from more, and OpenMP "
                        "threads on a busy machine can make one SVD 100x slower)")  # fmt: skip
    p.add_argument("--strict", action="store_true", help="exit non-zero when any analysis raises an error")
    return p.parse_args(argv)


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
    args.out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(args.out / "runs.csv", index=False)
    opts = Options(
        task=args.task, layer=args.layer, ranks=tuple(args.ranks) if args.ranks else None, seed_rank=args.seed_rank,
        table7_ranks=tuple(args.table7_ranks), intruder_k=args.intruder_k, intruder_eps=args.intruder_eps,
        seed=args.seed, formats=tuple(args.formats),
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        outcomes = run_all(runs, args.out, opts, args.only)
    finally:
        torch.set_num_threads(threads)
    index = write_index(args.out, outcomes, runs, skipped, argv)
    produced = sum(bool(o.files) for o in outcomes)
    print(f"[analysis] {produced}/{len(outcomes)} analyses produced; see {index}")
    if produced == 0:
        print("[analysis] nothing could be produced from these runs", file=sys.stderr)
        return 1
    return 1 if args.strict and any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
