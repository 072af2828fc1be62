"""Learning rates chosen, not assumed (issue 11): every learning rate tried, and whether the best one wins.

A search (``hydra/sweeper=optuna``: one seed per trial) proposes; a confirmation sweep trains the proposal and the
preset's default with several seeds at the same budget; this table pools both by (task, configuration, budget,
learning rate) and applies REPRODUCTION.md's rule 6 to the learning rates with enough seeds:

    a beats b  ⇔  median(a) − median(b) > max(range(a), range(b)),   range = max − min over seeds

The best (highest median) learning rate is *chosen* only when it beats every other confirmed one; otherwise the
search could not tell them apart, and a preset has no reason to move. One run per seed counts: a search trial and a
confirmation run of the same learning rate and seed are the same deterministic run twice.
"""

from __future__ import annotations

import pandas as pd

from ..runs import MissingRuns
from .common import MIN_SEEDS, beats, column, config_names, seed_spread, training_budget, true_label_runs
from .table import Table

def _verdict(group: pd.DataFrame, min_seeds: int) -> dict[float, str]:
    """One line per learning rate of one (task, configuration, budget): which won, or that none could be told apart."""
    by_lr = {lr: rows["score"] * 100 for lr, rows in group.groupby("lr")}
    confirmed = {lr: s for lr, s in by_lr.items() if s.size >= min_seeds}
    lines = {lr: f"search trial ({s.size} seed{'s' if s.size > 1 else ''})" for lr, s in by_lr.items()
             if lr not in confirmed}  # fmt: skip
    if len(confirmed) < 2:
        lines.update({lr: f"the only learning rate with ≥ {min_seeds} seeds" for lr in confirmed})
        return lines
    best = max(confirmed, key=lambda lr: confirmed[lr].median())
    lost = []
    for lr, scores in confirmed.items():
        if lr == best:
            continue
        won, margin, spread = beats(confirmed[best], scores)
        lines[lr] = f"{'beaten' if won else 'not told apart'}: {margin:+.1f} vs seed range {spread:.1f}"
        lost += [] if won else [f"{lr:.2g}"]
    lines[best] = "chosen: beats every other confirmed rate" if not lost else \
        f"best median, not chosen: within the spread of {', '.join(lost)}"  # fmt: skip
    return lines


def lr_search_tables(runs: pd.DataFrame, min_seeds: int = MIN_SEEDS) -> tuple[Table, Table]:
    """(one row per run: task, configuration, budget, learning rate, seed, dev metric ×100; per task, configuration
    and training budget, one row per learning rate: the metric's median [min, max] over seeds and the verdict of rule 6
    among the rates with ≥ ``min_seeds`` seeds)."""
    runs = true_label_runs(runs).assign(lr=lambda f: column(f, "lr"))
    runs = runs[runs["lr"].notna() & runs["score"].notna()]
    if runs.empty:
        raise MissingRuns("the learning-rate table needs complete runs with a learning rate in config.yaml (method.lr)")
    laid_out = ("task", "lr", "train.max_train_samples", "train.epochs")  # the rate and the budget: columns
    frame = runs.assign(config=config_names(runs, laid_out), budget=[training_budget(r) for _, r in runs.iterrows()])
    frame = frame.drop_duplicates(["config_id", "seed"])  # a trial and its confirmation rerun: the same run twice
    tried = frame.groupby(["task", "config", "budget"])["lr"].nunique()
    if not (tried >= 2).any():
        found = ", ".join(f"{t} {c} ({b}): lr {frame.loc[(frame.task == t) & (frame.config == c), 'lr'].iloc[0]:.2g}"
                          for t, c, b in tried.index)  # fmt: skip
        raise MissingRuns(f"the learning-rate table needs two or more learning rates of one configuration and budget; "
                          f"found {found}")
    keep = [key for key, n in tried.items() if n >= 2]
    frame = frame[frame.set_index(["task", "config", "budget"]).index.isin(keep)]
    table = seed_spread(frame.sort_values("lr"), ["task", "config", "budget", "lr"], ["score"], scale=100.0)
    verdicts = {}
    for key, group in frame.groupby(["task", "config", "budget"]):
        verdicts.update({(*key, lr): line for lr, line in _verdict(group, min_seeds).items()})
    table["verdict"] = [verdicts[(r.task, r.config, r.budget, r.lr)] for r in table.itertuples()]
    table = table.sort_values(["task", "config", "budget", "lr"]).reset_index(drop=True)
    points = frame.assign(score=frame["score"] * 100)[["task", "config", "budget", "lr", "seed", "score", "run"]]
    trials = Table(frame=points.sort_values(["task", "config", "budget", "lr", "seed"]).reset_index(drop=True),
                   title="Every run of the learning-rate search and its confirmation: dev metric ×100",
                   runs=list(frame["run"]), formats={"lr": lambda v: f"{v:.3g}"})  # fmt: skip
    return trials, Table(
        frame=table,
        title="Learning rates tried: dev metric ×100, median over seeds [min, max], and which one wins (rule 6)",
        runs=list(frame["run"]),
        notes=[f"A rate is confirmed with ≥ {min_seeds} seeds; fewer are search trials (Optuna, one seed each). "
               "Rule 6: a beats b only when a's median exceeds b's by more than the larger of the two seed ranges. "
               "'chosen' is the best median when it beats every other confirmed rate; otherwise no rate is chosen."],
        formats={"lr": lambda v: f"{v:.3g}"},
    )  # fmt: skip


def selection_search_table(runs: pd.DataFrame, seed: int = 0) -> Table:
    """A grid search with selection apart from report (issue 22): per task, configuration and budget, one row per
    learning rate tried at ``seed`` (the search's one seed), its metric on the selection slice held out of training
    (``best_<metric>_selection``: the reported epoch's, chosen on that slice) and on the dev set; the rate *chosen* is
    the one with the highest selection metric (the first of a tie, in rate order), the dev column never enters the
    choice. Confirmation runs use other seeds, so none of a search's trials is among them. Only runs trained with
    ``train.select_on=selection`` count."""
    runs = true_label_runs(runs).assign(lr=lambda f: column(f, "lr"))
    runs = runs[column(runs, "train.select_on").eq("selection") & runs["lr"].notna() & runs["seed"].eq(seed)]
    if runs.empty:
        raise MissingRuns(f"a selection-slice search needs seed-{seed} runs trained with train.select_on=selection "
                          "(data.selection_examples > 0) at two or more learning rates")
    laid_out = ("task", "lr", "train.max_train_samples", "train.epochs")
    frame = runs.assign(config=config_names(runs, laid_out), budget=[training_budget(r) for _, r in runs.iterrows()])
    rows = []
    for (task, config, budget), group in frame.groupby(["task", "config", "budget"], sort=True):
        if group["lr"].nunique() < 2:
            continue
        group = group.sort_values("lr")
        metric = group["metric"].iloc[0]
        selection = 100 * column(group, f"best_{metric}_selection").astype(float)
        chosen = selection.idxmax() if selection.notna().any() else None
        rows += [{"task": task, "config": config, "method": r["method"], "budget": budget, "lr": r["lr"],
                  "metric": metric, "selection": selection[i], "dev (not used to choose)": 100 * r["score"],
                  "chosen": "chosen" if i == chosen else "", "run": r["run"]} for i, r in group.iterrows()]  # fmt: skip
    if not rows:
        raise MissingRuns("a selection-slice search needs two or more learning rates of one configuration and budget")
    table = pd.DataFrame(rows)
    note = ("Each rate's run at the search's seed; 'selection': the metric on the examples held out of training "
            "(data.selection_examples) at the reported epoch, chosen on them; the highest is chosen. The dev column is "
            "shown for the record and never enters the choice.")
    title = f"Learning rates searched on the selection slice (seed {seed}): metric ×100"
    return Table(table.drop(columns="run"), title, list(table["run"]), notes=[note],
                 formats={"lr": lambda v: f"{v:.3g}"}, float_format=".1f")
