"""Matplotlib figures in the paper's layout. Each function takes computed numbers and returns a Figure;
``save_figure`` writes PNG + PDF with a footnote naming the runs the figure came from."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.lines  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .runs import KIND_LABELS, parse_module, runs_footnote, targets_label  # noqa: E402
from . import roles  # noqa: E402
from . import tables  # noqa: E402
from .tables import SubspaceGrids, task_order  # noqa: E402

CMAP = "viridis"
DPI = 150


def save_figure(fig: Figure, out: Path, stem: str, runs: Sequence[str], notes: Sequence[str] = (),
                formats: Sequence[str] = ("png", "pdf")) -> list[Path]:  # fmt: skip
    """Write ``out/stem.<fmt>`` for each format, with the source runs (and notes) as a footnote; close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    footnote = "; ".join([*notes, runs_footnote(runs)])
    # Below the axes (y < 0); bbox_inches="tight" grows the saved image to include it.
    fig.text(0.005, -0.01, footnote, fontsize=6, color="0.35", ha="left", va="top", wrap=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _ticks(n: int) -> list[int]:
    return list(range(1, n + 1)) if n <= 10 else sorted({int(round(x)) for x in np.linspace(1, n, 8)})


def _heatmap(ax, grid: torch.Tensor, title: str, xlabel: str, ylabel: str):
    rows, cols = grid.shape
    image = ax.imshow(grid.numpy(), cmap=CMAP, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest",
                      extent=(0.5, cols + 0.5, rows + 0.5, 0.5))  # fmt: skip
    ax.set_xticks(_ticks(cols))
    ax.set_yticks(_ticks(rows))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=7)
    return image


def plot_subspace_grids(data: SubspaceGrids, zoom: int | None = None) -> Figure:
    """Heatmaps of φ(i, j), one panel per grid, colour bar 0–1; with ``zoom``, each grid larger than zoom x zoom gets
    a second panel of its top-left zoom x zoom corner (Figure 3's right half)."""
    panels = [(title, grid) for title, grid in data.grids.items()]
    if zoom is not None:
        panels += [(f"{title}, i, j ≤ {zoom}", grid[:zoom, :zoom]) for title, grid in data.grids.items()
                   if max(grid.shape) > zoom]  # fmt: skip
    widths = [min(3.0, max(1.0, g.shape[1] / max(g.shape[0], 1))) for _, g in panels]  # 8 x 64 grids drawn wide
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * sum(widths) + 1.2, 3.0), layout="constrained",
                             gridspec_kw={"width_ratios": widths}, squeeze=False)  # fmt: skip
    image = None
    for n, (ax, (title, grid)) in enumerate(zip(axes[0], panels)):
        image = _heatmap(ax, grid, title, "j", "i" if n == 0 else "")
    fig.colorbar(image, ax=list(axes[0]), fraction=0.025, pad=0.02, label="φ(i, j)")
    fig.suptitle(f"{data.title}\n{data.ylabel}; {data.xlabel}", fontsize=10)
    return fig


def plot_metric_vs_rank(runs: pd.DataFrame) -> Figure:
    """Table 6 as a plot: median metric (×100) vs r per target set, min–max over seeds shaded, full FT dashed."""
    lora = runs[runs["has_factors"].eq(True) & runs["rank"].notna()]
    lora = lora.assign(config=tables.config_names(lora, ("task", "rank")))
    tasks = _by_task(lora)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.0 * len(tasks), 3.2), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        on_task = lora[lora["task"] == task]
        for config, group in on_task.groupby("config"):
            stats = group.groupby("rank")["score"].agg(["median", "min", "max"]).sort_index() * 100
            ranks = stats.index.astype(int)
            ax.plot(ranks, stats["median"], marker="o", label=config)
            ax.fill_between(ranks, stats["min"], stats["max"], alpha=0.2)
        full = runs[roles.reference(runs) & (runs["task"] == task)]
        for config_id, group in full.groupby("config_id"):
            ax.axhline(group["score"].median() * 100, color="0.3", ls="--", lw=1, label=group["label"].iloc[0])
        ax.set_xscale("log", base=2)
        ranks = sorted(int(r) for r in on_task["rank"].unique())
        ax.set_xticks(ranks, [str(r) for r in ranks])
        _label_task_panel(ax, "LoRA rank r", f"{on_task['metric'].iloc[0]} ×100 (best epoch)",
                          f"{task}: metric vs rank (median over seeds, band = min–max)")
    return fig


def _config_styles(configs: Sequence[str]) -> dict[str, str]:
    """Full FT solid, each LoRA config its own dash pattern, so colour can stand for the module kind; the noise floors
    (drawn grey) dotted."""
    dashes = iter(["--", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (3, 1, 1, 1))] * 4)
    return {c: "-" if c == "full FT" else ":" if _is_floor(c) else next(dashes) for c in configs}


def _is_floor(config: str) -> bool:
    return config.startswith("noise floor")


def _floor_color(config: str) -> str:
    """Greys for the noise floors: light for the seed difference, dark for shuffled labels."""
    return "0.3" if "shuffled" in config else "0.65"


def plot_spectra(frame: pd.DataFrame, curves: dict[str, dict[str, torch.Tensor]], layer: int) -> Figure:
    """(a) cumulative energy Σ_{l≤k}σ_l²/Σσ² vs k at one layer; (b) rank reaching 90% energy per layer (median
    over seeds). Colour: module kind; line style: full FT (solid) or LoRA config; grey dotted: the noise floors."""
    fig, (ax_e, ax_r) = plt.subplots(1, 2, figsize=(12, 3.8), layout="constrained")
    colors = {kind: f"C{i}" for i, kind in enumerate(KIND_LABELS)}
    styles = _config_styles(list(curves))
    for config, by_module in curves.items():
        for name, energy in by_module.items():
            mid = parse_module(name)
            if mid.layer == layer and energy.any():
                k = np.arange(1, energy.numel() + 1)
                color = _floor_color(config) if _is_floor(config) else colors.get(mid.kind, "0.5")
                ax_e.plot(k, energy.numpy(), ls=styles[config], color=color, lw=1.3)
    ax_e.axhline(0.9, color="0.5", ls=":", lw=1)
    ax_e.set_xscale("log")
    ax_e.set_xlabel("k (number of singular directions)")
    ax_e.set_ylabel(r"cumulative energy $\sum_{l\leq k}\sigma_l^2 / \sum_l \sigma_l^2$")
    ax_e.set_title(f"(a) ΔW spectra, layer {layer} (dotted: 90%)", fontsize=10)
    ax_e.grid(alpha=0.3)
    by_kind = {label: kind for kind, label in KIND_LABELS.items()}
    for config, group in frame.groupby("method", sort=False):
        for module, rows in group.groupby("module", sort=False):
            color = _floor_color(config) if _is_floor(config) else colors.get(by_kind.get(module), "0.5")
            ax_r.plot(rows["layer"], rows["rank@90%"], ls=styles.get(config, "--"), marker="o", ms=3, color=color)
    ax_r.set_yscale("log")
    ax_r.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_r.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax_r.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_r.set_xlabel("layer")
    ax_r.set_ylabel("rank reaching 90% of Σσ²")
    ax_r.set_title("(b) rank at 90% energy per layer and module", fontsize=10)
    ax_r.xaxis.get_major_locator().set_params(integer=True)
    ax_r.grid(alpha=0.3)
    kinds = [k for k in KIND_LABELS if k in {by_kind.get(m) for m in frame["module"]}]
    module_handles = [matplotlib.lines.Line2D([], [], color=colors[k], label=KIND_LABELS[k]) for k in kinds]
    config_handles = [matplotlib.lines.Line2D([], [], color=_floor_color(c) if _is_floor(c) else "0.2", ls=ls, label=c)
                      for c, ls in styles.items()]  # fmt: skip
    fig.legend(handles=module_handles + config_handles, loc="outside right upper", fontsize=7, title="module / update",
               title_fontsize=7)  # fmt: skip
    return fig


def plot_overlap(frame: pd.DataFrame) -> Figure:
    """φ(r, r) between LoRA's and full FT's top-r left subspaces per layer, random-subspace r/d dotted."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    for i, ((config, module), rows) in enumerate(frame.groupby(["LoRA", "module"], sort=False)):
        ax.plot(rows["layer"], rows["φ left (k=r)"], "-o", ms=4, color=f"C{i}", label=f"{module}, {config}")
        ax.plot(rows["layer"], rows["random left r/d_out"], ":", color=f"C{i}", lw=1)
    ax.plot([], [], ":", color="0.4", label="random subspaces (r/d)")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("φ(r, r), left singular vectors")
    ax.set_title("Top-r subspace overlap of ΔW: LoRA vs full fine-tuning", fontsize=10)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def plot_intruders(frame: pd.DataFrame) -> Figure:
    """Intruder counts per layer (median over seeds), one panel per module kind, one bar per method; a row per common
    norm (full FT's, LoRA's) when the table has it."""
    lora_modules = set(frame.loc[frame["method"] != "full FT", "module"])
    modules = [m for m in KIND_LABELS.values() if m in (lora_modules or set(frame["module"]))]
    methods = list(dict.fromkeys(frame["method"]))
    counts = [c for c in ("intruders", "intruders at matched norm", "intruders at LoRA's norm")
              if c in frame and frame[c].notna().any()]  # fmt: skip
    fig, axes = plt.subplots(len(counts), len(modules), figsize=(3.6 * len(modules) + 1.5, 3.0 * len(counts) + 0.4),
                             squeeze=False, sharey=True, layout="constrained")  # fmt: skip
    width = 0.8 / len(methods)
    k = int(frame["k"].max())
    for row, column in zip(axes, counts):
        for ax, module in zip(row, modules):
            for i, method in enumerate(methods):
                rows = frame[(frame["module"] == module) & (frame["method"] == method)]
                ax.bar(rows["layer"] + (i - (len(methods) - 1) / 2) * width, rows[column], width, color=f"C{i}")
            norm = {"intruders": "raw", "intruders at matched norm": "at full FT's norm"}.get(column, "at LoRA's norm")
            ax.set_title(f"{module}: {norm}", fontsize=10)
            ax.set_xlabel("layer")
            ax.set_ylim(0, k)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3, axis="y")
        row[0].set_ylabel(f"intruders among top-{k}")
    handles = [matplotlib.patches.Patch(color=f"C{i}", label=m) for i, m in enumerate(methods)]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    eps = frame["ε"].iloc[0]
    fig.suptitle(f"Intruder dimensions: top-{k} singular vectors of W₀+ΔW with max |cos| to W₀'s < {eps:g}\n"
                 "(at a norm: every ΔW rescaled to that method's ‖ΔW‖_F per module; median over seeds)", fontsize=10)
    return fig


def plot_rank_allocation(frame: pd.DataFrame) -> Figure:
    """Where the rank goes: the allocated r per layer, one panel per weight type, beside uniform r (a line), and the
    90%-energy need of the full fine-tune's ΔW that set it (right axis)."""
    modules = list(dict.fromkeys(frame["module"]))
    fig, axes = plt.subplots(1, len(modules), figsize=(3.8 * len(modules), 3.2), squeeze=False, sharey=True,
                             layout="constrained")  # fmt: skip
    for ax, module in zip(axes[0], modules):
        rows = frame[frame["module"] == module].sort_values("layer")
        ax.bar(rows["layer"], rows["allocated r"], 0.6, color="C0", label="allocated r")
        ax.axhline(rows["uniform r"].iloc[0], color="C1", linestyle="--", label="uniform r")
        need = ax.twinx()
        need.plot(rows["layer"], rows["need k (90% energy)"], "o-", color="C2", label="need k (90% energy)")
        need.set_ylim(0, None)
        ax.set_title(module, fontsize=10)
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("LoRA rank")
    need.set_ylabel("k keeping 90% of ΔW's energy", color="C2")
    handles = [matplotlib.patches.Patch(color="C0", label="allocated r"),
               matplotlib.lines.Line2D([], [], color="C1", linestyle="--", label="uniform r"),
               matplotlib.lines.Line2D([], [], color="C2", marker="o", label="full FT's need k")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    fig.suptitle(f"Rank allocation — {frame['task'].iloc[0]}: per-module r at uniform r's parameters", fontsize=10)
    return fig


def _by_task(frame: pd.DataFrame) -> list[str]:
    return task_order(frame["task"])


def _label_task_panel(ax, xlabel: str, ylabel: str, title: str, legend_fontsize: int = 7) -> None:
    """How each one-task panel (metric vs rank, truncation, forgetting) ends: axis labels, a 9-point title, the
    legend and a light grid."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=legend_fontsize)
    ax.grid(alpha=0.3)


def plot_truncation(points: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Metric (×100) vs truncation rank k per configuration, median over seeds with the min–max band; the
    untruncated median as a marker at the right and the head-only baseline dotted."""
    tasks = _by_task(points)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.4), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        on_task = points[points["task"] == task]
        top = on_task["k"].max()
        for i, (config, group) in enumerate(on_task.groupby("method", sort=False)):
            stats = group.groupby("k")["value"].agg(["median", "min", "max"]).sort_index()
            ax.plot(stats.index, stats["median"], marker="o", ms=3, color=f"C{i}", label=config)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=f"C{i}", alpha=0.15)
            row = summary[(summary["task"] == task) & (summary["method"] == config)]
            if len(row):
                ax.plot([top * 1.5], [row["untruncated"].iloc[0]], marker="*", ms=9, color=f"C{i}")
        baseline = summary.loc[summary["task"] == task, "head-only baseline"].dropna()
        if len(baseline):
            ax.axhline(baseline.iloc[0], color="0.4", ls=":", lw=1, label="head-only baseline")
        ax.set_xscale("log", base=2)
        _label_task_panel(ax, "truncation rank k (★: untruncated)", f"{on_task['metric'].iloc[0]} ×100",
                          f"{task}: metric with ΔW cut to rank k (median, band = min–max over seeds)")
    return fig


def plot_forgetting(frame: pd.DataFrame) -> Figure:
    """Task gain over the head-only baseline vs forgetting, one point per configuration (median over seeds, bars
    min–max); the metric itself on the y axis when the baseline is missing."""
    tasks = _by_task(frame)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 3.8), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        on_task = frame[frame["task"] == task]
        y = "task gain" if on_task["task gain"].notna().any() else "metric (last)"
        for i, (_, row) in enumerate(on_task.iterrows()):
            xerr = [[row["forgetting"] - row["forgetting min"]], [row["forgetting max"] - row["forgetting"]]]
            yerr = [[row[y] - row[f"{y} min"]], [row[f"{y} max"] - row[y]]]
            ax.errorbar(row["forgetting"], row[y], xerr=xerr, yerr=yerr, fmt="o", ms=5, capsize=2,
                        color=f"C{i % 10}", label=row["method"])  # fmt: skip
        ax.axvline(0, color="0.5", lw=0.8)
        probe = on_task["probe"].dropna()
        _label_task_panel(ax, f"forgetting ×100 ({probe.iloc[0] if len(probe) else 'probe'} before − after)",
                          f"{y} ×100 ({on_task['metric'].iloc[0]})",
                          f"{task}: learning vs forgetting (median, bars = min–max over seeds)", legend_fontsize=6)
    return fig


def plot_cross_task(panels: dict[str, dict[str, tuple[list[str], torch.Tensor]]], title: str) -> Figure:
    """Task × task heat maps of mean φ: one row of panels per {row label: {panel title: (tasks, matrix)}}, each cell
    annotated, NaN cells (no runs) blank. Each row has its own colour scale, from 0 to its largest value, so a row of
    small values (a learned column space near chance) is not washed out by a row near 1 (a shared init)."""
    rows, cols = len(panels), max(len(row) for row in panels.values())
    size = 1.0 + 0.45 * max(len(tasks) for row in panels.values() for tasks, _ in row.values())
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.4, size * rows + 0.8), squeeze=False,
                             layout="constrained")  # fmt: skip
    for axes_row, (label, row) in zip(axes, panels.items()):
        values = [m for _, m in row.values() if not torch.isnan(m).all()]
        top = max((float(np.nanmax(m.numpy())) for m in values), default=1.0) or 1.0
        image = None
        for ax, (panel, (tasks, matrix)) in zip(axes_row, row.items()):
            image = ax.imshow(matrix.numpy(), cmap=CMAP, vmin=0.0, vmax=top, interpolation="nearest")
            ax.set_xticks(range(len(tasks)), tasks, fontsize=8, rotation=45)
            ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
            for i in range(len(tasks)):
                for j in range(len(tasks)):
                    value = float(matrix[i, j])
                    if not np.isnan(value):
                        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if value < 0.6 * top else "black")  # fmt: skip
            ax.set_title(panel, fontsize=8)
        for ax in axes_row[len(row):]:
            ax.set_axis_off()
        axes_row[0].set_ylabel(label, fontsize=9)
        fig.colorbar(image, ax=list(axes_row), fraction=0.04, pad=0.02, label="mean φ(r, r)")
    fig.suptitle(title, fontsize=9)
    return fig


def plot_interpolation(frame: pd.DataFrame) -> Figure:
    """Each task's dev metric (×100) against w, the weight of the first task's update: median over seeds, min–max
    band; dashed in the same colour, the control: the task's own adapter alone at the same scale (median); the run's
    own recorded metric as a star at its own end and the head-only baseline dotted when there is one."""
    pair = frame["pair"].iloc[0]
    first, second = pair.split(" + ")
    fig, ax = plt.subplots(figsize=(6.0, 3.8), layout="constrained")
    for i, (task, rows) in enumerate(frame.groupby("task", sort=False)):
        stats = rows.groupby("w")["value"].agg(["median", "min", "max"]).sort_index()
        ax.plot(stats.index, stats["median"], marker="o", ms=3, color=f"C{i}",
                label=f"{task} ({rows['metric'].iloc[0]}, own head)")  # fmt: skip
        ax.fill_between(stats.index, stats["min"], stats["max"], color=f"C{i}", alpha=0.15)
        alone = rows.groupby("w")["alone"].median().sort_index()
        ax.plot(alone.index, alone, ls="--", lw=1.2, color=f"C{i}")
        ax.plot([1.0 if task == first else 0.0], [rows["recorded"].median()], marker="*", ms=10, color=f"C{i}",
                ls="none")  # fmt: skip
        baseline = rows["head-only baseline"].dropna()
        if len(baseline):
            ax.axhline(baseline.iloc[0], color=f"C{i}", ls=":", lw=1)
    ax.plot([], [], ls="--", color="0.4", label="own adapter alone at the same scale (w or 1 − w)")
    ax.plot([], [], marker="*", ls="none", color="0.4", label="the run's own metric (metrics.json)")
    if frame["head-only baseline"].notna().any():
        ax.plot([], [], ls=":", color="0.4", label="head-only baseline")
    seeds = frame["seed"].nunique()
    _label_task_panel(ax, f"w (ΔW = w·ΔW_{first} + (1 − w)·ΔW_{second})", "dev metric ×100",
                      f"{pair}: each task's metric along the interpolation (median over {seeds} seed"
                      f"{'s' if seeds > 1 else ''}, band = min–max)")  # fmt: skip
    return fig


def plot_lr_search(table: pd.DataFrame, points: pd.DataFrame) -> Figure:
    """The dev metric (×100) against the learning rate (log scale), one panel per task: every run as a dot, the
    median over seeds of each rate joined by a line per configuration and budget."""
    tasks = _by_task(table)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 3.6), layout="constrained", squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, ((config, budget), rows) in enumerate(table[table["task"] == task].groupby(["config", "budget"])):
            ax.plot(rows["lr"], rows["score"], marker="o", color=f"C{i}", label=f"{config}, {budget}")
            dots = points[(points["task"] == task) & (points["config"] == config) & (points["budget"] == budget)]
            ax.plot(dots["lr"], dots["score"], ls="none", marker=".", color=f"C{i}", alpha=0.5)
        ax.set_xscale("log")
        _label_task_panel(ax, "learning rate", "dev metric ×100", f"{task}: median over seeds (dots: each run)")
    return fig


def plot_budget_ladder(frame: pd.DataFrame) -> Figure:
    """LoRA − full FT (points, bars: the 95% interval) against the examples trained on, one panel per task, the
    band of equivalence (±margin) shaded and each rung's verdict beside its point."""
    tasks = _by_task(frame)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.6), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        on_task = frame[frame["task"] == task].sort_values("examples trained")
        x, y = on_task["examples trained"], on_task["LoRA − full FT"]
        margin = on_task["margin"].iloc[0]
        ax.axhspan(-margin, margin, color="0.9", label=f"±{margin:g}: equivalent")
        ax.axhline(0, color="0.5", lw=0.8)
        yerr = [y - on_task["LoRA − full FT 2.5%"], on_task["LoRA − full FT 97.5%"] - y]
        ax.errorbar(x, y, yerr=yerr, fmt="o-", ms=5, capsize=3, color="C0", label="LoRA − full FT [95%]")
        for xi, yi, word in zip(x, y, on_task["verdict"]):
            ax.annotate(word.split(":")[0], (xi, yi), textcoords="offset points", xytext=(6, 4), fontsize=6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(x), [f"{int(v):,}" for v in x], fontsize=7)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        _label_task_panel(ax, "examples trained on (log scale)", f"LoRA − full FT ({on_task['metric'].iloc[0]} ×100)",
                          f"{task}: the gap against the budget")
    return fig
