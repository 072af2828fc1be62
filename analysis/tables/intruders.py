"""Intruder dimensions from runs (Shuttleworth et al. 2024): new high-ranking singular directions of W₀ + ΔW, raw and
at matched update norm.

Raw counts compare updates whose sizes differ by an order of magnitude (LoRA's ‖ΔW‖_F is many times a full
fine-tune's here), so every ΔW is also rescaled, per module, to the full fine-tune's Frobenius norm (median over its
seeds) before counting (``maths.intruders_at_norm``): then a difference is about directions, not size. Each LoRA
setting is its own arm (rsLoRA, DoRA, LoRA+ included).
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


def _full_norms(full: pd.DataFrame) -> dict[str, float]:
    """{module: median over the full fine-tune's seeds of ‖ΔW‖_F}: the common norm updates are matched to."""
    norms: dict[str, list[float]] = {}
    for _, run in full.iterrows():
        for name, d in run_deltas(run["run_dir"]).items():
            norms.setdefault(name, []).append(float(torch.linalg.matrix_norm(d.double())))
    return {name: float(torch.tensor(v).median()) for name, v in norms.items()}


def intruder_table(runs: pd.DataFrame, task: str | None = None, k: int = 10, threshold: float = 0.5) -> Table:
    """Intruder dimensions among the top-k singular vectors of W₀ + ΔW, per configuration, layer and module, raw and
    with ΔW rescaled to the full fine-tune's norm; median [min, max] over seeds."""
    usable, left_out = weight_runs(true_label_runs(runs))
    usable = usable[usable["model_path"].notna()]
    task = choose_task(usable, task, "intruder dimensions need runs with a ΔW and run.model_path")
    on_task = usable[usable["task"] == task]
    on_task = on_task[on_task["model_path"] == on_task["model_path"].iloc[0]]
    full = on_task[roles.reference(on_task)]
    target = _full_norms(full) if len(full) else {}
    missing = [] if len(full) else [f"matched-norm intruders — need a full fine-tune on {task} (method=full) whose "
                                    "‖ΔW‖_F per module sets the common norm"]  # fmt: skip
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
            matched = (intruders_at_norm(w, d, target[name], kk, threshold, base_basis=basis)
                       if name in target else None)  # fmt: skip
            mid = parse_module(name)
            records.append({"method": config_of[run.name], "seed": run["seed"], "layer": mid.layer,
                            "module": KIND_LABELS.get(mid.kind, mid.kind), "k": kk, "ε": threshold,
                            "‖ΔW‖_F": float(torch.linalg.matrix_norm(d.double())),
                            "intruders": raw.count,
                            "intruders at matched norm": matched.count if matched else math.nan,
                            "lowest max-cos": float(raw.max_cosine.min()),
                            "lowest max-cos at matched norm": float(matched.max_cosine.min()) if matched else math.nan})
    if not records:
        raise MissingRuns(f"intruder dimensions: no non-zero ΔW of the {task} runs matches a weight of the base model")
    frame = pd.DataFrame(records)
    values = ["‖ΔW‖_F", "intruders", "intruders at matched norm", "lowest max-cos", "lowest max-cos at matched norm"]
    table = seed_spread(frame, ["method", "layer", "module", "k", "ε"], values)
    table = table.sort_values(["method", "layer", "module"], key=module_sort_key).reset_index(drop=True)
    table.insert(0, "task", task)
    return Table(
        frame=table,
        title=f"Intruder dimensions — {task}: top-{k} singular vectors of W₀+ΔW whose max |cos| with the singular "
        f"vectors of W₀ is below ε={threshold}, raw and at matched update norm",
        runs=list(on_task["run"]),
        notes=["Matched norm: each ΔW rescaled to the full fine-tune's ‖ΔW‖_F of the same module (median over its "
               "seeds) before counting. " + SPREAD_NOTE],
        formats={"lowest max-cos": lambda v: f"{v:.3f}", "lowest max-cos at matched norm": lambda v: f"{v:.3f}",
                 "ε": lambda v: f"{v:g}", "intruders": lambda v: f"{v:g}",
                 "intruders at matched norm": lambda v: f"{v:g}", "‖ΔW‖_F": lambda v: f"{v:.3g}"},
        left_out=left_out,
        missing_controls=missing,
    )  # fmt: skip
