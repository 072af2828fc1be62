"""Rank truncation from runs: the direct test of the intrinsic-rank hypothesis (Hu et al. 2021, §7).

The training code replaces the ΔW of every adapted matrix by its best rank-k approximation (``maths.best_rank_k``)
for k = 1, 2, 4, …, evaluates the dev set, and writes ``metrics.json["truncation"]``; the untruncated value is
``metrics.json["last"]``. Here: one row per (run, k), and per configuration the rank needed to keep 90% of the
fine-tune's gain over the head-only baseline.

The rule, per run: gain = metric(untruncated) − baseline, with baseline the median last-epoch metric of the task's
method=head runs; the rank needed is the smallest k evaluated with metric(k) − baseline ≥ 0.9 · gain. A run whose
gain is not positive has nothing to keep (no rank reported); a run that no evaluated k brings to 90% counts as not
reaching it.
"""

from __future__ import annotations

import math

import pandas as pd

from ..runs import MissingRuns, read_truncation
from .. import roles
from .common import SPREAD_NOTE, config_names, head_baseline, seed_spread, true_label_runs
from .table import Table

KEEP = 0.9


def rank_to_keep(points: list[tuple[int, float]], untruncated: float, baseline: float, keep: float = KEEP) -> float:
    """Smallest k of ``points`` [(k, metric)] with metric − baseline ≥ keep · (untruncated − baseline); NaN when
    the gain is not positive or no k reaches it."""
    gain = untruncated - baseline
    if not gain > 0:
        return math.nan
    reached = [k for k, value in sorted(points) if value - baseline >= keep * gain]
    return float(reached[0]) if reached else math.nan


def truncation_tables(runs: pd.DataFrame) -> tuple[Table, Table]:
    """(one row per run and k: the metric ×100 with ΔW cut to rank k; per task and configuration: the untruncated
    metric, the head-only baseline, the gain and the rank that keeps 90% of it, median [min, max] over seeds)."""
    true = true_label_runs(runs)
    cut = true[true["has_truncation"].eq(True)]
    if cut.empty:
        raise MissingRuns("rank truncation needs runs whose metrics.json has a 'truncation' list "
                          "([{'k': 1, '<metric>': value}, ...]), written by the training code")  # fmt: skip
    points, summary, missing = [], [], []
    names = config_names(cut)
    for index, run in cut.sort_values(["task", "label", "seed", "run"]).iterrows():
        curve = read_truncation(run["run_dir"], run["metric"])
        config = names[index]
        points += [{"run": run["run"], "task": run["task"], "method": config, "rank": run.get("rank"),
                    "seed": run["seed"], "k": k, "metric": run["metric"], "value": 100 * v} for k, v in curve]
        baseline = head_baseline(true, run["task"])
        if math.isnan(baseline):
            line = f"head-only baseline — needs method=head runs on {run['task']} (the gain is measured from it)"
            missing += [line] if line not in missing else []
        needed = rank_to_keep(curve, run["score_last"], baseline)
        summary.append({"task": run["task"], "method": config, "seed": run["seed"], "metric": run["metric"],
                        "untruncated": 100 * run["score_last"], "head-only baseline": 100 * baseline,
                        "gain": 100 * (run["score_last"] - baseline), f"rank for {KEEP:.0%} of gain": needed,
                        "reached": not math.isnan(needed), "k evaluated": ", ".join(str(k) for k, _ in curve)})
    frame = pd.DataFrame(summary)
    values = ["untruncated", "head-only baseline", "gain", f"rank for {KEEP:.0%} of gain"]
    keys = ["task", "method", "metric", "k evaluated"]
    table = seed_spread(frame, keys, values)
    reached = frame.groupby(keys, sort=False, dropna=False)["reached"].agg(lambda v: f"{int(v.sum())}/{len(v)}")
    table.insert(table.columns.get_loc("seeds"), f"seeds reaching {KEEP:.0%}", list(reached.values))
    curves = Table(
        frame=pd.DataFrame(points),
        title="Rank truncation: the task metric (×100) with every adapted ΔW replaced by its best rank-k approximation",
        runs=list(cut["run"]),
        notes=["value: the dev-set metric ×100 at truncation rank k; the untruncated value is in truncation_summary."],
        float_format=".2f",
    )
    return curves, Table(
        frame=table,
        title=f"Rank truncation: the rank that keeps {KEEP:.0%} of the fine-tune's gain over the head-only baseline",
        runs=list(cut["run"]) + list(true.loc[roles.baseline(true) & true["task"].isin(set(cut["task"])),
                                                "run"]),
        notes=["Gain: last-epoch metric − the median last-epoch metric of the task's method=head runs (×100). "
               f"Rank for {KEEP:.0%} of gain: the smallest k evaluated with metric(k) − baseline ≥ {KEEP:g} · gain, "
               "per run; a run no evaluated k brings there has no value (seeds reaching counts them). " + SPREAD_NOTE],
        formats={f"rank for {KEEP:.0%} of gain": lambda v: f"{v:g}"},
        float_format=".2f",
        missing_controls=missing,
    )  # fmt: skip
