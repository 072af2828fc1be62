"""What each analysis of ``python -m analysis`` writes: one function per analysis, from the run table to files
(tables as CSV + Markdown through ``tables.write_table``, figures through ``plots.save_figure``).

Each returns a ``Made`` (files, the runs it used, the runs it left out and the controls it lacks, for index.md) or
raises ``RunError`` / ``MissingRuns`` naming what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from . import plots, roles
from . import tables


@dataclass
class Options:
    task: str | None = None
    layer: int | None = None
    ranks: tuple[int, int] | None = None
    seed_rank: int | None = None
    table7_ranks: tuple[int, ...] = (4, 64)
    random_draws: int = 100
    intruder_k: int = 10
    intruder_eps: float = 0.5
    seed: int = 0
    formats: tuple[str, ...] = ("png",)
    pair: tuple[str, str] | None = None
    interpolation_seeds: int = 3
    interpolation_points: int = 11
    data_dir: str | None = None


@dataclass
class Made:
    files: list[Path]
    runs: list[str]
    left_out: list[str] = field(default_factory=list)
    missing_controls: list[str] = field(default_factory=list)


Product = Callable[[pd.DataFrame, Options, Path], Made]


def _written(made: list[tuple[tables.Table, str]], out: Path, figures: list[Path] = ()) -> Made:
    """Write each (table, stem) and gather what index.md reports about them."""
    files = [p for table, stem in made for p in tables.write_table(table, out, stem)] + list(figures)
    runs = list(dict.fromkeys(label for table, _ in made for label in table.runs))
    left_out = list(dict.fromkeys(line for table, _ in made for line in table.left_out))
    missing = list(dict.fromkeys(line for table, _ in made for line in table.missing_controls))
    return Made(files, runs, left_out, missing)


def _table(make_table: Callable[[pd.DataFrame], tables.Table], stem: str) -> Product:
    def make(runs, opts, out):
        return _written([(make_table(runs), stem)], out)

    return make


def _metric_vs_rank(runs, opts, out):
    table = tables.table6(runs)
    fig = plots.plot_metric_vs_rank(runs[runs["run"].isin(table.runs) | roles.reference(runs)])
    return _written([(table, "table6")], out, plots.save_figure(fig, out, "fig_metric_vs_rank", table.runs,
                                                                 formats=opts.formats))  # fmt: skip


def _grid_values(grids: list, out: Path, stem: str) -> Path:
    """The numbers behind φ figures, one row per (panel, i, j), so a reader can quote them without the picture."""
    rows = [{"panel": title, "i": i + 1, "j": j + 1, "phi": float(grid[i, j])}
            for data in grids for title, grid in data.grids.items()
            for i in range(grid.shape[0]) for j in range(grid.shape[1])]  # fmt: skip
    path = out / f"{stem}.csv"
    pd.DataFrame(rows).to_csv(path, index=False, float_format="%.4f")
    return path


def _figure3(runs, opts, out):
    on_a = tables.figure3_grids(runs, opts.task, opts.layer, opts.ranks, on="A")
    on_delta = tables.figure3_grids(runs, opts.task, opts.layer, opts.ranks, on="delta")
    files = []
    for data, stem in ((on_a, "fig3"), (on_delta, "fig3_delta")):
        fig = plots.plot_subspace_grids(data, zoom=8)  # the paper's zoom: i ≤ 8, j ≤ 8
        files += plots.save_figure(fig, out, stem, data.runs, data.notes, opts.formats)
    return Made(files + [_grid_values([on_a, on_delta], out, "fig3")], on_a.runs)


def _figure4(runs, opts, out):
    data = tables.figure4_grids(runs, opts.task, opts.layer, opts.seed_rank, opts.seed)
    files = plots.save_figure(plots.plot_subspace_grids(data), out, "fig4", data.runs, data.notes, opts.formats)
    return Made(files + [_grid_values([data], out, "fig4")], data.runs)


def _subspace_summary(runs, opts, out):
    table = tables.subspace_summary(runs, opts.task, seed=opts.seed)
    return _written([(table, "subspace_summary"), (tables.subspace_summary_agg(table), "subspace_summary_agg")], out)


def _init_drift(runs, opts, out):
    return _written([(tables.init_drift_table(runs, opts.task), "init_drift")], out)


def _table7(runs, opts, out):
    table = tables.table7(runs, opts.task, opts.layer, opts.table7_ranks, opts.seed, opts.random_draws)
    return _written([(table, "table7")], out)


def _spectra(runs, opts, out):
    table, curves = tables.spectra_table(runs, opts.task)
    layers = sorted(set(table.frame["layer"].dropna().astype(int)))
    layer = opts.layer if opts.layer in layers else layers[len(layers) // 2]
    fig = plots.plot_spectra(table.frame, curves, layer)
    return _written([(table, "spectra")], out, plots.save_figure(fig, out, "fig_spectra", table.runs,
                                                                  formats=opts.formats))  # fmt: skip


def _overlap(runs, opts, out):
    table = tables.overlap_table(runs, opts.task)
    fig = plots.plot_overlap(table.frame)
    return _written([(table, "overlap")], out, plots.save_figure(fig, out, "fig_overlap", table.runs,
                                                                  formats=opts.formats))  # fmt: skip


def _intruders(runs, opts, out):
    table, by_run = tables.intruder_tables(runs, opts.task, opts.intruder_k, opts.intruder_eps)
    fig = plots.plot_intruders(table.frame)
    return _written([(table, "intruders"), (by_run, "intruders_runs")], out,
                    plots.save_figure(fig, out, "fig_intruders", table.runs, formats=opts.formats))


def _truncation(runs, opts, out):
    curves, summary = tables.truncation_tables(runs)
    fig = plots.plot_truncation(curves.frame, summary.frame)
    figure = plots.save_figure(fig, out, "fig_truncation", summary.runs, formats=opts.formats)
    return _written([(curves, "truncation"), (summary, "truncation_summary")], out, figure)


def _forgetting(runs, opts, out):
    table = tables.forgetting_table(runs)
    fig = plots.plot_forgetting(table.frame)
    return _written([(table, "forgetting")], out, plots.save_figure(fig, out, "fig_forgetting", table.runs,
                                                                     formats=opts.formats))  # fmt: skip


def _cross_task(runs, opts, out):
    pairs = tables.cross_task_pairs(runs, opts.random_draws, opts.seed)
    panels = {f"{side} ({factor})": {f"off-diagonal: {pairing}": tables.cross_task_matrix(pairs, side, pairing)
                                     for pairing in ("cross-task, same seed", "cross-task, other seeds")}
              for side, factor in (("column space", "B"), ("row space", "A"))}  # fmt: skip
    first = pairs.frame[pairs.frame["LoRA"] == pairs.frame["LoRA"].iloc[0]]
    chance = "; ".join(f"{side} {first[f'random {side}'].iloc[0]:.3f} [{first[f'random {side} 2.5%'].iloc[0]:.3f}, "
                       f"{first[f'random {side} 97.5%'].iloc[0]:.3f}]" for side in ("column space", "row space"))
    title = (f"Cross-task φ(r, r) of ΔW — {first['LoRA'].iloc[0]}: mean over layers, modules and seed pairs; "
             f"diagonal: same task, other seeds\nrandom r-dim subspaces (mean [95%]): {chance}")  # fmt: skip
    figure = plots.save_figure(plots.plot_cross_task(panels, title), out, "fig_cross_task", pairs.runs,
                               formats=opts.formats)  # fmt: skip
    made = [(tables.cross_task_table(pairs), "cross_task"), (tables.cross_task_agg(pairs), "cross_task_agg")]
    return _written(made, out, figure)


def _lr_selection(runs, opts, out):
    from .tables.lr_search import selection_search_table

    return _written([(selection_search_table(runs, opts.seed), "lr_selection")], out)


def _interpolation(runs, opts, out):
    table = tables.interpolation_curves(runs, opts.pair, opts.interpolation_seeds, opts.interpolation_points,
                                          opts.data_dir)  # fmt: skip
    figure = plots.save_figure(plots.plot_interpolation(table.frame), out, "fig_interpolation", table.runs,
                               formats=opts.formats)  # fmt: skip
    return _written([(table, "interpolation")], out, figure)


def _lr_search(runs, opts, out):
    trials, summary = tables.lr_search_tables(runs)
    figure = plots.save_figure(plots.plot_lr_search(summary.frame, trials.frame), out, "fig_lr_search", summary.runs,
                               formats=opts.formats)  # fmt: skip
    return _written([(trials, "lr_search_runs"), (summary, "lr_search")], out, figure)


# --- beyond the paper (issue 23): each builder imported where used, beside the Section 7 analyses -----------------
LR_SEARCH = Path(__file__).resolve().parent.parent / "results" / "lr_search"  # the committed learning-rate search


def _through_the_door(make: Product) -> Product:
    """An analysis that rebuilds runs' models and data (experiments/gradients.py, the one door): a run whose
    config.yaml cannot rebuild them (a hand-made folder, data not on this machine) makes it skip with one line,
    naming why, like any analysis whose runs are missing."""

    def guarded(runs, opts, out):
        from experiments.errors import ConfigError

        from .runs import MissingRuns

        try:
            return make(runs, opts, out)
        except (ConfigError, FileNotFoundError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MissingRuns(f"needs runs whose config.yaml rebuilds their model and data ({reason})") from err

    return guarded


def _rank_allocation(runs, opts, out):
    from .tables.rank_allocation import rank_allocation_table

    table = rank_allocation_table(runs, opts.task)
    figure = plots.save_figure(plots.plot_rank_allocation(table.frame), out, "fig_rank_allocation", table.runs,
                               formats=opts.formats)  # fmt: skip
    return _written([(table, "rank_allocation")], out, figure)


def _gradient_alignment(runs, opts, out):
    from .runs import MissingRuns
    from .tables.gradient_alignment import alignment_curve_table, alignment_summary, gradient_alignment_tables

    table, by_seed = gradient_alignment_tables(runs, opts.task, draws=opts.random_draws, seed=opts.seed,
                                               data_dir=opts.data_dir)
    written = [(table, "gradient_alignment"), (alignment_summary(table), "gradient_alignment_summary"),
               (by_seed, "gradient_alignment_seeds")]
    on_task = runs[runs["task"] == table.frame["task"].iloc[0]]
    try:
        written.append((alignment_curve_table(on_task), "gradient_alignment_curve"))
    except MissingRuns:  # the runs did not measure it while training: the end point alone
        pass
    return _written(written, out)


def _intruder_cost(runs, opts, out):
    from .tables.intruder_cost import intruder_cost_table

    table = intruder_cost_table(runs, opts.task, k=opts.intruder_k, threshold=opts.intruder_eps,
                                seeds=opts.interpolation_seeds, data_dir=opts.data_dir)  # fmt: skip
    return _written([(table, "intruder_cost")], out)


def _sharpness(runs, opts, out):
    """λ_max for every configuration with a searched rate on the task: any rate sweep among the runs given
    (beyond_sharpness) and, when the runs are of the model it searched, the committed search (results/lr_search), each
    configuration rebuilt at init from one of its runs' folders, or from the overrides its committed run recorded.
    Runs with no rate sweep and of another model: one configuration per run label, without the rank correlation."""
    from .runs import MissingRuns
    from .tables.lr_search import lr_search_tables
    from .tables.sharpness import best_rates, searched_configurations, sharpness_table

    task = opts.task or runs["task"].value_counts().idxmax()
    on_task = runs[runs["task"] == task]
    trials, summary = [], []
    if set(on_task["model"]) <= set(pd.read_csv(LR_SEARCH / "runs.csv", usecols=["model"])["model"]):
        trials.append(pd.read_csv(LR_SEARCH / "lr_search_runs.csv").rename(columns={"label": "run"}))
        summary.append(pd.read_csv(LR_SEARCH / "lr_search.csv"))
    try:
        new_trials, new_summary = lr_search_tables(on_task)
        trials.append(new_trials.frame)
        summary.append(new_summary.frame)
    except MissingRuns:  # no rate sweep among the runs given
        pass
    if not summary:
        first = on_task.sort_values("seed").groupby("label").head(1)  # one run per configuration
        methods = {row["label"]: row["run_dir"] for _, row in first.iterrows()}
        return _written([(sharpness_table(methods, data_dir=opts.data_dir), "sharpness")], out)
    trials, summary = pd.concat(trials, ignore_index=True), pd.concat(summary, ignore_index=True)
    methods = searched_configurations(trials, best_rates(summary, task), dict(zip(runs["run"], runs["run_dir"])))
    return _written([(sharpness_table(methods, summary, data_dir=opts.data_dir), "sharpness")], out)


def _budget_ladder(runs, opts, out):
    from .tables.budget_ladder import budget_ladder_table

    table = budget_ladder_table(runs)
    figure = plots.save_figure(plots.plot_budget_ladder(table.frame), out, "fig_budget_ladder", table.runs,
                               formats=opts.formats)  # fmt: skip
    return _written([(table, "budget_ladder")], out, figure)


def _predictions(runs, opts, out):
    from .runs import MissingRuns
    from .verdicts import write_predictions

    path = write_predictions(runs, out)
    if path is None:
        raise MissingRuns("per-example predictions need runs that kept predictions.npz (GLUE runs written since "
                          "issue 22)")
    return Made([path], list(runs["run"]))


PRODUCTS: dict[str, tuple[str, Product]] = {
    "table2": ("Table 2: methods compared per task", _table(tables.table2, "table2")),
    "table2_verdicts": ("Table 2's verdicts: each method at its best rate per task against full FT (rule 6)",
                        _table(tables.table2_verdicts, "table2_verdicts")),
    "budget_ladder": ("The budget ladder: LoRA − full FT against the examples trained on (and fig_budget_ladder)",
                      _budget_ladder),
    "predictions": ("Every run's per-example dev outputs, for verdicts with example-level intervals",
                    _predictions),
    "table3": ("Table 3: generation metrics (E2E NLG)", _table(tables.table3, "table3")),
    "generations": ("What the generation runs wrote, beside the references", _table(tables.generation_samples,
                                                                                     "generations")),
    "table5": ("Table 5: metric per weight type at a fixed budget", _table(tables.table5, "table5")),
    "table6": ("Table 6: metric vs rank (and fig_metric_vs_rank)", _metric_vs_rank),
    "fig3": ("Figure 3: subspace similarity between ranks, of A and of ΔW's row space", _figure3),
    "fig4": ("Figure 4: subspace similarity between seeds vs random", _figure4),
    "subspace": ("Figures 3-4 over every layer and pair, with the spread", _subspace_summary),
    "init_drift": ("How far A moved from its init (‖A−A₀‖/‖A₀‖, φ(A, A₀))", _init_drift),
    "table7": ("Table 7: ΔW vs W, against random directions", _table7),
    "spectra": ("ΔW spectra, rank at 90% energy, signal rank above the noise floors", _spectra),
    "overlap": ("LoRA vs full fine-tuning subspace overlap", _overlap),
    "intruders": ("Intruder dimensions, raw and at a common norm both ways (full FT's, LoRA's)", _intruders),
    "truncation": ("Rank truncation: metric vs k, the rank keeping 90% of the gain", _truncation),
    "forgetting": ("Forgetting: task gain vs the base model's skill lost", _forgetting),
    "cross_task": ("Cross-task subspaces: φ between the ΔW of adapters on different tasks", _cross_task),
    "lr_search": ("Learning rates tried (search and confirmation) and the one rule 6 chooses", _lr_search),
    "lr_selection": ("Learning rates searched on the selection slice (one seed), the dev set kept for report",
                     _lr_selection),
    "interpolation": ("Interpolating two tasks' adapters: each task's metric along w·A + (1−w)·B", _interpolation),
    "rank_allocation": ("Beyond: per-module rank from a full fine-tune's ΔW energy at uniform r=8's budget",
                        _rank_allocation),
    "gradient_alignment": ("Beyond: φ between G₀'s top-r subspaces and LoRA's B / Aᵀ and ΔW, vs random",
                           _through_the_door(_gradient_alignment)),
    "intruder_cost": ("Beyond: intruders scaled by λ, dev metric and forgetting, vs top non-intruders",
                      _through_the_door(_intruder_cost)),
    "sharpness": ("Beyond: λ_max at init per method beside its best learning rate (Spearman ρ)",
                  _through_the_door(_sharpness)),
}
