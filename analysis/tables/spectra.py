"""ΔW spectra from runs: rank at an energy fraction, effective rank and signal rank of every update, beside the
spectra noise alone gives.

Two noise floors, per module, for the task's full fine-tunes (one model):
- seed noise: (ΔW₁ − ΔW₂)/√2 of the two lowest-seed full fine-tunes on true labels (``maths.noise_floor``);
- shuffled labels: ΔW of a full fine-tune with ``shuffle_labels: true`` (lowest seed), what training on no signal
  writes into the weights.
Each floor appears as its own row (its rank at 90% energy beside the task's), and every update gets a signal rank per
floor: the number of its singular values above the floor's largest (``maths.signal_rank``). Without the control runs
the table is still made, and says which runs would give the floor.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from ..maths import noise_floor, signal_rank, spectrum
from ..runs import KIND_LABELS, parse_module, run_deltas, sort_modules
from ..runs.lazy import Derived
from ..runs.select import choose_task
from .. import roles
from .common import SPREAD_NOTE, config_names, seed_spread, true_label_runs, weight_runs
from .table import Table

SEED_FLOOR, SHUFFLED_FLOOR = "noise floor: seed difference", "noise floor: shuffled labels"


def _floors(full: pd.DataFrame, shuffled: pd.DataFrame, task: str) -> tuple[dict, list[str], list[str]]:
    """({floor name: {module: floor ΔW}}, the runs used, the controls missing with the runs that would give them)."""
    floors, used, missing = {}, [], []
    seeds = full.drop_duplicates("seed").sort_values(["seed", "run"])
    if len(seeds) >= 2:
        a, b = seeds.iloc[0], seeds.iloc[1]
        da, db = run_deltas(a["run_dir"]), run_deltas(b["run_dir"])
        floors[SEED_FLOOR] = Derived([n for n in da if n in db], lambda n: noise_floor(da[n], db[n]))  # per module
        used += [a["run"], b["run"]]
    else:
        missing.append(f"seed noise floor — needs two full fine-tunes on {task} that differ only in seed "
                       f"(method=full, shuffle_labels=false, two seeds); found {len(seeds)}")  # fmt: skip
    if len(shuffled):
        s = shuffled.sort_values(["seed", "run"]).iloc[0]
        floors[SHUFFLED_FLOOR] = run_deltas(s["run_dir"])
        used.append(s["run"])
    else:
        missing.append(f"shuffled-label noise floor — needs a full fine-tune on {task} with shuffle_labels=true")
    return floors, used, missing


def _module_row(name: str, delta: torch.Tensor, fractions, tops: dict[str, dict[str, float]],
                spec=None) -> tuple[dict, object]:  # fmt: skip
    spec = spectrum(delta) if spec is None else spec
    mid = parse_module(name)
    row = {"layer": mid.layer, "module": KIND_LABELS.get(mid.kind, mid.kind), "shape": "x".join(map(str, delta.shape))}
    row.update({f"rank@{f:.0%}": spec.energy_rank(f) for f in fractions})
    row.update({"effective rank": spec.effective_rank, "‖ΔW‖_F": spec.frobenius_norm})
    for floor, label in ((SEED_FLOOR, "signal rank vs seed noise"), (SHUFFLED_FLOOR, "signal rank vs shuffled")):
        top = tops.get(floor, {}).get(name)
        row[label] = signal_rank(spec, top) if top is not None else math.nan
    return row, spec


def spectra_table(
    runs: pd.DataFrame, task: str | None = None, fractions=(0.9, 0.99)
) -> tuple[Table, dict[str, dict[str, torch.Tensor]]]:
    """Per configuration (full FT, each LoRA/DoRA setting, the two noise floors), layer and module: rank at 90% and
    99% energy, effective rank, ‖ΔW‖_F and the signal ranks, median [min, max] over seeds. Also {configuration:
    {module name: cumulative energy}} of each configuration's lowest seed, for plotting."""
    usable, left_out = weight_runs(runs)
    true = true_label_runs(usable)
    full_all = true[roles.reference(true)]
    task = choose_task(full_all, task, "the ΔW spectra need a full fine-tuning run with delta_weights.safetensors")
    full = full_all[full_all["task"] == task]
    full = full[full["model_path"] == full["model_path"].iloc[0]]
    seeds = full.groupby("config_id")["seed"].nunique()
    floor_config = seeds[seeds == seeds.max()].index.min()  # the seed floor: two seeds of one configuration
    shuffled = usable[usable["data.shuffle_labels"].eq(True) & roles.reference(usable) & (usable["task"] == task)]
    floors, floor_runs, missing = _floors(full[full["config_id"] == floor_config], shuffled, task)
    # Each floor's spectrum once per module (singular values only are kept: O(d) per module, not ΔW itself).
    floor_specs = {f: {n: spectrum(d) for n, d in by_module.items()} for f, by_module in floors.items()}
    tops = {f: {n: float(spec.singular_values[0]) for n, spec in specs.items()} for f, specs in floor_specs.items()}
    on_task = true[(true["task"] == task) & ~roles.reference(true)]
    configs = pd.concat([full, on_task]).sort_values(["seed", "run"])
    names = config_names(configs)
    records, curves = [], {}
    for index, run in configs.iterrows():
        config = names[index]
        deltas = run_deltas(run["run_dir"])
        for name in sort_modules(list(deltas)):
            row, spec = _module_row(name, deltas[name], fractions, tops)
            records.append({"method": config, "seed": run["seed"], **row})
            curves.setdefault(config, {}).setdefault(name, spec.energy)  # lowest seed: configs are sorted by seed
    for floor, by_module in floors.items():
        for name in sort_modules(list(by_module)):
            others = {f: t for f, t in tops.items() if f != floor}  # a floor against itself says nothing
            row, spec = _module_row(name, by_module[name], fractions, others, floor_specs[floor][name])
            records.append({"method": floor, "seed": 0, **row})
            curves.setdefault(floor, {})[name] = spec.energy
    frame = pd.DataFrame(records)
    values = [f"rank@{f:.0%}" for f in fractions] + ["effective rank", "‖ΔW‖_F", "signal rank vs seed noise",
                                                     "signal rank vs shuffled"]  # fmt: skip
    table = seed_spread(frame, ["method", "layer", "module", "shape"], values)
    table.insert(0, "task", task)
    return Table(
        frame=table,
        title=f"ΔW spectra — {task}: rank reaching 90% / 99% of Σσ², effective rank and signal rank per layer and "
        "module, beside the noise floors",
        runs=list(configs["run"]) + floor_runs,
        notes=["Effective rank: exp of the entropy of σ/Σσ (Roy & Vetterli 2007). Noise floors: seed difference = "
               "(ΔW₁ − ΔW₂)/√2 of two full fine-tunes differing only in seed; shuffled labels = ΔW of a full "
               "fine-tune on shuffled labels. Signal rank: the number of singular values of ΔW above the floor's "
               "largest singular value (and above ΔW's rounding). " + SPREAD_NOTE],
        formats={"effective rank": lambda v: f"{v:.1f}", "‖ΔW‖_F": lambda v: f"{v:.3g}",
                 **{v: lambda x: f"{x:g}" for v in values if "rank@" in v or "signal" in v}},
        left_out=left_out,
        missing_controls=missing,
    ), curves
