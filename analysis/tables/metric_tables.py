"""The paper's metric tables from the run table (``analysis.runs.scan_runs``).

- Table 2: task metric per task, LoRA vs full fine-tuning, parameters trained (with and without the head), median
  over seeds; and its verdicts: per task, each method at its best learning rate against full fine-tuning at its
  best (REPRODUCTION.md's rules 6 and 14).
- Table 5: metric per target set (Wq, Wk, Wv, Wo, {Wq, Wv}, ...) at a fixed budget of trainable parameters.
- Table 6: metric vs LoRA rank r for each target set.

Scores are the primary metric at each run's best epoch, ×100 as the paper prints them (accuracy, Matthews
correlation, Pearson). Every builder returns a ``Table`` or raises ``MissingRuns`` naming what is absent.
"""

from __future__ import annotations

import math

import pandas as pd

from .. import roles
from ..runs import CLASSIFICATION, MissingRuns
from ..runs.folders import natural_order
from .common import MIN_SEEDS, SPREAD_NOTE, beats, column, config_names, training_budget, true_label_runs, varying_note
from .table import Table, human_count

PAPER_TASK_ORDER = ("mnli", "sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")


def task_order(tasks) -> list[str]:
    """The tasks present in ``tasks`` in the paper's order (Table 2), others after them alphabetically."""
    present = set(tasks) - {None}
    return [t for t in PAPER_TASK_ORDER if t in present] + sorted(present - set(PAPER_TASK_ORDER))


# ---------------------------------------------------------------------------------------------------- helpers


def _tasks(frame: pd.DataFrame) -> list[str]:
    return task_order(frame["task"].dropna())


def _seed_range(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _median_min_max(values: pd.Series, scale: float = 100.0) -> tuple[float, float, float]:
    v = values.dropna() * scale
    return (v.median(), v.min(), v.max()) if len(v) else (math.nan, math.nan, math.nan)


def _controls_left_out(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The GLUE runs on true labels, and a line per run left out: shuffled-label controls (generation runs have
    their own table, ``generation.table3``, and are not listed)."""
    runs = runs[runs["family"] == CLASSIFICATION]
    shuffled = runs[runs["data.shuffle_labels"].eq(True)] if "data.shuffle_labels" in runs else runs.iloc[:0]
    return true_label_runs(runs), [f"{run}: shuffled labels (a noise control)" for run in shuffled["run"]]


# ---------------------------------------------------------------------------------------------------- tables


def table2(runs: pd.DataFrame) -> Table:
    """Table 2 analogue: one row per model and configuration (every method found), one column per task: median
    over seeds ×100 with [min, max] beside it. Rows are configurations (``config_id``), never method names: two runs
    that differ in anything but the seed (a budget, a batch size, a rate) are two rows."""
    if runs.empty:
        raise MissingRuns("Table 2 needs LoRA and full fine-tuning runs; no complete runs were found")
    runs, left_out = _controls_left_out(runs)
    shared = set(runs.loc[roles.studied(runs), "task"]) & set(runs.loc[roles.reference(runs), "task"])
    if not shared:
        have = ", ".join(f"{m} on {sorted(set(runs.loc[runs['method'] == m, 'task'])) or 'no task'}"
                         for m in (roles.STUDIED, roles.REFERENCE))  # fmt: skip
        raise MissingRuns(f"Table 2 needs LoRA and full fine-tuning runs on a common task; found {have}")
    frame = runs.assign(config=config_names(runs, model=True), _order=roles.order(runs))
    tasks = _tasks(frame)
    rows = []
    for config, group in frame.groupby("config", sort=False):
        per_task = group.groupby("task")["score"]
        row = {"model / method": config, "params": group["method_params"].median(),
               "trainable": group["trainable_params"].median()}
        medians = {}
        for t in tasks:
            med, lo, hi = _median_min_max(group.loc[group["task"] == t, "score"])
            row.update({t: med, f"{t} min": lo, f"{t} max": hi})
            if not math.isnan(med):
                medians[t] = med
        if len(tasks) > 1:
            row["avg"] = sum(medians.values()) / len(tasks) if len(medians) == len(tasks) else math.nan
        row["seeds"] = _seed_range(per_task.size())
        row["_order"] = group["_order"].iloc[0]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["_order", "model / method"], key=natural_order).drop(columns="_order")
    metrics = frame.groupby("task")["metric"].first()
    return Table(
        frame=table.reset_index(drop=True),
        title="Table 2 analogue: methods compared per task (median over seeds [min, max], best epoch, ×100)",
        runs=list(runs["run"]),
        notes=["Metrics: " + ", ".join(f"{t} {metrics[t]}" for t in tasks) + ". Params: what the method trains, the "
               "paper's count (LoRA: the factors; FT: every weight); trainable: the same plus the task head. "
               + SPREAD_NOTE, varying_note(runs)],
        formats={"params": human_count, "trainable": human_count},
        left_out=left_out,
    )  # fmt: skip


def table2_verdicts(runs: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> Table:
    """Table 2's claim as verdicts: per task and training budget, one row per method and configuration at the
    learning rate with its best median (among the rates with ≥ ``min_seeds`` seeds, when any has them), against full
    fine-tuning of the same model and budget at its own best rate, by rule 6 (a beats b only when a's median exceeds
    b's by more than the larger seed range). A method tried at one rate is compared at that rate; the rates tried are
    listed, so a verdict is never read as one at a searched rate when it was not. Budgets are never pooled: a search
    trial at 2,000 × 1 is not a seed of the same rate at 2,000 × 2."""
    runs, left_out = _controls_left_out(runs)
    runs = runs[runs["score"].notna()]
    full = runs[roles.reference(runs)]
    if full.empty:
        raise MissingRuns("Table 2's verdicts need full fine-tuning runs to compare against; none were found")
    laid_out = ("task", "lr", "train.max_train_samples", "train.epochs")  # rates and budgets: columns of their own
    frame = runs.assign(config=config_names(runs, laid_out, model=True), _order=roles.order(runs), lr=column(runs, "lr"),
                        budget=[training_budget(r) for _, r in runs.iterrows()])  # fmt: skip
    frame = frame.drop_duplicates(["config_id", "seed"])  # a search trial and its rerun: one seed
    best = {}  # (task, config, budget) -> the runs at the rate with the best median
    for (task, config, budget), group in frame.groupby(["task", "config", "budget"], sort=False, dropna=False):
        by_lr = dict(list(group.groupby("lr", dropna=False)))
        pool = {lr: g for lr, g in by_lr.items() if len(g) >= min_seeds} or by_lr
        lr = max(pool, key=lambda k: pool[k]["score"].median())
        best[task, config, budget] = (lr, pool[lr], sorted(by_lr))
    rows, used = [], []
    for (task, config, budget), (lr, group, tried) in best.items():
        model = group["model"].iloc[0]
        references = [g for (t, _, b), (_, g, _) in best.items() if t == task and b == budget
                      and roles.reference(g).all() and g["model"].iloc[0] == model]  # fmt: skip
        if not references:
            continue
        reference = max(references, key=lambda g: g["score"].median())  # full FT at its best
        scores = group["score"] * 100
        med, lo, hi = _median_min_max(group["score"])
        row = {"task": task, "model / method": config, "budget": budget, "lr": lr, "score": med, "score min": lo,
               "score max": hi, "seeds": scores.size, "rates tried": ", ".join(f"{r:.3g}" for r in tried)}
        if group["config_id"].iloc[0] == reference["config_id"].iloc[0]:
            row["vs full FT"] = "the reference"
        else:
            full_scores = reference["score"] * 100
            won, margin, spread = beats(scores, full_scores)
            lost, _, _ = beats(full_scores, scores)
            word = "beats full FT" if won else "beaten by full FT" if lost else "within the spread"
            row["vs full FT"] = f"{word}: {margin:+.1f} vs seed range {spread:.1f}"
        row["_order"] = group["_order"].iloc[0]
        rows.append(row)
        used += list(group["run"])
    if not rows:
        raise MissingRuns("Table 2's verdicts need a method and full fine-tuning on a common task, model and training "
                          "budget; found "
                          f"full FT on {sorted(set(full['task']))} only")
    table = pd.DataFrame(rows)
    order = _tasks(table)
    table = table.assign(_task=table["task"].map(order.index))
    table = table.sort_values(["_task", "budget", "_order", "model / method"])
    return Table(
        frame=table.drop(columns=["_task", "_order"]).reset_index(drop=True),
        title="Table 2's verdicts: per task, each method at its best learning rate against full fine-tuning at its "
              "best (rule 6; dev metric ×100, median over seeds [min, max])",
        runs=used,
        notes=[f"The best rate is the one with the highest median among those with ≥ {min_seeds} seeds (among all "
               "rates tried when none has that many). Rule 6: a beats b only when a's median exceeds b's by more than "
               "the larger of the two seed ranges; otherwise 'within the spread'. Choosing the best of several rates "
               "on the dev set favours the method tried at more of them: 'rates tried' says how many each had."],
        formats={"lr": lambda v: f"{v:.3g}"},
        left_out=left_out,
    )  # fmt: skip


def table6(runs: pd.DataFrame) -> Table:
    """Table 6 analogue: metric vs rank r, one row per task and configuration but for r (LoRA on {Wq, Wv}; DoRA or
    rsLoRA rows of their own), median of seeds ×100 [min, max]. Every method with a rank and factors is read."""
    runs, left_out = _controls_left_out(runs)
    ranked = runs[runs["has_factors"].eq(True) & runs["rank"].notna()] if "rank" in runs else runs.iloc[:0]
    ranked = ranked.assign(config=config_names(ranked, ("task", "rank")))
    counts = ranked.groupby(["task", "config"])["rank"].nunique() if not ranked.empty else pd.Series(dtype=int)
    usable = counts[counts >= 2]
    if usable.empty:
        found = ", ".join(f"{t}/{c}: r={sorted(ranked[(ranked.task == t) & (ranked.config == c)]['rank'].unique())}"
                          for t, c in counts.index) or "no LoRA runs"  # fmt: skip
        raise MissingRuns(f"Table 6 needs LoRA runs at two or more ranks on the same task and targets; found {found}")
    ranks = sorted(int(r) for r in ranked["rank"].unique())
    rows, used = [], []
    for task, config in usable.index:
        group = ranked[(ranked["task"] == task) & (ranked["config"] == config)]
        used += list(group["run"])
        row = {"task": task, "configuration": config}
        for r in ranks:
            med, lo, hi = _median_min_max(group.loc[group["rank"] == r, "score"])
            row.update({f"r={r}": med, f"r={r} min": lo, f"r={r} max": hi})
        row["seeds"] = _seed_range(group.groupby("rank").size())
        rows.append(row)
    return Table(
        frame=pd.DataFrame(rows),
        title="Table 6 analogue: metric vs LoRA rank r (median over seeds [min, max], best epoch, ×100)",
        runs=used,
        notes=[SPREAD_NOTE, varying_note(ranked, ("task", "rank"))],
        left_out=left_out,
    )


def table5(runs: pd.DataFrame) -> Table:
    """Table 5 analogue: metric per target set at one budget of trainable parameters, per task.

    Within a task the head is the same for every run, so runs with equal ``trainable_params`` have equal LoRA
    budgets (Wq at r=8 = {Wq, Wk} at r=4 = all four at r=2 for square projections). Per task the budget shared by
    the most configurations is shown, median over seeds ×100 [min, max]; a row per configuration but for r.
    """
    runs, left_out = _controls_left_out(runs)
    lora = runs[runs["has_factors"].eq(True) & runs["trainable_params"].notna()]
    lora = lora.assign(config=config_names(lora, ("task", "rank")))
    picks = []
    for task, group in lora.groupby("task"):
        by_budget = group.groupby("trainable_params")["config"].nunique()
        if by_budget.max() >= 2:
            budget = by_budget[by_budget == by_budget.max()].index.max()
            picks.append((task, int(budget), group[group["trainable_params"] == budget]))
    if not picks:
        raise MissingRuns(
            "Table 5 needs LoRA runs on two or more target sets with the same number of trainable parameters "
            f"(e.g. targets=q r=8 and targets=qv r=4); found target sets {sorted(set(lora['targets'].dropna()))}"
        )
    order = ["q", "k", "v", "o", "qk", "qv", "qkvo", "all"]
    chosen = pd.concat([g for _, _, g in picks])
    configs = chosen.drop_duplicates("config").assign(_t=lambda f: f["targets"].map(lambda t: (order + [t]).index(t)))
    rows = []
    for config in configs.sort_values(["_t", "config"])["config"]:
        row: dict[str, object] = {"configuration": config}
        ranks = sorted({int(r) for _, _, g in picks for r in g.loc[g["config"] == config, "rank"]})
        row["rank r"] = ", ".join(map(str, ranks))
        seeds = []
        for task, _, group in picks:
            med, lo, hi = _median_min_max(group.loc[group["config"] == config, "score"])
            row.update({task: med, f"{task} min": lo, f"{task} max": hi})
            seeds.append(int((group["config"] == config).sum()))
        row["seeds"] = _seed_range(pd.Series(seeds))
        rows.append(row)
    return Table(
        frame=pd.DataFrame(rows),
        title="Table 5 analogue: metric per weight type at a fixed parameter budget (median over seeds [min, max], "
        "×100)",
        runs=list(chosen["run"]),
        notes=["Budget (trainable parameters incl. head): " + ", ".join(_budget(t, b, g) for t, b, g in picks),
               SPREAD_NOTE, varying_note(chosen, ("task", "rank"))],
        left_out=left_out,
    )


def _budget(task: str, budget: int, group: pd.DataFrame) -> str:
    factors = group["method_params"].dropna()
    lora = f" ({human_count(factors.iloc[0])} of them LoRA's)" if len(factors) else ""
    return f"{task} {human_count(budget)}{lora}"
