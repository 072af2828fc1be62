"""Where should the rank go? A per-module rank from a full fine-tune's ΔW, at uniform LoRA's parameter budget
(issue 23, beyond the paper; the maths in ``maths.allocation``).

For one task, each module LoRA adapts (``targets``) gets its need k_m: the smallest rank keeping ``fraction`` of
the energy of the full fine-tune's ΔW there (median over the full fine-tune's seeds), and the needs are scaled to
the parameters of uniform rank ``rank`` on the same modules. The table says which modules get the rank (by layer and
weight type); its note holds the ``rank_pattern=...`` override that trains with it
(``+experiment=beyond_rank_allocation``).
"""

from __future__ import annotations

import statistics

import pandas as pd

from lorakit import resolve_targets
from lorakit.inject import matches

from .. import roles
from ..maths.allocation import allocate_ranks, lora_cost, uniform_budget
from ..maths.spectra import spectrum
from ..runs import KIND_LABELS, MissingRuns, parse_module, run_deltas
from ..runs.select import choose_task
from .common import true_label_runs, weight_runs
from .table import Table


def rank_allocation_table(runs: pd.DataFrame, task: str | None = None, fraction: float = 0.9, rank: int = 8,
                          targets: str = "qv") -> Table:
    """One row per adapted module: the full fine-tune's energy need k (median over seeds, min and max beside it),
    the allocated rank and the uniform one, each with its parameters; the totals obey the budget."""
    usable, left_out = weight_runs(true_label_runs(runs))
    full = usable[roles.reference(usable)] if len(usable) else usable
    task = choose_task(full, task, "the rank allocation needs a full fine-tune (method=full) with its ΔW")
    full = full[full["task"] == task]
    patterns = resolve_targets(targets)
    needs_by_seed: dict[str, list[int]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for _, run in full.iterrows():
        for name, delta in run_deltas(run["run_dir"]).items():
            if matches(name, patterns):
                needs_by_seed.setdefault(name, []).append(max(1, spectrum(delta).energy_rank(fraction)))
                shapes[name] = tuple(delta.shape)
    if not needs_by_seed:
        raise MissingRuns(f"the rank allocation: no ΔW of the {task} full fine-tune matches targets={targets!r}")
    needs = {name: int(round(statistics.median(k))) or 1 for name, k in needs_by_seed.items()}
    budget = uniform_budget(shapes, rank)
    ranks = allocate_ranks(needs, shapes, budget)
    records = []
    for name in sorted(ranks, key=lambda n: (parse_module(n).layer or 0, parse_module(n).kind)):
        mid = parse_module(name)
        records.append({"task": task, "layer": mid.layer, "module": KIND_LABELS.get(mid.kind, mid.kind),
                        "name": name, f"need k ({fraction:.0%} energy)": needs[name],
                        "need min": min(needs_by_seed[name]), "need max": max(needs_by_seed[name]),
                        "allocated r": ranks[name], "uniform r": rank,
                        "allocated params": lora_cost(shapes[name], ranks[name]),
                        "uniform params": lora_cost(shapes[name], rank)})
    frame = pd.DataFrame(records)
    spent = int(frame["allocated params"].sum())
    override = "rank_pattern={" + ",".join(f"{n}:{r}" for n, r in ranks.items() if r != rank) + "}"
    return Table(
        frame=frame,
        title=f"Rank allocation — {task}: the smallest k keeping {fraction:.0%} of the full fine-tune's ΔW energy per "
        f"module ({targets}), scaled to uniform r={rank}'s {budget:,} parameters ({spent:,} allocated)",
        runs=list(full["run"]),
        notes=[f"need: median over {len(full)} full fine-tune seed(s) (min, max beside it). Allocation: ranks "
               f"proportional to the needs, at least 1, within the budget (analysis/maths/allocation.py).",
               f"Train with it: python -m experiments.sweep +experiment=beyond_rank_allocation task={task} "
               f"rank={rank} '{override}'"],
        left_out=left_out,
    )  # fmt: skip
