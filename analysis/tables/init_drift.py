"""How far LoRA's A factors moved from their initialisation: the measurement behind "A is still mostly its init",
the reading offered when Figure 3's φ between ranks stays near chance (Hu et al. 2021, §7.2).

For every LoRA run that saved its factors at step 0 (``adapter_init/``) and every adapted module:
‖A − A₀‖_F / ‖A₀‖_F and φ(A, A₀), the mean cos² of the principal angles between the row spaces of A and A₀
(``maths.factor_drift``), beside r/d_in, the φ of two unrelated r-dimensional subspaces. φ near 1 with a small
relative change: A still reads the input through its random init's directions.
"""

from __future__ import annotations

import pandas as pd

from ..maths import expected_random_similarity, factor_drift
from ..runs import KIND_LABELS, MissingRuns, init_factors, lora_factors, parse_module, sort_modules
from ..runs.select import choose_task
from .common import config_names, module_sort_key, seed_spread, true_label_runs
from .table import Table

CHANGE, SIMILARITY = "‖A−A₀‖_F / ‖A₀‖_F", "φ(A, A₀)"


def init_drift_table(runs: pd.DataFrame, task: str | None = None) -> Table:
    """Per LoRA configuration and module kind: ‖A−A₀‖/‖A₀‖ and φ(A, A₀), median [min, max] over every adapted
    layer and seed (one row per module kind); the per-layer values in ``Table.frame`` are pooled, not averaged first."""
    lora = true_label_runs(runs)
    lora = lora[lora["has_factors"].eq(True) & lora["has_init"].eq(True)]
    task = choose_task(lora, task, "how far A moved from its init needs LoRA runs with adapter_init/ (the factors "
                                   "at step 0)")  # fmt: skip
    lora = lora[lora["task"] == task]
    records = []
    names = config_names(lora)
    for index, run in lora.sort_values(["rank", "seed", "run"]).iterrows():
        trained, init = lora_factors(run["run_dir"]), init_factors(run["run_dir"])
        for name in sort_modules([n for n in trained if n in init]):
            a, a0 = trained[name][0], init[name][0]
            if not a0.abs().max() > 0:
                continue  # A₀ = 0 (an init that zeroes A): no relative change to report
            drift = factor_drift(a, a0)
            kind = parse_module(name).kind
            records.append({"LoRA": names[index], "r": int(run["rank"]), "seed": run["seed"],
                            "module": KIND_LABELS.get(kind, kind), CHANGE: drift.relative_change,
                            SIMILARITY: drift.similarity,
                            "random φ r/d_in": expected_random_similarity(min(a.shape), a.shape[1])})  # fmt: skip
    if not records:
        raise MissingRuns(f"how far A moved: no {task} LoRA run has a non-zero A₀ in adapter_init/")
    frame = seed_spread(pd.DataFrame(records), ["LoRA", "r", "module", "random φ r/d_in"], [CHANGE, SIMILARITY])
    frame = frame.sort_values(["r", "LoRA", "module"], key=module_sort_key).reset_index(drop=True)
    frame.insert(0, "task", task)
    return Table(
        frame=frame,
        title=f"How far A moved from its init — {task}: ‖A−A₀‖_F/‖A₀‖_F and φ(A, A₀) of the row spaces (top-r right "
        "singular subspaces)",
        runs=list(lora["run"]),
        notes=["Cells: median [min, max] pooled over every adapted layer and seed; seeds: how many. φ(A, A₀) = 1: A "
               "reads the input through its init's directions; r/d_in: unrelated subspaces."],
        float_format=".3g",
    )
