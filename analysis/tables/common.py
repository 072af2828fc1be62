"""What every builder shares: how a configuration is named (by its id, never by method names), which runs a weight analysis can use, the head-only
baseline a gain is measured from, the spread over seeds, and module ordering."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from experiments.identity import method_keys
from experiments.methods import join_label
from experiments.records import identity_columns

from .. import roles
from ..runs import KIND_LABELS
from ..runs.modules import kind_order

SPREAD_NOTE = "Cells: median over seeds [min, max] (min–max shown when seeds differ); seeds: how many."
MIN_SEEDS = 3  # a learning rate is confirmed with this many seeds; fewer are search trials


def config_names(runs: pd.DataFrame, laid_out: tuple[str, ...] = ("task",), model: bool = False) -> pd.Series:
    """One name per configuration (``config_id``), aligned with ``runs``: the method's own label (experiments/records),
    its parts for the ``laid_out`` columns left out (a table that has a column per rank does not repeat 'r=8'), then
    ``[key=value, ...]`` for every identity column that differs between configurations of that label within one
    laid-out cell (a batch size, a budget, a learning rate, α): two configurations never share a name, so no table
    pools them, and nothing is named that does not vary. ``model`` puts the model's name first ('minilm LoRA (r=8,
    Wq, Wv)')."""
    if runs.empty:
        return pd.Series([], index=runs.index, dtype=object)
    laid = [c for c in laid_out if c in runs]
    base = pd.Series([join_label(r["title"], [t for k, t in (r["label_parts"] or {}).items() if k not in laid_out])
                      for _, r in runs.iterrows()], index=runs.index)  # fmt: skip
    shown = {k for parts in runs["label_parts"] for k in (parts or {})} - set(laid_out)
    candidates = [c for c in identity_columns(runs.columns) if c not in (*laid_out, "seed", "method", "model")
                  and c not in shown]  # fmt: skip
    names = base.copy()
    for _, group in runs.groupby(base, sort=False):
        cells = list(group.groupby(laid, dropna=False, sort=False)) if laid else [((), group)]
        varying = [c for c in candidates if any(_distinct(cell[c]) > 1 for _, cell in cells)]
        for index, row in group.iterrows():
            extra = [f"{c}={_value(row[c])}" for c in varying]
            names[index] = f"{names[index]} [{', '.join(extra)}]" if extra else names[index]
    if model and "model" in runs:
        names = runs["model"].astype(str) + " " + names
    # The guard behind the rule: configurations still sharing a name in a cell (ids that differ in a key no run of
    # the table shows) get their id.
    clash = runs.assign(_name=names).groupby([*laid, "_name"], dropna=False)["config_id"].transform("nunique") > 1
    return names.where(~clash, names + " {" + runs["config_id"].astype(str) + "}")


def setting_names(groups: list[pd.DataFrame]) -> list[str]:
    """One name per setting of ``select.groups_across_tasks``: ``config_names`` over all the settings' runs at once
    (one setting's runs never see the others'), so settings whose labels coincide get named by the key they differ
    in (LoRA at a search's rate beside the presets': '[lr=0.00272]'), and no table reads their cells as one setting's."""
    if not groups:
        return []
    names = config_names(pd.concat(groups))
    return [names.loc[g.index[0]] for g in groups]


def varying_columns(runs: pd.DataFrame, laid_out: tuple[str, ...] = ("task",)) -> list[str]:
    """What a table's header says its configurations differ in: the method when there are several, and each identity
    column that takes two values among runs of one method in one laid-out cell (not the keys that only follow the
    task, nor one method's keys that another method lacks)."""
    if runs.empty:
        return []
    cells = list(runs.groupby([c for c in (*laid_out, "method") if c in runs], dropna=False, sort=False))
    varying = [c for c in identity_columns(runs.columns) if c not in (*laid_out, "seed", "method")
               and any(_distinct(cell[c]) > 1 for _, cell in cells)]  # fmt: skip
    return (["method"] if "method" in runs and runs["method"].nunique() > 1 else []) + varying


def varying_note(runs: pd.DataFrame, laid_out: tuple[str, ...] = ("task",)) -> str:
    """'Configurations (...) differ in: method, rank, train.epochs.' for a table's notes (one home for the sentence).
    A method key holding a mapping (``rank_pattern``: its entries flattened to ``rank_pattern.<module>``) is named
    once."""
    mapped = method_keys()
    cols = list(dict.fromkeys(c.split(".")[0] if c.split(".")[0] in mapped else c
                              for c in varying_columns(runs, laid_out)))
    return ("Rows are configurations (one config_id each: seeds are pooled only within one); they differ in "
            + (", ".join(cols) if cols else "nothing but the seed") + ".")


def _distinct(values: pd.Series) -> int:
    return len({_value(v) for v in values})


def _value(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def column(runs: pd.DataFrame, name: str) -> pd.Series:
    """``runs[name]``, or missing values where no run has the key (the columns follow the runs' identities)."""
    return runs[name] if name in runs else pd.Series(math.nan, index=runs.index, dtype=float)


def training_budget(row: pd.Series) -> str:
    """A run's training budget as tables print it: '2,000 × 2 ep' ('all' when the training set was not capped)."""
    samples, epochs = row.get("train.max_train_samples"), row.get("train.epochs")
    examples = "all" if samples is None or pd.isna(samples) else f"{int(samples):,}"
    return f"{examples} × {int(epochs)} ep" if epochs is not None and pd.notna(epochs) else examples


def beats(a: pd.Series, b: pd.Series) -> tuple[bool, float, float]:
    """(a's median exceeds b's by more than the larger seed range, the margin, the larger range): REPRODUCTION.md's
    rule 6, the one test by which any arm is said to beat another."""
    margin = a.median() - b.median()
    spread = max(a.max() - a.min(), b.max() - b.min())
    return bool(margin > spread), float(margin), float(spread)


def true_label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs trained on the task's own labels: shuffled-label runs are noise controls, not results."""
    return runs[~runs["data.shuffle_labels"].eq(True)] if "data.shuffle_labels" in runs else runs


def weight_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(runs whose ΔW is on disk, one line per run left out and why: 'run: no ΔW (BitFit has none)')."""
    has = runs["has_weights"].eq(True)
    skipped = [f"{r['run']}: no ΔW ({r['label']} has none)" if not r["has_delta"]
               else f"{r['run']}: no ΔW on disk ({r['label']}, no delta_weights.safetensors)"
               for _, r in runs[~has].iterrows()]  # fmt: skip
    return runs[has], skipped


def head_baseline(runs: pd.DataFrame, task: str, column: str = "score_last") -> float:
    """The head-only baseline of ``task`` (analysis/roles.py): median ``column`` of its runs on true labels, of the
    configuration whose median is highest when there are several (rates, budgets: the strongest baseline the runs
    give, so a gain over it is never a weak head's); NaN if none."""
    head = true_label_runs(runs)
    head = head[roles.baseline(head) & (head["task"] == task)].dropna(subset=[column])
    return float(head.groupby("config_id")[column].median().max()) if len(head) else math.nan


def seed_spread(frame: pd.DataFrame, by: list[str], values: list[str], scale: float = 1.0) -> pd.DataFrame:
    """One row per ``by`` group: for each of ``values`` its median over the group's runs (column ``v``), min
    (``v min``) and max (``v max``), times ``scale``; and ``seeds``, the number of distinct seeds. The Markdown
    writer shows ``v``, ``v min``, ``v max`` as one cell 'median [min, max]'."""
    rows = []
    for key, group in frame.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        for v in values:
            col = pd.to_numeric(group[v], errors="coerce").dropna() * scale
            row.update({v: col.median() if len(col) else math.nan, f"{v} min": col.min() if len(col) else math.nan,
                        f"{v} max": col.max() if len(col) else math.nan})  # fmt: skip
        row["seeds"] = int(group["seed"].nunique()) if "seed" in group else len(group)
        rows.append(row)
    table = pd.DataFrame(rows)
    for key in by:  # a layer or rank column with gaps (the pooler has no layer) stays integer, not 1.0
        if table.empty:
            break
        col = pd.to_numeric(table[key], errors="coerce")
        whole = col.notna().any() and table[key].isna().eq(col.isna()).all() and (col.dropna() % 1 == 0).all()
        if whole:
            table[key] = pd.array(col, dtype="Int64")
    return table


def module_sort_key(col: pd.Series) -> pd.Series:
    if col.name == "module":
        inverse = {label: kind for kind, label in KIND_LABELS.items()}
        return col.map(lambda m: kind_order(inverse.get(m, m)))
    return col
