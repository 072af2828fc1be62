"""Subspace similarity between learned directions, from runs: Figures 3 and 4 (Hu et al. 2021, §7.2), their
summary over every layer and pair, and the overlap of LoRA's ΔW with the full fine-tune's.

Each builder takes the run table of ``analysis.runs.scan_runs`` and raises ``MissingRuns`` naming what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from ..maths import (
    delta_overlaps,
    delta_row_space_similarity,
    expected_random_similarity,
    factor_drift,
    lora_subspace_similarity,
    random_subspace_similarity,
)
from ..runs import KIND_LABELS, MissingRuns, init_factors, lora_factors, parse_module, run_deltas, sort_modules
from ..runs.modules import find_module
from ..runs.select import (
    adapted_layers,
    choose_layer,
    choose_task,
    groups_by_setting,
    lora_with,
    pick_rank_pair,
    pick_seed_pair,
    rank_pair,
)
from .. import roles
from .common import SPREAD_NOTE, config_names, module_sort_key, seed_spread, true_label_runs, weight_runs
from .table import Table


@dataclass
class SubspaceGrids:
    """φ grids to draw side by side: {panel title: r₁ x r₂ grid}, with what the axes index and where they came from."""

    grids: dict[str, torch.Tensor]
    title: str
    ylabel: str
    xlabel: str
    runs: list[str]
    notes: list[str] = field(default_factory=list)


def _a_factors(row: pd.Series, layer: int, kinds: tuple[str, ...], read=lora_factors) -> dict[str, torch.Tensor]:
    """{kind: A} at ``layer``: the trained factors (``read=lora_factors``) or those at step 0 (``init_factors``)."""
    factors = read(row["run_dir"])
    out = {}
    for kind in kinds:
        name = find_module(list(factors), layer, kind)
        if name is None:
            raise MissingRuns(f"{row['run']}: no LoRA factors for {KIND_LABELS[kind]} at layer {layer}")
        out[kind] = factors[name][0]
    return out


def _qv_group(runs: pd.DataFrame, task: str | None, what: str, need) -> pd.DataFrame:
    lora = lora_with(runs, {"q", "v"}, task)
    groups = [g for g in groups_by_setting(lora) if need(g)]
    if not groups:
        raise MissingRuns(what)
    return groups[0]


def _drift_note(row: pd.Series, layer: int) -> str:
    """How far A moved from its init at ``layer`` (Wq, Wv), or why that is not measured."""
    r = int(row["rank"])
    if not row.get("has_init"):
        return f"r={r}: A₀ not saved (no adapter_init/), drift not measured"
    a, a0 = _a_factors(row, layer, ("q", "v")), _a_factors(row, layer, ("q", "v"), init_factors)
    drift = {k: factor_drift(a[k], a0[k]) for k in ("q", "v")}
    return f"r={r}: " + ", ".join(f"{KIND_LABELS[k]} ‖A−A₀‖/‖A₀‖ = {d.relative_change:.3g}, φ(A, A₀) = "
                                  f"{d.similarity:.3f}" for k, d in drift.items())  # fmt: skip


def figure3_grids(
    runs: pd.DataFrame,
    task: str | None = None,
    layer: int | None = None,
    ranks: tuple[int, int] | None = None,
    on: str = "A",
) -> SubspaceGrids:
    """Figure 3: φ(A_{r=lo}, A_{r=hi}, i, j) for Wq and Wv of one layer, i ≤ lo, j ≤ hi (``on="A"``, the paper's),
    or the same between the top right singular vectors of ΔW at the two ranks (``on="delta"``, ΔW's row space).
    The notes say how far each A moved from its init (from adapter_init/)."""
    if on not in ("A", "delta"):
        raise ValueError(f"on must be 'A' (the LoRA factor) or 'delta' (ΔW's row space), got {on!r}")
    runs = weight_runs(runs)[0]
    what = "Figure 3 needs LoRA runs at two ranks on one task with the same targets, Wq and Wv adapted"
    group = _qv_group(runs, task, what, lambda g: g["rank"].nunique() >= 2)
    lo, hi = pick_rank_pair(group, ranks)
    layer, where = choose_layer(adapted_layers(pd.DataFrame([lo, hi])), layer, "Figure 3")
    r_lo, r_hi = int(lo["rank"]), int(hi["rank"])
    if on == "A":
        a_lo, a_hi = _a_factors(lo, layer, ("q", "v")), _a_factors(hi, layer, ("q", "v"))
        grids = {f"ΔW{k}": lora_subspace_similarity(a_lo[k], a_hi[k]) for k in ("q", "v")}
        of = "A"
    else:
        d_lo, d_hi = run_deltas(lo["run_dir"]), run_deltas(hi["run_dir"])
        grids = {}
        for k in ("q", "v"):
            name = find_module(list(d_lo), layer, k)
            if name is None or name not in d_hi:
                raise MissingRuns(f"Figure 3: no ΔW{k} at layer {layer} in {lo['run']} or {hi['run']}")
            grids[f"ΔW{k} row space"] = delta_row_space_similarity(d_lo[name], d_hi[name], r_lo, r_hi)
        of = "ΔW (right singular vectors)"
    seeds = f"seed {lo['seed']}" if lo["seed"] == hi["seed"] else f"seeds {lo['seed']} and {hi['seed']}"
    return SubspaceGrids(
        grids=grids,
        title=f"φ({of} at r={r_lo}, r={r_hi}, i, j) — {lo['task']}, {where}",
        ylabel=f"i (top-i directions at r={r_lo})",
        xlabel=f"j (top-j directions at r={r_hi})",
        runs=[lo["run"], hi["run"]],
        notes=[seeds, _drift_note(lo, layer), _drift_note(hi, layer)],
    )


def figure4_grids(
    runs: pd.DataFrame, task: str | None = None, layer: int | None = None, rank: int | None = None, seed: int = 0
) -> SubspaceGrids:
    """Figure 4: φ(A_{r} seed a, A_{r} seed b, i, j) for Wq and Wv, beside two random Gaussian r x in matrices; the
    notes say how far each A moved from its init."""
    runs = weight_runs(runs)[0]
    what = "Figure 4 needs two LoRA runs with different seeds at one rank, Wq and Wv adapted"
    group = _qv_group(runs, task, what, lambda g: (g.groupby("rank")["seed"].nunique() >= 2).any())
    a, b = pick_seed_pair(group, rank)
    layer, where = choose_layer(adapted_layers(pd.DataFrame([a, b])), layer, "Figure 4")
    fa, fb = _a_factors(a, layer, ("q", "v")), _a_factors(b, layer, ("q", "v"))
    grids = {f"ΔW{k}": lora_subspace_similarity(fa[k], fb[k]) for k in ("q", "v")}
    grids["Random Gaussian"] = random_subspace_similarity(tuple(fa["q"].shape), tuple(fb["q"].shape), seed)
    r = int(a["rank"])
    return SubspaceGrids(
        grids=grids,
        title=f"φ(A_r={r} seed {a['seed']}, A_r={r} seed {b['seed']}, i, j) — {a['task']}, {where}",
        ylabel=f"i (seed {a['seed']})",
        xlabel=f"j (seed {b['seed']})",
        runs=[a["run"], b["run"]],
        notes=[f"random baseline: two {r}x{fa['q'].shape[1]} N(0, 1) matrices, generator seed {seed}",
               f"seed {a['seed']} " + _drift_note(a, layer), f"seed {b['seed']} " + _drift_note(b, layer)],
    )


def overlap_table(runs: pd.DataFrame, task: str | None = None) -> Table:
    """φ(r, r) between the top-r left (and right) singular subspaces of each LoRA ΔW and the full fine-tune's ΔW of
    the same module (the full run of the same seed, else its lowest seed), with the random-subspace expectation r/d
    beside it; median [min, max] over seeds."""
    runs, left_out = weight_runs(true_label_runs(runs))
    full = runs[roles.reference(runs)]
    lora = runs[runs["has_factors"].eq(True) & runs["rank"].notna()] if "rank" in runs else runs.iloc[:0]
    both = full[full["task"].isin(set(lora["task"]))]
    task = choose_task(both, task, "LoRA vs full overlap needs LoRA and full fine-tuning runs on a common task")
    full = full[full["task"] == task].sort_values(["seed", "run"])
    seeds = full.groupby("config_id")["seed"].nunique()
    full = full[full["config_id"] == seeds[seeds == seeds.max()].index.min()]  # one reference configuration
    by_seed = {s: row for s, row in zip(full["seed"], [r for _, r in full.iterrows()])}
    lora = lora[lora["task"] == task]
    rows, used = [], set()
    names = config_names(lora)
    for index, run in lora.iterrows():
        r = int(run["rank"])
        full_row = by_seed.get(run["seed"], full.iloc[0])
        full_d, deltas = run_deltas(full_row["run_dir"]), run_deltas(run["run_dir"])
        used |= {run["run"], full_row["run"]}
        for name in sort_modules([n for n in deltas if n in full_d]):
            mid = parse_module(name)
            out_dim, in_dim = deltas[name].shape
            left, right = delta_overlaps(deltas[name], full_d[name], r)
            rows.append({
                "LoRA": names[index], "r": r, "seed": run["seed"], "layer": mid.layer,
                "module": KIND_LABELS.get(mid.kind, mid.kind), "φ left (k=r)": left, "φ right (k=r)": right,
                "random left r/d_out": expected_random_similarity(r, out_dim),
                "random right r/d_in": expected_random_similarity(r, in_dim),
            })  # fmt: skip
    if not rows:
        raise MissingRuns(f"LoRA vs full overlap: no module of the {task} LoRA runs is in the full run's ΔW file")
    frame = seed_spread(pd.DataFrame(rows), ["LoRA", "r", "layer", "module", "random left r/d_out",
                                             "random right r/d_in"], ["φ left (k=r)", "φ right (k=r)"])  # fmt: skip
    frame = frame.sort_values(["r", "LoRA", "layer", "module"], key=module_sort_key).reset_index(drop=True)
    frame.insert(0, "task", task)
    return Table(
        frame=frame,
        title=f"LoRA vs full fine-tuning — {task}: φ(r, r) between the top-r singular subspaces of the two ΔW",
        runs=sorted(used),
        notes=["φ = 1: the LoRA update spans the full fine-tune's top-r directions; r/d: two random r-dim subspaces. "
               "Each LoRA seed against the full fine-tune of the same seed when there is one. " + SPREAD_NOTE],
        float_format=".3f",
        left_out=left_out,
    )


def subspace_summary(runs: pd.DataFrame, task: str | None = None, zoom: int = 8, seed: int = 0) -> Table:
    """Figures 3 and 4 over every adapted layer and every pair, not one layer of one pair: φ(1, 1) (the top
    direction) and the mean of φ(i, j) over 1 ≤ i, j ≤ ``zoom`` without (1, 1) (the other top directions), for
    - ranks: each seed's A_r=lo against its A_r=hi (Figure 3; lo, hi from ``select.rank_pair``);
    - seeds: A_r of every pair of seeds at each rank with two or more (Figure 4);
    beside two random Gaussian matrices of the same shapes. One row per (comparison, pair, layer, module)."""
    runs = weight_runs(runs)[0]
    what = "the subspace summary needs LoRA runs on Wq and Wv at two ranks or with two seeds"
    group = _qv_group(runs, task, what, lambda g: g["rank"].nunique() >= 2 or g["seed"].nunique() >= 2)
    pairs = []
    ranks = sorted(int(r) for r in group["rank"].dropna().unique())
    if len(ranks) >= 2:
        lo, hi = rank_pair(ranks)
        for s in sorted(set(group.loc[group["rank"] == lo, "seed"]) & set(group.loc[group["rank"] == hi, "seed"])):
            a = group[(group["rank"] == lo) & (group["seed"] == s)].iloc[0]
            b = group[(group["rank"] == hi) & (group["seed"] == s)].iloc[0]
            pairs.append(("ranks", f"r={lo} vs r={hi}", f"seed {s}", a, b))
    for r in ranks:
        at_r = group[group["rank"] == r].drop_duplicates("seed").sort_values("seed")
        rows = [row for _, row in at_r.iterrows()]
        pairs += [("seeds", f"r={r}", f"seeds {x['seed']} vs {y['seed']}", x, y)
                  for n, x in enumerate(rows) for y in rows[n + 1:]]  # fmt: skip

    def condensed(grid: torch.Tensor) -> tuple[float, float]:
        top = grid[:zoom, :zoom].clone()
        first = float(top[0, 0])
        top[0, 0] = float("nan")
        return first, float(torch.nanmean(top))

    records, sources = [], set()
    for comparison, ranks_compared, label, a, b in pairs:
        layers = adapted_layers(pd.DataFrame([a, b]))
        for layer in layers:
            fa, fb = _a_factors(a, layer, ("q", "v")), _a_factors(b, layer, ("q", "v"))
            for kind in ("q", "v"):
                phi11, rest = condensed(lora_subspace_similarity(fa[kind], fb[kind]))
                baseline = random_subspace_similarity(tuple(fa[kind].shape), tuple(fb[kind].shape), seed)
                rand11, rand_rest = condensed(baseline)
                records.append({"comparison": comparison, "ranks": ranks_compared, "pair": label, "layer": layer,
                                "module": KIND_LABELS[kind], "φ(1,1)": phi11, f"mean φ, i,j ≤ {zoom} but (1,1)": rest,
                                "random φ(1,1)": rand11, f"random mean φ, i,j ≤ {zoom} but (1,1)": rand_rest})
        sources |= {a["run"], b["run"]}
    if not records:
        raise MissingRuns(what)
    frame = pd.DataFrame(records)
    return Table(
        frame=frame,
        title=f"Figures 3 and 4 over every layer — {group['task'].iloc[0]}: φ of the top direction and of the next "
        "ones",
        runs=sorted(sources),
        notes=["Summary per comparison and module (median [min, max] over layers and pairs) in subspace_summary_agg."],
        float_format=".3f",
    )


def subspace_summary_agg(table: Table) -> Table:
    """``subspace_summary`` per (comparison, ranks, module): median and [min, max] over layers and pairs."""
    value_columns = [c for c in table.frame.columns if "φ" in c]
    grouped = table.frame.groupby(["comparison", "ranks", "module"], sort=False)[value_columns]
    cells = grouped.agg(lambda v: f"{v.median():.3f} [{v.min():.3f}, {v.max():.3f}]").reset_index()
    cells.insert(3, "layers × pairs", grouped.size().values)
    return Table(frame=cells, title=table.title + " (median [min, max])", runs=table.runs)
