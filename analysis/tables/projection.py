"""Table 7 (Hu et al. 2021, §7.3) from runs: how ΔW relates to the pretrained W, read against chance.

For each module, method and r: ‖UᵀWVᵀ‖_F with U, V the top-r singular vectors of ΔW (median [min, max] over seeds),
of W itself, and of random orthonormal U, V (mean and 95% interval of ``draws`` Haar draws, one seeded generator).
"Above random" only when ΔW's value lies above that interval; the amplification ‖ΔW‖_F / ‖UᵀWVᵀ‖_F beside the
factor random directions would give, ‖ΔW‖_F over the same interval.
"""

from __future__ import annotations

import pandas as pd

from ..maths import delta_vs_weight, random_projection
from ..runs import KIND_LABELS, MissingRuns, run_base_weights, parse_module, run_deltas, short_path
from ..runs.modules import find_module
from ..runs.select import adapted_layers, choose_layer, groups_by_setting, lora_with
from .. import roles
from .common import SPREAD_NOTE, config_names, true_label_runs, weight_runs
from .table import Table

DELTA = "‖UᵀWVᵀ‖_F, U,V of ΔW"
RANDOM = "‖UᵀWVᵀ‖_F, U,V random"
AMPLIFICATION = "amplification ‖ΔW‖_F / ‖UᵀWVᵀ‖_F"
AMPLIFICATION_RANDOM = "amplification if U,V random"


def _row(kind: str, config: str, r: int, values: pd.DataFrame, random, weight_norm: float, proj_weight: float):
    row = {"module": KIND_LABELS[kind], "method": config, "r": r, "seeds": int(values["seed"].nunique())}
    for col in ("‖ΔW‖_F", DELTA, AMPLIFICATION):
        v = values[col]
        row.update({col: v.median(), f"{col} min": v.min(), f"{col} max": v.max()})
    norm = row["‖ΔW‖_F"]
    row.update({RANDOM: random.mean, f"{RANDOM} 2.5%": random.lo, f"{RANDOM} 97.5%": random.hi,
                "vs random": random.position(row[DELTA]),
                "seeds above random": f"{int((values[DELTA] > random.hi).sum())}/{len(values)}",
                AMPLIFICATION_RANDOM: norm / random.mean, f"{AMPLIFICATION_RANDOM} 2.5%": norm / random.hi,
                f"{AMPLIFICATION_RANDOM} 97.5%": norm / random.lo,
                "‖UᵀWVᵀ‖_F, U,V of W": proj_weight, "‖W‖_F": weight_norm})  # fmt: skip
    return row


def table7(
    runs: pd.DataFrame,
    task: str | None = None,
    layer: int | None = None,
    ranks=(4, 64),
    seed: int = 0,
    draws: int = 100,
) -> Table:
    """Table 7, one row per module (Wq, then Wv when adapted), method and r: LoRA at the ``ranks`` present (all ranks
    present when none of them is) and full fine-tuning of the same task at each of those r, every seed.

    ``seed`` seeds the generator of the random directions, ``draws`` (>= 100 for a 95% interval) how many.
    """
    runs, left_out = weight_runs(true_label_runs(runs))
    what = "Table 7 needs LoRA runs with Wq adapted (and the pretrained model at run.model_path)"
    groups = groups_by_setting(lora_with(runs, {"q"}, task))
    if not groups:
        raise MissingRuns(what)
    group = groups[0]
    present = sorted(int(r) for r in group["rank"].unique())
    chosen = [r for r in ranks if r in present] or present
    picked = group[group["rank"].isin(chosen)]
    full = runs[roles.reference(runs) & (runs["task"] == group["task"].iloc[0])]
    full = full[full["model_path"] == group["model_path"].iloc[0]]
    layer, where = choose_layer(adapted_layers(picked), layer, "Table 7")
    first = picked.iloc[0]
    w0 = run_base_weights(first)
    kinds = [k for k in ("q", "v") if all(k in {parse_module(n).kind for n in row["adapted_modules"]}
                                           for _, row in picked.iterrows())]  # fmt: skip
    rows = []
    for kind in kinds:
        for r in chosen:
            arms = [picked[picked["rank"] == r]] + ([full] if len(full) else [])
            random = proj_weight = None
            for arm in arms:
                values = []
                for _, run in arm.iterrows():
                    deltas = run_deltas(run["run_dir"])
                    name = find_module(list(deltas), layer, kind)
                    if name is None or name not in w0:
                        raise MissingRuns(f"Table 7: {run['run']} or the base model lacks {KIND_LABELS[kind]} at "
                                          f"layer {layer}")  # fmt: skip
                    random = random or random_projection(w0[name], r, draws, seed)
                    p = delta_vs_weight(deltas[name], w0[name], r, random=random)
                    proj_weight = p.proj_weight
                    values.append({"seed": run["seed"], "‖ΔW‖_F": p.delta_norm, DELTA: p.proj_delta,
                                   AMPLIFICATION: p.amplification})  # fmt: skip
                config = arm["label"].iloc[0] if roles.reference(arm).all() else config_names(arm).iloc[0]
                rows.append(_row(kind, config, r, pd.DataFrame(values), random, p.weight_norm, proj_weight))
    return Table(
        frame=pd.DataFrame(rows),
        title=f"Table 7 analogue: ΔW vs W — {first['task']}, {where}",
        runs=list(picked["run"]) + list(full["run"]),
        notes=[
            "U, V: top-r left/right singular vectors of ΔW or of the pretrained W itself; random: Haar-random "
            f"orthonormal U, V of rank r, mean [95% interval] of {draws} draws (generator seed {seed}). vs random: "
            "where ΔW's median lies against that interval; only 'above' reads as more aligned with W than chance. "
            "amplification if U,V random: ‖ΔW‖_F (median) over the same interval. "
            f"W: the pretrained weight of {short_path(first['model_path'])}. LoRA ranks present: {present}.",
            SPREAD_NOTE,
        ],
        float_format=".3g",
        left_out=left_out,
    )
