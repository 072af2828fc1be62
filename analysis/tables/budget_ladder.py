"""The budget ladder (issue 22): Table 2's gap, the method under study − the reference (LoRA − full fine-tuning),
against how many examples the runs trained on.

A rung is one (task, examples trained on: ``train_examples``, the training subset less its selection slice). At each
rung both arms must be one configuration each (``config_id``): two learning rates, ranks or anything else that
differs are never pooled as seeds; such a rung is left out, naming its configurations. The gap is a − b in points with
its 95% interval over seeds and, where every run kept its dev predictions (``predictions.npz``), over dev examples,
paired (``analysis.maths.stats.difference_interval``), and the four verdicts against the metric's margin. A rung
tests the claim only where the reference learned: its mean clears the constant predictor (the majority class; 0 for
a correlation) by more than the margin, as Table 2's rows require.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .. import roles
from ..maths.stats import constant_score, difference_interval, margin_for, verdict
from ..runs import MissingRuns
from .common import true_label_runs
from .table import Table


def _dev_outputs(run_dir: str) -> dict | None:
    """The run's per-example outputs on its reported dev split, or None when it kept none."""
    from experiments.families.classification import PREDICTIONS, SELECTION, load_predictions

    if not (Path(run_dir) / PREDICTIONS).is_file():
        return None
    splits = {k: v for k, v in load_predictions(run_dir).items() if k != SELECTION}
    return splits[min(splits)] if splits else None  # GLUE's one dev split ("validation"; MNLI: the matched first)


def budget_ladder_table(runs: pd.DataFrame) -> Table:
    """One row per rung (task × examples trained) of every task run at two or more sizes (module docstring)."""
    if "train_examples" not in runs or runs["train_examples"].isna().all():
        raise MissingRuns("runs that record how many examples they trained on (metrics.json data.train_examples)")
    runs = true_label_runs(runs)  # a shuffled-label run is a control, never an arm
    arms = runs[(roles.studied(runs) | roles.reference(runs)) & runs["train_examples"].notna()]
    rows, used, left_out = [], [], []
    for (task, trained), rung in arms.groupby(["task", "train_examples"], sort=True):
        studied, reference = rung[roles.studied(rung)], rung[roles.reference(rung)]
        name = f"{task} at {int(trained):,} examples"
        if studied.empty or reference.empty:
            left_out.append(f"{name}: only {'full FT' if studied.empty else 'LoRA'}")
            continue
        if any(arm["config_id"].nunique() > 1 for arm in (studied, reference)):
            labels = sorted(set(studied["label"]) | set(reference["label"]))
            left_out.append(f"{name}: more than one configuration per arm ({'; '.join(labels)}), never pooled")
            continue
        metric = rung["metric"].iloc[0]
        outputs = {run: _dev_outputs(d) for run, d in zip(rung["run"], rung["run_dir"])}
        have = all(v is not None for v in outputs.values())
        a, b = ([outputs[r] for r in arm["run"]] if have else list(arm["score"]) for arm in (studied, reference))
        d = difference_interval(a, b, metric)
        floor = constant_score(next(iter(outputs.values()))["labels"] if have else None, metric)
        margin = margin_for(metric)
        learned = None if math.isnan(floor) else d.b - floor > margin
        rows.append({
            "task": task, "metric": metric, "examples trained": int(trained),
            "LoRA": d.a, "full FT": d.b, "constant": floor,
            "LoRA − full FT": d.estimate, "LoRA − full FT 2.5%": d.low, "LoRA − full FT 97.5%": d.high,
            "p (seeds)": d.p_value, "seeds": f"{d.seeds_a} vs {d.seeds_b}",
            "dev examples": d.examples, "margin": margin,
            "verdict": verdict(d, margin) if learned is not False else "not tested: full FT did not learn",
            "LoRA lr": studied["lr"].iloc[0], "full FT lr": reference["lr"].iloc[0],
            "LoRA run": studied["label"].iloc[0],
        })  # fmt: skip
        used += list(rung["run"])
    rungs = pd.Series([row["task"] for row in rows]).value_counts()
    single = set(rungs[rungs < 2].index)  # one budget: no ladder to read
    left_out += [f"{task}: one training-set size only" for task in sorted(single)]
    rows = [row for row in rows if row["task"] not in single]
    used = list(arms.loc[arms["run"].isin(used) & ~arms["task"].isin(single), "run"])
    if not rows:
        raise MissingRuns("LoRA and full FT runs of one task at two or more training-set sizes (a budget ladder: "
                          "+experiment=budget_ladder)" + (f"; left out: {'; '.join(left_out)}" if left_out else ""))
    frame = pd.DataFrame(rows)
    notes = ["LoRA − full FT in points (metric × 100), mean over seeds; [95% interval] over seeds and dev examples "
             "(paired) where the runs kept their predictions, seeds only otherwise; verdict against ±margin "
             "(analysis/maths/stats.py). 'constant': the majority class's score on the dev set, the floor full FT "
             "must clear by more than the margin for a rung to test the claim."]
    return Table(frame, "The budget ladder: LoRA − full FT against the examples trained on", used, notes,
                 formats={"examples trained": "{:,}".format, "dev examples": "{:,.0f}".format,
                          "p (seeds)": "{:.2g}".format, "LoRA lr": "{:.3g}".format, "full FT lr": "{:.3g}".format},
                 float_format=".1f", left_out=left_out)  # fmt: skip
