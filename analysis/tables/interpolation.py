"""Does a combined adapter keep both skills? The interpolation curve between two tasks' LoRA adapters (issue 13).

For tasks A and B with LoRA runs of one setting (model, rank, α, targets) and seed, both adapters load as named
adapters on one frozen base model, and for w = 0, 0.1, …, 1

    ΔW(w) = w·ΔW_A + (1 − w)·ΔW_B     (``lorakit.combine_adapters(..., how="cat")``: exact, rank r_A + r_B)

is evaluated on A's dev set with A's trained head and on B's dev set with B's head: only the LoRA factors are
combined, each task keeps its own head (the saved ``modules_to_save``). At w = 1 task A is scored with its own
adapter (the run's own last-epoch metric, reported beside it as a check) and task B with A's factors under B's head;
at w = 0 the reverse. A task whose head has another number of outputs (STS-B's one) gets a base model of its own,
holding the other task's factors without its head.

The control, each adapter alone at the same scale: task A is also scored with w·ΔW_A only and task B with
(1 − w)·ΔW_B only (``combine_adapters`` of the one adapter with that weight: exact, rank r). The mix minus it is
what the other task's factors do (below zero: interference; above: transfer); it minus the own adapter (w = 1 for
A) is the mere down-scaling. At w = 1 A alone is the mix (B weighs 0); at w = 0 it is ΔW = 0, the frozen encoder
under A's head.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from experiments.records import FACTORS

from ..runs import MissingRuns, RunError
from ..runs.dev_sets import DevSet, dev_set
from ..runs.select import groups_across_tasks, lora_with
from .common import head_baseline, setting_names, true_label_runs
from .metric_tables import task_order
from .table import Table

NAMES = ("A", "B")  # the two adapters' names on the model; "mix" is a weighted combination of them, while scored


def _with_adapter(runs: pd.DataFrame) -> pd.DataFrame:
    lora = lora_with(true_label_runs(runs), set())
    return lora[[(Path(d) / FACTORS).is_dir() for d in lora["run_dir"]]] if len(lora) else lora


def choose_pair(runs: pd.DataFrame, pair: tuple[str, str] | None = None
                ) -> tuple[pd.DataFrame, str, str, str, list[int]]:
    """(the runs of one setting, its name, task A, task B, their common seeds): ``pair`` if given, else, in the first
    setting of ``select.groups_across_tasks``, the pair with the most common seeds (then the paper's task order)."""
    groups = groups_across_tasks(_with_adapter(runs))
    names = setting_names(groups)
    what = ("the interpolation curve needs LoRA runs with adapter/ on two tasks with the same model, rank, α, "
            "targets and seed")  # fmt: skip
    if not groups:
        raise MissingRuns(what)

    def common(group: pd.DataFrame, a: str, b: str) -> list[int]:
        seeds = [set(int(s) for s in group.loc[group["task"] == t, "seed"]) for t in (a, b)]
        return sorted(seeds[0] & seeds[1])

    if pair is not None:
        a, b = pair
        for group, name in zip(groups, names):
            if common(group, a, b):
                return group, name, a, b, common(group, a, b)
        found = sorted({f"{x} + {y}" for g in groups for x, y in _task_pairs(g) if common(g, x, y)})
        raise MissingRuns(f"{what}: no such runs for the pair {a} + {b} (pairs with runs: {found})")
    for group, name in zip(groups, names):
        candidates = [(x, y) for x, y in _task_pairs(group) if common(group, x, y)]
        if candidates:
            a, b = max(candidates, key=lambda p: len(common(group, *p)))  # the first of the paper's order among equals
            return group, name, a, b, common(group, a, b)
    raise MissingRuns(f"{what}: no two tasks share a seed")


def _task_pairs(group: pd.DataFrame) -> list[tuple[str, str]]:
    tasks = task_order(group["task"])
    return [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]


def _checked_head(row: pd.Series) -> None:
    from lorakit import read_adapter

    if not read_adapter(Path(row["run_dir"]) / FACTORS).extra:
        raise RunError(f"{row['run']}: adapter/ holds no trained head (modules_to_save); the interpolation scores "
                       f"each task with its own head")  # fmt: skip


def _score(model, dev: DevSet, weights: dict[str, float], head: str) -> float:
    """``dev``'s metric of the model with the adapter Σ wᵢ ΔWᵢ over ``weights`` (``combine_adapters(how="cat")``,
    exact) under adapter ``head``'s task head; leaves the model's adapters as they were."""
    from lorakit import combine_adapters, delete_adapter, set_adapter

    combine_adapters(model, weights, "mix", how="cat", head=head)
    set_adapter(model, "mix")
    try:
        return dev.score(model)
    finally:
        delete_adapter(model, "mix")


def interpolation_curves(
    runs: pd.DataFrame,
    pair: tuple[str, str] | None = None,
    seeds: int = 3,
    points: int = 11,
    data_dir: str | None = None,
) -> Table:
    """One row per (seed, w, task): the dev metric ×100 of task A and of task B with w·ΔW_A + (1 − w)·ΔW_B, for
    ``points`` values of w from 0 to 1 and at most ``seeds`` common seeds (the lowest); ``alone`` is the task's with
    its own adapter alone at the same scale (w·ΔW_A for A, (1 − w)·ΔW_B for B); ``recorded`` is the task's own
    run's last-epoch metric ×100 where the mix is its own adapter (w = 1 for A, 0 for B; NaN elsewhere), a check
    that the rebuilt evaluation is the run's, and ``head-only baseline`` the task's method=head median."""
    from lorakit import delete_adapter, load_adapter

    from experiments.errors import ConfigError
    from experiments.models import load_model, load_tokenizer

    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an integer >= 2 (w = 0 and 1 at least), got {points!r}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    group, setting, a, b, common = choose_pair(runs, pair)
    common = common[:seeds]
    rows = {(t, s): group[(group["task"] == t) & (group["seed"] == s)].iloc[0] for t in (a, b) for s in common}
    for row in rows.values():
        _checked_head(row)
    model_path = str(group["model_path"].iloc[0])
    baselines = {t: head_baseline(runs, t, "score_last") for t in (a, b)}
    try:  # a model or data folder that is not where the run found it: one line
        tokenizer = load_tokenizer(model_path)
        dev: dict[str, DevSet] = {t: dev_set(rows[t, common[0]]["run_dir"], tokenizer, data_dir) for t in (a, b)}
        # One base model per head size (STS-B's one output against two), reused across seeds.
        models = {n: load_model(model_path, n) for n in dict.fromkeys(dev[t].num_labels for t in (a, b))}
    except ConfigError as err:
        raise RunError(str(err)) from None
    weights = [round(i / (points - 1), 10) for i in range(points)]
    records = []
    for seed in common:
        for labels, model in models.items():
            for name, task in zip(NAMES, (a, b)):
                load_adapter(model, Path(rows[task, seed]["run_dir"]) / FACTORS, head=dev[task].num_labels == labels,
                             name=name)  # fmt: skip
            for name, task in zip(NAMES, (a, b)):
                if dev[task].num_labels != labels:
                    continue
                for w in weights:
                    own = w if task == a else 1.0 - w  # the task's own adapter's weight in the mix (1: recorded)
                    value = _score(model, dev[task], {"A": w, "B": 1.0 - w}, name)
                    alone = _score(model, dev[task], {name: own}, name)
                    records.append({"pair": f"{a} + {b}", "seed": seed, "w": w, "task": task, "metric": dev[task].metric,
                                    "value": 100 * value, "alone": 100 * alone,
                                    "recorded": 100 * rows[task, seed]["score_last"] if own == 1.0 else math.nan,
                                    "head-only baseline": 100 * baselines[task]})  # fmt: skip
            for name in NAMES:
                delete_adapter(model, name)  # the base model again, its own head included
    frame = pd.DataFrame(records)
    missing = [f"head-only baseline — needs method=head runs on {t}" for t in (a, b) if math.isnan(baselines[t])]
    return Table(
        frame=frame,
        title=f"Interpolation {a} + {b} ({setting}): dev metric ×100 of each task with "
        f"w·ΔW_{a} + (1 − w)·ΔW_{b} and with its own adapter alone at the same scale, each task with its own head",
        runs=sorted(row["run"] for row in rows.values()),
        notes=[f"w: the weight of {a}'s update (1: {a}'s adapter alone; 0: {b}'s). combine_adapters(how='cat'), exact. "
               f"value: the mix. alone: the task's own adapter alone at its weight in the mix (w·ΔW_{a} for {a}, "
               f"(1 − w)·ΔW_{b} for {b}), the control: value − alone is what the other task's factors do (< 0: "
               f"interference, > 0: transfer), alone − recorded the down-scaling; at w = 0 {a} alone is ΔW = 0, the frozen encoder under {a}'s head. "
               f"recorded: the task's own run's last-epoch metric, at its own end (w = 1 for {a}, w = 0 for {b}), where "
               f"the value should equal it. Seeds: {', '.join(map(str, common))}."],
        float_format=".2f",
        missing_controls=missing,
    )  # fmt: skip
