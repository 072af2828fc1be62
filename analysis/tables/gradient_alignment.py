"""Where do LoRA's directions come from? φ between G₀'s top-r subspaces and what each run learned (issue 23, beyond
the paper; the maths in ``maths.alignment``).

Per run with a ΔW on one task (LoRA and its variants, full fine-tuning), per adapted module, at r = the LoRA rank
(``rank`` for full fine-tuning, which has none): φ(G₀'s top-r column space, B's column space) and φ(G₀'s row space,
Aᵀ's) for plain LoRA factors, and the same with ΔW's top-r singular subspaces for every run. G₀ enters through
experiments' one door (``experiments.gradients.run_gradients``: the run's pretrained model with its seed's head, on
its fixed batch set, cached). Controls: φ of random r-dim subspaces of the same space (mean and 95% interval over
``draws`` pairs), and φ with G₀ of another task (the same model and seed, that task's data and head), when runs of
another task are given.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from experiments.records import FACTORS

from ..maths.alignment import delta_alignment, factor_alignment
from ..maths.subspace import random_subspace_overlap
from ..runs import KIND_LABELS, MissingRuns, RunError, parse_module, run_deltas
from ..runs.select import choose_task
from .common import seed_spread, true_label_runs, weight_runs
from .table import Table


def _plain_factors(run_dir: str) -> dict:
    """{module: (A, B)} of a plain LoRA adapter (not DoRA, not a residual init saved at rank 2r), else {}."""
    from lorakit import read_adapter

    path = Path(run_dir) / FACTORS
    if not path.is_dir():
        return {}
    adapter = read_adapter(path)
    if adapter.kind != "plain LoRA" or str(adapter.config.get("init_lora_weights")) not in ("gaussian", "True"):
        return {}
    return {name: (A.double(), B.double()) for name, (A, B) in adapter.factors.items()}


def _gradients(run, examples: int, data_dir: str | None):
    from experiments.errors import ConfigError
    from experiments.gradients import run_gradients

    try:
        return run_gradients(run["run_dir"], examples, data_dir)
    except ConfigError as err:
        raise RunError(f"{run['run']}: G₀ cannot be rebuilt: {err}") from None


def gradient_alignment_tables(runs: pd.DataFrame, task: str | None = None, rank: int = 8, draws: int = 200,
                              seed: int = 0, examples: int = 256, data_dir: str | None = None) -> tuple[Table, Table]:
    """φ of G₀ with each run's B / Aᵀ and ΔW beside the random-subspace interval and, where runs of another task
    exist, φ with that task's G₀: per configuration, layer and module (median [min, max] over seeds), and per run
    (the mean over its modules)."""
    usable, left_out = weight_runs(true_label_runs(runs))
    task = choose_task(usable, task, "gradient alignment needs runs with a ΔW (LoRA, DoRA, full) and config.yaml")
    on_task = usable[usable["task"] == task]
    others = usable[(usable["task"] != task) & usable["seed"].isin(on_task["seed"])
                    & usable["model_path"].isin(on_task["model_path"])]  # G₀ of the same model, another task
    control_of = {int(s): others[others["seed"] == s].iloc[0] for s in sorted(set(others["seed"]))}
    chance: dict[tuple[int, int], object] = {}
    records = []
    for _, run in on_task.sort_values(["label", "seed"]).iterrows():
        g0 = _gradients(run, examples, data_dir)
        other = _gradients(control_of[int(run["seed"])], examples, data_dir) if int(run["seed"]) in control_of else {}
        factors = _plain_factors(run["run_dir"])
        for name, delta in run_deltas(run["run_dir"]).items():
            if name not in g0 or delta.abs().max() == 0:
                continue
            r = factors[name][0].shape[0] if name in factors else rank
            r = min(r, min(delta.shape))
            mid = parse_module(name)
            row = {"config": run["label"], "seed": run["seed"], "layer": mid.layer,
                   "module": KIND_LABELS.get(mid.kind, mid.kind), "r": r}
            for side, value in delta_alignment(g0[name], delta, r).items():
                row[f"φ {side} (ΔW)"] = value
            if name in factors:
                A, B = factors[name]
                for side, value in factor_alignment(g0[name], A, B).items():
                    row[f"φ {side} ({'B' if side == 'column' else 'Aᵀ'})"] = value
            if name in other:
                for side, value in delta_alignment(other[name], delta, r).items():
                    row[f"φ {side} (ΔW), other task's G₀"] = value
            for side, d in (("column", delta.shape[0]), ("row", delta.shape[1])):
                key = (d, r)
                if key not in chance:
                    chance[key] = random_subspace_overlap(d, r, draws, seed)
                row[f"random {side}"], row[f"random {side} 2.5%"], row[f"random {side} 97.5%"] = (
                    chance[key].mean, chance[key].lo, chance[key].hi)
            records.append(row)
    if not records:
        raise MissingRuns(f"gradient alignment: no run on {task} has a non-zero ΔW on a module G₀ covers")
    frame = pd.DataFrame(records)
    values = [c for c in frame.columns if c.startswith("φ ")]
    table = seed_spread(frame, ["config", "layer", "module", "r"], values)
    chance_cols = [c for c in frame.columns if c.startswith("random ")]
    table = table.merge(frame.groupby(["config", "layer", "module", "r"], dropna=False)[chance_cols].first()
                        .reset_index(), on=["config", "layer", "module", "r"])  # fmt: skip
    table.insert(0, "task", task)
    missing = [] if control_of else [f"φ with another task's G₀ — needs runs of another task with the seeds of the "
                                     f"{task} runs"]  # fmt: skip
    by_module = Table(
        frame=table,
        title=f"Gradient alignment — {task}: φ(r, r) between G₀'s top-r column/row subspaces and each run's B / Aᵀ "
        f"and ΔW's top-r subspaces, beside random r-dim subspaces",
        runs=list(on_task["run"]),
        notes=[f"G₀ = ∂L/∂W at the pretrained weights with the run's seed's head, on the first {examples} training "
               f"examples (experiments/gradients.py). r: the LoRA rank (full fine-tuning: {rank}). random: mean "
               f"[95%] over {draws} pairs of Haar-random r-dim subspaces. Median [min, max] over seeds."],
        float_format=".3f",
        left_out=left_out,
        missing_controls=missing,
    )  # fmt: skip
    seeds = frame.groupby(["config", "seed"])[values + chance_cols].mean().reset_index()
    seeds.insert(0, "task", task)
    title = by_module.title.replace("Gradient alignment —", "Gradient alignment by seed, mean over modules —")
    notes = [by_module.notes[0].replace(" Median [min, max] over seeds.", ""),
             "One row per run: φ and chance averaged over its adapted modules (what rule B1 reads per seed)."]
    by_seed = Table(frame=seeds, title=title, runs=by_module.runs, notes=notes, float_format=".3f",
                    missing_controls=missing)
    return by_module, by_seed


def alignment_summary(table: Table) -> Table:
    """The alignment table averaged over layers and modules per configuration, beside chance: one line each."""
    frame = table.frame
    cols = [c for c in frame.columns if c.startswith(("φ ", "random ")) and not c.endswith((" min", " max"))]
    summary = frame.groupby("config")[cols].mean().reset_index()
    for side in ("column", "row"):
        summary[f"ΔW above chance ({side})"] = summary[f"φ {side} (ΔW)"] > summary[f"random {side} 97.5%"]
    return Table(frame=summary, title=table.title.replace("Gradient alignment", "Gradient alignment, mean over "
                 "modules"), runs=table.runs, notes=table.notes, float_format=".3f",
                 missing_controls=table.missing_controls)  # fmt: skip


def alignment_curve_table(runs: pd.DataFrame) -> Table:
    """φ with G₀ over training, from the runs that measured it while they trained (``execution.monitor.
    gradient_alignment``, experiments/monitor.py): per run and evaluation, the mean over its measured modules."""
    import json

    from experiments.records import METRICS

    records = []
    for _, run in runs.sort_values(["label", "seed"]).iterrows():
        history = json.loads((Path(run["run_dir"]) / METRICS).read_text()).get("spectral_history") or []
        for record in history:
            measured = [v for v in record["modules"].values() if "G0_column" in v]
            if measured:
                records.append({"task": run["task"], "config": run["label"], "seed": run["seed"], "run": run["run"],
                                "epoch": record["epoch"], "step": record["step"], "modules": len(measured),
                                **{f"φ {side}": sum(v[f"G0_{side}"] for v in measured) / len(measured)
                                   for side in ("column", "row")}})  # fmt: skip
    if not records:
        raise MissingRuns("φ over training needs runs trained with execution.monitor.gradient_alignment=true")
    frame = pd.DataFrame(records)
    ran = list(dict.fromkeys(frame.pop("run")))
    return Table(frame=frame, title="Gradient alignment over training: φ with G₀'s top-r subspaces at each "
                 "evaluation, mean over the measured modules", runs=ran,
                 notes=["Measured by the run itself at each evaluation (experiments/monitor.py: B's column space and "
                        "Aᵀ's against G₀'s top-r left and right singular directions, r = the factors' rank; ΔW's top "
                        "8 without factors)."], float_format=".3f")  # fmt: skip
