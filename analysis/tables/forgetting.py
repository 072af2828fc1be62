"""Forgetting from runs (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): what fine-tuning cost the base
model's own skill, beside what it gained on the task.

The training code measures the base model's skill before and after fine-tuning (for the embedded MiniLM, its
zero-shot STS-B Spearman from mean-pooled sentence embeddings) and writes ``metrics.json["forgetting"]`` =
{probe, before, after, value = before − after}. Here, per task and configuration: the task gain over the head-only
baseline and the forgetting, median [min, max] over seeds: learning more for forgetting more, or not.
"""

from __future__ import annotations

import math

import pandas as pd

from ..runs import MissingRuns
from .common import SPREAD_NOTE, config_names, head_baseline, seed_spread, true_label_runs, varying_note
from .table import Table

GAIN, FORGETTING = "task gain", "forgetting"


def forgetting_table(runs: pd.DataFrame) -> Table:
    """One row per task and configuration: last-epoch metric, gain over the head-only baseline, forgetting (probe
    before − after) and the probe's before / after, all ×100, median [min, max] over seeds."""
    true = true_label_runs(runs)
    measured = true[true["forgetting"].notna()]
    if measured.empty:
        raise MissingRuns("forgetting needs runs whose metrics.json has a 'forgetting' block "
                          "({'probe', 'before', 'after', 'value'}), written by the training code")  # fmt: skip
    rows, missing = [], []
    names = config_names(measured)
    for index, run in measured.sort_values(["task", "label", "seed", "run"]).iterrows():
        baseline = head_baseline(true, run["task"])
        if math.isnan(baseline):
            line = f"head-only baseline — needs method=head runs on {run['task']} (the gain is measured from it)"
            missing += [line] if line not in missing else []
        rows.append({"task": run["task"], "method": names[index],
                     "rank": run.get("rank"), "seed": run["seed"], "metric": run["metric"],
                     "probe": run["forgetting_probe"], "metric (last)": 100 * run["score_last"],
                     GAIN: 100 * (run["score_last"] - baseline), FORGETTING: 100 * run["forgetting"],
                     "probe before": 100 * run["forgetting_before"], "probe after": 100 * run["forgetting_after"]})
    values = ["metric (last)", GAIN, FORGETTING, "probe before", "probe after"]
    frame = seed_spread(pd.DataFrame(rows), ["task", "method", "rank", "metric", "probe"], values)
    return Table(
        frame=frame,
        title="Forgetting: task gain over the head-only baseline vs the base model's own skill lost (×100)",
        runs=list(measured["run"]),
        notes=["task gain: last-epoch metric − the median last-epoch metric of the task's method=head runs. "
               "forgetting: probe before − after fine-tuning (positive: skill lost). " + SPREAD_NOTE,
               varying_note(measured)],
        float_format=".2f",
        missing_controls=missing,
    )  # fmt: skip
