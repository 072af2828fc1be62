"""Choosing which runs, ranks, seeds and layer each weight analysis looks at.

Every chooser raises ``MissingRuns`` with a message naming what is absent, so the figure command can skip the
analysis with one clear line.
"""

from __future__ import annotations

import pandas as pd

from experiments.records import identity_columns

from .. import roles
from .folders import MissingRuns
from .modules import parse_module


def module_kinds(row: pd.Series) -> set[str]:
    """Kinds (q, k, v, o, ffn_in, ffn_out) a LoRA run adapted: from ``adapted_modules``, else its target preset."""
    names = row["adapted_modules"]
    if isinstance(names, list) and names:
        return {parse_module(n).kind for n in names}
    targets = row["targets"]
    if targets == "all":
        return {"q", "k", "v", "o", "ffn_in", "ffn_out"}
    return set(targets) & set("qkvo") if isinstance(targets, str) else set()


def adapted_layers(rows: pd.DataFrame) -> list[int]:
    """Layers adapted in every one of ``rows`` (from ``adapted_modules``)."""
    sets = [{parse_module(n).layer for n in names} - {None} for names in rows["adapted_modules"] if names]
    return sorted(set.intersection(*sets)) if sets else []


def choose_layer(layers: list[int], layer: int | None, what: str) -> tuple[int, str]:
    """(layer, how it was chosen): ``layer`` if given and present, else the middle one (the paper's layer 48 of 96)."""
    if not layers:
        raise MissingRuns(f"{what}: the runs list no adapted modules with a layer index")
    if layer is not None:
        if layer not in layers:
            raise MissingRuns(f"{what}: layer {layer} is not adapted in the runs (layers present: {layers})")
        return layer, f"layer {layer}"
    mid = layers[len(layers) // 2]
    return mid, f"layer {mid} (middle of {layers[0]}–{layers[-1]})"


def lora_with(runs: pd.DataFrame, kinds: set[str], task: str | None = None) -> pd.DataFrame:
    """Complete LoRA runs on true labels (on ``task`` when given) that adapted every module kind in ``kinds``."""
    lora = runs[roles.studied(runs) & ~runs["data.shuffle_labels"].eq(True)]
    if task is not None:
        lora = lora[lora["task"] == task]
    keep = [kinds <= module_kinds(row) for _, row in lora.iterrows()]
    return lora[keep] if len(lora) else lora


def groups_by_setting(lora: pd.DataFrame) -> list[pd.DataFrame]:
    """LoRA runs split by their setting: everything in their identity but the rank, the seed and an α that moves with
    the rank (α = 2r; never two α at one rank in a group), so never two budgets, inits or target sets in one group:
    the setting held fixed while ranks or seeds vary; ``qv`` first (the paper's choice), then the largest group."""
    groups = []
    for _, group in lora.groupby(setting_ids(lora, free=("rank", "alpha", "seed")), sort=True):
        tied = "alpha" not in group or group.groupby("rank")["alpha"].nunique().max() <= 1
        groups += [group] if tied else [g for _, g in group.groupby("alpha", sort=True)]
    return sorted(groups, key=lambda g: (g["targets"].iloc[0] != "qv", -len(g)))


def groups_across_tasks(lora: pd.DataFrame) -> list[pd.DataFrame]:
    """LoRA runs split by their method's setting and model (every key of the ``method`` node: rank, α, targets, init,
    ...; no list here), the runs whose updates can be compared across tasks (whose budgets differ by task), one run
    per (task, seed) (the lowest ``run`` when a sweep repeats one). Groups with two or more tasks only; ``qv`` first
    (the paper's choice), then the one with the most tasks, then the most runs."""
    lora = lora[lora["task"].notna() & lora["seed"].notna() & lora["rank"].notna()]
    keys = ["model", "model_path", *method_columns(lora)]
    setting = setting_ids(lora[keys], free=())
    groups = [lora.loc[index].sort_values(["seed", "run"]).drop_duplicates(["task", "seed"])
              for index in lora.groupby(setting, sort=False).groups.values()]  # fmt: skip
    groups = [g for g in groups if g["task"].nunique() >= 2]
    return sorted(groups, key=lambda g: (g["targets"].iloc[0] != "qv", -g["task"].nunique(), -len(g)))


def rank_pair(present: list[int]) -> tuple[int, int]:
    """The two ranks Figure 3 compares: 8 and 64 when present, else the smallest and largest of ``present``."""
    return (8, 64) if 8 in present and 64 in present else (min(present), max(present))


def pick_rank_pair(group: pd.DataFrame, ranks: tuple[int, int] | None) -> tuple[pd.Series, pd.Series]:
    """(run at the smaller rank, run at the larger), same seed when possible: ``ranks`` if given, else
    ``rank_pair`` of the ranks present."""
    present = sorted(int(r) for r in group["rank"].dropna().unique())
    if ranks is not None:
        lo, hi = sorted(ranks)
        if lo not in present or hi not in present:
            raise MissingRuns(f"ranks {lo} and {hi} requested but the runs have ranks {present}")
    else:
        lo, hi = rank_pair(present)
    at_lo, at_hi = group[group["rank"] == lo], group[group["rank"] == hi]
    common = sorted(set(at_lo["seed"].dropna()) & set(at_hi["seed"].dropna()))
    if common:
        at_lo, at_hi = at_lo[at_lo["seed"] == common[0]], at_hi[at_hi["seed"] == common[0]]
    return at_lo.sort_values("seed").iloc[0], at_hi.sort_values("seed").iloc[0]


def pick_seed_pair(group: pd.DataFrame, rank: int | None) -> tuple[pd.Series, pd.Series]:
    """Two runs at one rank with different seeds (Figure 4): ``rank`` if given, else 64 when it has two seeds, else
    the largest rank that does."""
    seeds = group.groupby("rank")["seed"].nunique()
    seeded = sorted(int(r) for r, n in seeds.items() if n >= 2)
    if rank is not None and rank not in seeded:
        raise MissingRuns(f"rank {rank} requested but it has fewer than two seeds (ranks with two seeds: {seeded})")
    r = rank if rank is not None else (64 if 64 in seeded else seeded[-1])
    at_r = group[group["rank"] == r].drop_duplicates("seed").sort_values("seed")
    return at_r.iloc[0], at_r.iloc[1]


def lowest_seed(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One run per ``by`` group: the one with the lowest seed (then label), so reruns pick the same runs."""
    return rows.sort_values(["seed", "run"]).groupby(by, dropna=False, sort=True).head(1).sort_values(by)


def choose_task(candidates: pd.DataFrame, task: str | None, what: str) -> str:
    """``task`` if given (and present), else the task with the most candidate runs."""
    tasks = candidates["task"].value_counts()
    if tasks.empty:
        raise MissingRuns(what)
    if task is not None:
        if task not in tasks.index:
            raise MissingRuns(f"{what} (task {task!r} not among {sorted(tasks.index)})")
        return task
    return str(tasks.index[0])


def setting_ids(runs: pd.DataFrame, free: tuple[str, ...]) -> pd.Series:
    """A key per run that is equal exactly when two runs agree on every identity column but ``free`` (the columns a
    figure varies): ``config_id`` with those columns let go."""
    columns = [c for c in identity_columns(runs.columns) if c not in free]
    missing = lambda v: v is None or v is pd.NA or (isinstance(v, float) and v != v)  # noqa: E731
    return pd.Series(["|".join("—" if missing(v) else str(v) for v in row)
                      for row in runs[columns].itertuples(index=False)], index=runs.index, dtype=object)


def method_columns(runs: pd.DataFrame) -> list[str]:
    """The identity columns of the ``method`` node, the method itself included (each record lists its own in
    ``method_columns``, experiments/records.py)."""
    listed = {c for cols in runs["method_columns"] for c in (cols or [])} if "method_columns" in runs else set()
    return [c for c in runs.columns if c in listed]
