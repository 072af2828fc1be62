"""The weight analyses of §7 and beyond, from the run table to numbers ready to plot or print.

- ``figure3_grids`` / ``figure4_grids``: φ between A factors at two ranks (Figure 3) or two seeds (Figure 4).
- ``table7``: ΔW vs W projections and amplification factors (Table 7).
- ``spectra_table``: rank at 90% energy and effective rank of every ΔW, full fine-tuning and LoRA.
- ``overlap_table``: φ between the top-r subspaces of a LoRA ΔW and the full fine-tune's ΔW of the same layer.
- ``subspace_summary``: Figures 3 and 4 condensed over every layer and every seed or rank pair, with the spread.
- ``intruder_table``: intruder dimensions of the tuned W against W₀, for LoRA and full fine-tuning.

Each takes the run table of ``analysis.runs.scan_runs`` and raises ``MissingRuns`` naming what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from .intruders import intruder_dimensions, left_singular_basis
from .modules import KIND_LABELS, find_module, kind_order, parse_module, sort_modules, targets_label
from .projection import delta_vs_weight
from .runs import MissingRuns, base_weights, lora_factors, num_labels, run_deltas
from .select import (
    adapted_layers,
    choose_layer,
    choose_task,
    groups_by_setting,
    lora_with,
    lowest_seed,
    pick_rank_pair,
    pick_seed_pair,
    rank_pair,
)
from .spectra import spectrum
from .subspace import delta_overlaps, expected_random_similarity, lora_subspace_similarity, random_subspace_similarity
from .tables import Table


@dataclass
class SubspaceGrids:
    """φ grids to draw side by side: {panel title: r₁ x r₂ grid}, with what the axes index and where they came from."""

    grids: dict[str, torch.Tensor]
    title: str
    ylabel: str
    xlabel: str
    runs: list[str]
    notes: list[str] = field(default_factory=list)


def _config(row: pd.Series) -> str:
    if row["method"] == "full":
        return "full FT"
    return f"LoRA r={int(row['rank'])} ({targets_label(row['targets'])})"


def _a_factors(row: pd.Series, layer: int, kinds: tuple[str, ...]) -> dict[str, torch.Tensor]:
    factors = lora_factors(row["run_dir"])
    out = {}
    for kind in kinds:
        name = find_module(list(factors), layer, kind)
        if name is None:
            raise MissingRuns(f"{row['label']}: no LoRA factors for {KIND_LABELS[kind]} at layer {layer}")
        out[kind] = factors[name][0]
    return out


def _qv_group(runs: pd.DataFrame, task: str | None, what: str, need) -> pd.DataFrame:
    lora = lora_with(runs, {"q", "v"}, task)
    groups = [g for g in groups_by_setting(lora) if need(g)]
    if not groups:
        raise MissingRuns(what)
    return groups[0]


def figure3_grids(
    runs: pd.DataFrame, task: str | None = None, layer: int | None = None, ranks: tuple[int, int] | None = None
) -> SubspaceGrids:
    """Figure 3: φ(A_{r=lo}, A_{r=hi}, i, j) for Wq and Wv of one layer, i ≤ lo, j ≤ hi."""
    runs = runs[runs["has_weights"]]
    what = "Figure 3 needs LoRA runs at two ranks on one task with the same targets, Wq and Wv adapted"
    group = _qv_group(runs, task, what, lambda g: g["rank"].nunique() >= 2)
    lo, hi = pick_rank_pair(group, ranks)
    layer, where = choose_layer(adapted_layers(pd.DataFrame([lo, hi])), layer, "Figure 3")
    a_lo, a_hi = _a_factors(lo, layer, ("q", "v")), _a_factors(hi, layer, ("q", "v"))
    r_lo, r_hi = int(lo["rank"]), int(hi["rank"])
    return SubspaceGrids(
        grids={f"ΔW{k}": lora_subspace_similarity(a_lo[k], a_hi[k]) for k in ("q", "v")},
        title=f"φ(A_r={r_lo}, A_r={r_hi}, i, j) — {lo['task']}, {where}",
        ylabel=f"i (top-i directions of A_r={r_lo})",
        xlabel=f"j (top-j directions of A_r={r_hi})",
        runs=[lo["label"], hi["label"]],
        notes=[f"seed {lo['seed']}" if lo["seed"] == hi["seed"] else f"seeds {lo['seed']} and {hi['seed']}"],
    )


def figure4_grids(
    runs: pd.DataFrame, task: str | None = None, layer: int | None = None, rank: int | None = None, seed: int = 0
) -> SubspaceGrids:
    """Figure 4: φ(A_{r} seed a, A_{r} seed b, i, j) for Wq and Wv, beside two random Gaussian r x in matrices."""
    runs = runs[runs["has_weights"]]
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
        runs=[a["label"], b["label"]],
        notes=[f"random baseline: two {r}x{fa['q'].shape[1]} N(0, 1) matrices, generator seed {seed}"],
    )


def table7(
    runs: pd.DataFrame, task: str | None = None, layer: int | None = None, ranks=(4, 64), seed: int = 0
) -> Table:
    """Table 7: ‖UᵀWVᵀ‖_F with U, V the top-r singular vectors of ΔW / W / random, ‖ΔW‖_F, amplification.

    One column per module (Wq, then Wv when adapted), method and r; LoRA at the ``ranks`` present (all ranks present
    when none of them is), full fine-tuning of the same task at the same r when present. W is the pretrained W₀.
    """
    runs = runs[runs["has_weights"]]
    what = "Table 7 needs LoRA runs with Wq adapted (and the pretrained model at run.model_path)"
    lora = lora_with(runs, {"q"}, task)
    groups = groups_by_setting(lora)
    if not groups:
        raise MissingRuns(what)
    group = groups[0]
    present = sorted(int(r) for r in group["rank"].unique())
    chosen = [r for r in ranks if r in present] or present
    picked = lowest_seed(group[group["rank"].isin(chosen)], ["rank"])
    full = runs[(runs["method"] == "full") & (runs["task"] == group["task"].iloc[0])]
    full = full[full["model_path"] == group["model_path"].iloc[0]]
    full_row = lowest_seed(full, ["task"]).iloc[0] if len(full) else None
    layer, where = choose_layer(adapted_layers(picked), layer, "Table 7")
    first = picked.iloc[0]
    w0 = base_weights(first["model_path"], num_labels(first["run_dir"]))
    kinds = [k for k in ("q", "v") if all(k in {parse_module(n).kind for n in row["adapted_modules"]}
                                           for _, row in picked.iterrows())]  # fmt: skip
    columns: dict[str, dict[str, float]] = {}
    sources = list(picked["label"]) + ([full_row["label"]] if full_row is not None else [])
    for kind in kinds:
        for r in chosen:
            for row in [picked[picked["rank"] == r].iloc[0]] + ([full_row] if full_row is not None else []):
                deltas = run_deltas(row["run_dir"], row["method"])
                name = find_module(list(deltas), layer, kind)
                if name is None or name not in w0:
                    raise MissingRuns(
                        f"Table 7: {row['label']} or the base model lacks {KIND_LABELS[kind]} at layer {layer}"
                    )
                p = delta_vs_weight(deltas[name], w0[name], r, seed)
                method = "LoRA" if row["method"] == "lora" else "full FT"
                columns[f"{KIND_LABELS[kind]}, {method}, r={r}"] = {
                    "‖UᵀWVᵀ‖_F, U,V of ΔW": p.proj_delta,
                    "‖UᵀWVᵀ‖_F, U,V of W": p.proj_weight,
                    "‖UᵀWVᵀ‖_F, U,V random": p.proj_random,
                    "‖W‖_F": p.weight_norm,
                    "‖ΔW‖_F": p.delta_norm,
                    "amplification ‖ΔW‖_F / ‖UᵀWVᵀ‖_F": p.amplification,
                }
    frame = pd.DataFrame(columns).rename_axis("quantity").reset_index()
    return Table(
        frame=frame,
        title=f"Table 7 analogue: ΔW vs W — {first['task']}, {where}",
        runs=sources,
        notes=[
            "U, V: top-r left/right singular vectors of ΔW, of the pretrained W itself, or of a random Gaussian matrix "
            f"(seed {seed}). W is the pretrained weight from {first['model_path']}. LoRA ranks present: {present}."
        ],
        float_format=".3g",
    )


def spectra_table(
    runs: pd.DataFrame, task: str | None = None, fractions=(0.9, 0.99)
) -> tuple[Table, dict[str, dict[str, torch.Tensor]]]:
    """Rank at 90% (and 99%) energy and effective rank of every ΔW of the full fine-tune (lowest seed) and of each
    LoRA config on the same task; also {config: {module name: cumulative energy}} for plotting."""
    runs = runs[runs["has_weights"]]
    full = runs[runs["method"] == "full"]
    task = choose_task(full, task, "the ΔW spectra need a full fine-tuning run with delta_weights.safetensors")
    lora = runs[(runs["method"] == "lora") & (runs["task"] == task)]
    rows_in = pd.concat([lowest_seed(full[full["task"] == task], ["task"]), lowest_seed(lora, ["rank", "targets"])])
    rows, curves = [], {}
    for _, run in rows_in.iterrows():
        deltas = run_deltas(run["run_dir"], run["method"])
        config = _config(run)
        curves[config] = {}
        for name in sort_modules(list(deltas)):
            spec = spectrum(deltas[name])
            mid = parse_module(name)
            curves[config][name] = spec.energy
            row = {"task": task, "method": config, "seed": run["seed"], "layer": mid.layer,
                   "module": KIND_LABELS.get(mid.kind, mid.kind),
                   "shape": "x".join(map(str, deltas[name].shape))}  # fmt: skip
            row.update({f"rank@{f:.0%}": spec.energy_rank(f) for f in fractions})
            row.update({"effective rank": spec.effective_rank, "‖ΔW‖_F": spec.frobenius_norm})
            rows.append(row)
    frame = pd.DataFrame(rows)
    return Table(
        frame=frame,
        title=f"ΔW spectra — {task}: rank reaching 90% / 99% of Σσ² and effective rank per layer and module",
        runs=list(rows_in["label"]),
        notes=["Effective rank: exp of the entropy of σ/Σσ (Roy & Vetterli 2007). Lowest seed per configuration."],
        formats={"effective rank": lambda v: f"{v:.1f}", "‖ΔW‖_F": lambda v: f"{v:.3g}"},
    ), curves


def overlap_table(runs: pd.DataFrame, task: str | None = None) -> Table:
    """φ(r, r) between the top-r left (and right) singular subspaces of each LoRA ΔW and the full fine-tune's ΔW of
    the same module, with the random-subspace expectation r/d beside it."""
    runs = runs[runs["has_weights"]]
    full = runs[runs["method"] == "full"]
    lora = runs[runs["method"] == "lora"]
    both = full[full["task"].isin(set(lora["task"]))]
    task = choose_task(both, task, "LoRA vs full overlap needs LoRA and full fine-tuning runs on a common task")
    full_row = lowest_seed(full[full["task"] == task], ["task"]).iloc[0]
    full_d = run_deltas(full_row["run_dir"], "full")
    configs = lowest_seed(lora[lora["task"] == task], ["rank", "targets"])
    rows = []
    for _, run in configs.iterrows():
        r = int(run["rank"])
        deltas = run_deltas(run["run_dir"], "lora")
        for name in sort_modules([n for n in deltas if n in full_d]):
            d = deltas[name]
            mid = parse_module(name)
            out_dim, in_dim = d.shape
            left, right = delta_overlaps(d, full_d[name], r)
            rows.append({
                "task": task, "LoRA": _config(run), "r": r, "layer": mid.layer,
                "module": KIND_LABELS.get(mid.kind, mid.kind), "φ left (k=r)": left, "φ right (k=r)": right,
                "random left r/d_out": expected_random_similarity(r, out_dim),
                "random right r/d_in": expected_random_similarity(r, in_dim),
            })  # fmt: skip
    if not rows:
        raise MissingRuns(f"LoRA vs full overlap: no module of the {task} LoRA runs is in the full run's ΔW file")
    frame = pd.DataFrame(rows).sort_values(["r", "LoRA", "layer", "module"], key=_module_key).reset_index(drop=True)
    return Table(
        frame=frame,
        title=f"LoRA vs full fine-tuning — {task}: φ(r, r) between the top-r singular subspaces of the two ΔW",
        runs=list(configs["label"]) + [full_row["label"]],
        notes=["φ = 1: the LoRA update spans the full fine-tune's top-r directions; r/d: two random r-dim subspaces."],
        float_format=".3f",
    )


def intruder_table(runs: pd.DataFrame, task: str | None = None, k: int = 10, threshold: float = 0.5) -> Table:
    """Intruder dimensions among the top-k singular vectors of W₀ + ΔW, per module, for each LoRA config and the
    full fine-tune (lowest seed) on one task (Shuttleworth et al. 2024)."""
    runs = runs[runs["has_weights"]]
    usable = runs[runs["model_path"].notna()]
    task = choose_task(usable, task, "intruder dimensions need LoRA or full runs with run.model_path")
    on_task = usable[usable["task"] == task]
    picked = pd.concat([lowest_seed(on_task[on_task["method"] == "full"], ["task"]),
                        lowest_seed(on_task[on_task["method"] == "lora"], ["rank", "targets"])])
    rows, bases = [], {}
    for _, run in picked.iterrows():
        w0 = base_weights(run["model_path"], num_labels(run["run_dir"]))
        for name, d in run_deltas(run["run_dir"], run["method"]).items():
            if name not in w0 or d.abs().max() == 0:
                continue
            key = (run["model_path"], name)
            if key not in bases:
                bases[key] = left_singular_basis(w0[name])
            found = intruder_dimensions(w0[name], w0[name].double() + d.double(), min(k, min(d.shape)), threshold,
                                        base_basis=bases[key])  # fmt: skip
            mid = parse_module(name)
            rows.append({"task": task, "method": _config(run), "layer": mid.layer,
                         "module": KIND_LABELS.get(mid.kind, mid.kind), "k": found.k, "ε": threshold,
                         "intruders": found.count, "positions": " ".join(map(str, found.ranks)) or "—",
                         "lowest max-cos": float(found.max_cosine.min())})  # fmt: skip
    if not rows:
        raise MissingRuns(f"intruder dimensions: no non-zero ΔW of the {task} runs matches a weight of the base model")
    frame = pd.DataFrame(rows).sort_values(["method", "layer", "module"], key=_module_key).reset_index(drop=True)
    return Table(
        frame=frame,
        title=f"Intruder dimensions — {task}: top-{k} singular vectors of W₀+ΔW whose max |cos| with the singular "
        f"vectors of W₀ is below ε={threshold}",
        runs=list(picked["label"]),
        notes=["positions: ranks (1 = largest σ) of the intruders in the tuned W's spectrum. Lowest seed per config."],
        formats={"lowest max-cos": lambda v: f"{v:.3f}", "ε": lambda v: f"{v:g}"},
    )


def _module_key(col: pd.Series) -> pd.Series:
    if col.name == "module":
        inverse = {label: kind for kind, label in KIND_LABELS.items()}
        return col.map(lambda m: kind_order(inverse.get(m, m)))
    return col


def subspace_summary(runs: pd.DataFrame, task: str | None = None, zoom: int = 8, seed: int = 0) -> Table:
    """Figures 3 and 4 over every adapted layer and every pair, not one layer of one pair: φ(1, 1) (the top
    direction) and the mean of φ(i, j) over 1 ≤ i, j ≤ ``zoom`` without (1, 1) (the other top directions), for
    - ranks: each seed's A_r=lo against its A_r=hi (Figure 3; lo, hi from ``select.rank_pair``);
    - seeds: A_r of every pair of seeds at each rank with two or more (Figure 4);
    beside two random Gaussian matrices of the same shapes. One row per (comparison, pair, layer, module)."""
    runs = runs[runs["has_weights"]]
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
        sources |= {a["label"], b["label"]}
    if not records:
        raise MissingRuns(what)
    frame = pd.DataFrame(records)
    return Table(
        frame=frame,
        title=f"Figures 3 and 4 over every layer — {group['task'].iloc[0]}: φ of the top direction and of the next ones",
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
