"""Intruder dimensions from runs (Shuttleworth et al. 2024): new high-ranking singular directions of W₀ + ΔW, raw and
at matched update norm, in both directions.

Raw counts compare updates whose sizes differ by an order of magnitude (LoRA's ‖ΔW‖_F is many times a full
fine-tune's here), so every ΔW is also rescaled, per module, to a common Frobenius norm before counting
(``maths.intruders_at_norm``): then a difference is about directions, not size. Two common norms, since shrinking an
update toward zero leaves W₀'s singular vectors in place and all but guarantees no intruders (and growing one does
the reverse): the full fine-tune's norm (LoRA's ΔW scaled down) and LoRA's (the full fine-tune's ΔW scaled up), each
the median over that method's seeds per module. Each LoRA setting is its own arm (rsLoRA, DoRA, LoRA+ included);
"LoRA's norm" is plain LoRA's (``roles.studied``), its configurations pooled.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ..maths import intruder_dimensions, intruders_at_norm, left_singular_basis
from ..runs import KIND_LABELS, MissingRuns, run_base_weights, parse_module, run_deltas
from ..runs.select import choose_task
from .. import roles
from .common import SPREAD_NOTE, config_names, module_sort_key, seed_spread, true_label_runs, weight_runs
from .table import Table

MATCHED = "at matched norm"  # at the full fine-tune's norm: the column name the committed tables and verdicts read


def _median_norms(arm: pd.DataFrame) -> dict[str, float]:
    """{module: median over the arm's runs of ‖ΔW‖_F}: a common norm updates are matched to."""
    norms: dict[str, list[float]] = {}
    for _, run in arm.iterrows():
        for name, d in run_deltas(run["run_dir"]).items():
            norms.setdefault(name, []).append(float(torch.linalg.matrix_norm(d.double())))
    return {name: float(torch.tensor(v).median()) for name, v in norms.items()}


def intruder_table(runs: pd.DataFrame, task: str | None = None, k: int = 10, threshold: float = 0.5) -> Table:
    """Intruder dimensions among the top-k singular vectors of W₀ + ΔW, per configuration, layer and module, raw and
    with ΔW rescaled to a common norm (full FT's, LoRA's); median [min, max] over seeds."""
    return intruder_tables(runs, task, k, threshold)[0]


def intruder_tables(runs: pd.DataFrame, task: str | None = None, k: int = 10,
                    threshold: float = 0.5) -> tuple[Table, Table]:
    """``intruder_table`` and, per run, its counts summed over the modules (what a comparison over seeds reads)."""
    usable, left_out = weight_runs(true_label_runs(runs))
    usable = usable[usable["model_path"].notna()]
    task = choose_task(usable, task, "intruder dimensions need runs with a ΔW and run.model_path")
    on_task = usable[usable["task"] == task]
    on_task = on_task[on_task["model_path"] == on_task["model_path"].iloc[0]]
    full, lora = on_task[roles.reference(on_task)], on_task[roles.studied(on_task)]
    targets = {"full FT's": _median_norms(full) if len(full) else {}, "LoRA's": _median_norms(lora) if len(lora) else {}}
    missing = [] if len(full) else [f"matched-norm intruders — need a full fine-tune on {task} (method=full) whose "
                                    "‖ΔW‖_F per module sets the common norm"]  # fmt: skip
    missing += [] if len(lora) else [f"intruders at LoRA's norm — need a LoRA run on {task} (method=lora)"]
    records = []
    config_of = config_names(on_task)
    # Module outer, run inner: W₀'s decomposition is shared by every run of one module and dropped before the next,
    # so memory holds one module's W₀, its basis and one ΔW, never the model's.
    readers = [(run, run_deltas(run["run_dir"]), run_base_weights(run))
               for _, run in on_task.sort_values(["seed", "run"]).iterrows()]
    names = list(dict.fromkeys(name for _, deltas, _ in readers for name in deltas))
    for name in names:
        basis = None
        for run, deltas, w0 in readers:
            if name not in deltas or name not in w0:
                continue
            d = deltas[name]
            if d.abs().max() == 0:
                continue
            w = w0[name]
            basis = left_singular_basis(w) if basis is None else basis
            kk = min(k, min(d.shape))
            raw = intruder_dimensions(w, w.double() + d.double(), kk, threshold, base_basis=basis)
            mid = parse_module(name)
            record = {"method": config_of[run.name], "seed": run["seed"], "layer": mid.layer,
                      "module": KIND_LABELS.get(mid.kind, mid.kind), "k": kk, "ε": threshold,
                      "‖ΔW‖_F": float(torch.linalg.matrix_norm(d.double())), "intruders": raw.count,
                      "lowest max-cos": float(raw.max_cosine.min())}
            for whose, target in targets.items():
                at = intruders_at_norm(w, d, target[name], kk, threshold, base_basis=basis) if name in target else None
                suffix = MATCHED if whose == "full FT's" else f"at {whose} norm"
                record[f"intruders {suffix}"] = at.count if at else math.nan
                record[f"lowest max-cos {suffix}"] = float(at.max_cosine.min()) if at else math.nan
            records.append(record)
    if not records:
        raise MissingRuns(f"intruder dimensions: no non-zero ΔW of the {task} runs matches a weight of the base model")
    frame = pd.DataFrame(records)
    counts = [c for c in frame.columns if c.startswith("intruders")]
    where = frame.set_index(["layer", "module"]).index
    common = set.intersection(*(set(where[frame["method"].eq(m)]) for m in frame["method"].unique()))
    shared = frame[where.isin(list(common))]  # the modules every configuration changed: totals compare like with like
    per_run = shared.groupby(["method", "seed"])[counts].sum(min_count=1).reset_index()
    per_run.insert(0, "task", task)
    per_run.insert(3, "modules", shared.groupby(["method", "seed"]).size().to_numpy())
    values = ["‖ΔW‖_F", "intruders", f"intruders {MATCHED}", "intruders at LoRA's norm", "lowest max-cos",
              f"lowest max-cos {MATCHED}", "lowest max-cos at LoRA's norm"]
    table = seed_spread(frame, ["method", "layer", "module", "k", "ε"], values)
    table = table.sort_values(["method", "layer", "module"], key=module_sort_key).reset_index(drop=True)
    table.insert(0, "task", task)
    by_module = Table(
        frame=table,
        title=f"Intruder dimensions — {task}: top-{k} singular vectors of W₀+ΔW whose max |cos| with the singular "
        f"vectors of W₀ is below ε={threshold}, raw and at matched update norm",
        runs=list(on_task["run"]),
        notes=["Matched norm: each ΔW rescaled to the full fine-tune's ‖ΔW‖_F of the same module (median over its "
               "seeds) before counting (LoRA's scaled down); at LoRA's norm: to plain LoRA's (full FT's scaled up). "
               + SPREAD_NOTE],
        formats={**{c: (lambda v: f"{v:.3f}") for c in values if c.startswith("lowest")},
                 **{c: (lambda v: f"{v:g}") for c in values if c.startswith("intruders")},
                 "ε": lambda v: f"{v:g}", "‖ΔW‖_F": lambda v: f"{v:.3g}"},
        left_out=left_out,
        missing_controls=missing,
    )  # fmt: skip
    by_run = Table(frame=per_run, title=f"Intruder dimensions per run — {task}: the counts summed over the modules "
                   "every configuration changed",
                   runs=by_module.runs, notes=by_module.notes[:1], formats={c: (lambda v: f"{v:g}") for c in counts},
                   missing_controls=missing)  # fmt: skip
    return by_module, by_run
