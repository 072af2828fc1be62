"""What every builder shares: how a run's configuration is named, which runs a weight analysis can use, the head-only
baseline a gain is measured from, the spread over seeds, and module ordering."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..runs import DELTA_METHODS, KIND_LABELS, targets_label
from ..runs.modules import kind_order

METHOD_NAMES = {"full": "full FT", "head": "head only", "bitfit": "BitFit", "lora": "LoRA", "dora": "DoRA",
                "adapter": "Adapter"}  # fmt: skip
SPREAD_NOTE = "Cells: median over seeds [min, max] (min–max shown when seeds differ); seeds: how many."
MIN_SEEDS = 3  # a learning rate is confirmed with this many seeds; fewer are search trials


def _set(value: object) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def _flag(value: object) -> bool:
    """True only for a boolean true (Python's or NumPy's): a missing key of an older run reads as false."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def config_label(row: pd.Series, vary: dict[str, bool] | None = None) -> str:
    """One name per configuration: 'full FT', 'head only', 'BitFit', 'Adapter (size=64)', 'LoRA (r=8, Wq, Wv)',
    'DoRA (r=8, Wq, Wv, rsLoRA)', 'QLoRA (r=8, Wq, Wv)' (LoRA on an NF4 base), ...; ``vary`` ({"alpha": True, "init": True}) adds what differs between the
    runs shown; an init other than the paper's Gaussian is always named, and the learning rate when the runs read hold
    the method at several (``several_lrs``; ``vary={"lr": False}`` leaves it out where the rate is a column of its own).
    A run on shuffled labels (a control) says so."""
    vary = vary or {}
    method = row["method"]
    name = "QLoRA" if method == "lora" and row.get("quantize") == "nf4" else METHOD_NAMES.get(method, str(method))
    parts = []
    if method in ("lora", "dora") or (method not in METHOD_NAMES and _set(row.get("rank"))):
        parts += [f"r={int(row['rank'])}" if _set(row.get("rank")) else "r=?", targets_label(row.get("targets"))]
        if vary.get("alpha") and _set(row.get("alpha")):
            parts.append(f"α={float(row['alpha']):g}")
        if _set(row.get("init")) and (vary.get("init") or row["init"] != "gaussian"):  # never pool Kaiming with Gaussian
            parts.append(str(row["init"]))
        if _flag(row.get("rslora")):
            parts.append("rsLoRA")
        if _set(row.get("loraplus_ratio")) and float(row["loraplus_ratio"]) != 1.0:
            parts.append(f"LoRA+ λ={float(row['loraplus_ratio']):g}")
        if _flag(row.get("freeze_a")):
            parts.append("A frozen")
    if method == "adapter" and _set(row.get("adapter_size")):
        parts.append(f"size={int(row['adapter_size'])}")
    if vary.get("lr", _flag(row.get("several_lrs"))) and _set(row.get("lr")):
        parts.append(f"lr={float(row['lr']):.3g}")
    label = f"{name} ({', '.join(parts)})" if parts else name
    return label + (" [shuffled labels]" if _flag(row.get("shuffle_labels")) else "")


def training_budget(row: pd.Series) -> str:
    """A run's training budget as tables print it: '2,000 × 2 ep' ('all' when the training set was not capped).
    Runs of different budgets are different arms: no table pools them under one rate or seed."""
    samples = row["train_samples"]
    examples = "all" if pd.isna(samples) else f"{int(samples):,}"
    return f"{examples} × {int(row['epochs'])} ep" if pd.notna(row["epochs"]) else examples


def beats(a: pd.Series, b: pd.Series) -> tuple[bool, float, float]:
    """(a's median exceeds b's by more than the larger seed range, the margin, the larger range): REPRODUCTION.md's
    rule 6, the one test by which any arm is said to beat another."""
    margin = a.median() - b.median()
    spread = max(a.max() - a.min(), b.max() - b.min())
    return bool(margin > spread), float(margin), float(spread)


def true_label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs trained on the task's own labels: shuffled-label runs are noise controls, not results."""
    return runs[~runs["shuffle_labels"].eq(True)]


def weight_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """(runs whose ΔW is on disk, one line per run left out and why: 'label: no ΔW (method=bitfit)')."""
    has = runs["has_weights"].eq(True)
    skipped = [f"{r['label']}: no ΔW (method={r['method']})" if r["method"] not in DELTA_METHODS
               else f"{r['label']}: no ΔW on disk (method={r['method']}, no delta_weights.safetensors)"
               for _, r in runs[~has].iterrows()]  # fmt: skip
    return runs[has], skipped


def head_baseline(runs: pd.DataFrame, task: str, column: str = "score_last") -> float:
    """The head-only baseline of ``task``: median ``column`` of its method=head runs on true labels, at the learning
    rate whose median is highest when they were trained at several (the strongest baseline the runs give, so a gain
    over it is never a weak head's); NaN if none."""
    head = true_label_runs(runs)
    head = head[(head["method"] == "head") & (head["task"] == task)].dropna(subset=[column])
    return float(head.groupby("lr", dropna=False)[column].median().max()) if len(head) else math.nan


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
