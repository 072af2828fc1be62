"""Do adapters trained on different tasks use the same directions of W? (issue 13, beyond Hu et al. 2021, §7.2.)

For LoRA runs that share model, rank r, α and targets and differ in task, the paper's normalised subspace similarity
(Eq. 4, ``maths.subspace_similarity``) between the updates of one module,

    φ(ΔW_A, ΔW_B) = ‖U_Aᵀ U_B‖²_F / r  ∈ [0, 1],

at i = j = r (the whole rank-r update, the mean cos² of its r principal angles), on both sides of ΔW: U the top-r
left singular vectors (the column space: the directions ΔW writes into, learned by B from zero) and V the top-r
right singular vectors (the row space: the directions ΔW reads, set by A, which starts from a seeded random init and
moves little). Three comparisons, per adapted module:

- cross-task, same seed: task A and task B trained from the same seed. Tasks with the same number of labels then
  start from the same A₀, so the row space shares the init's directions whatever the tasks learn;
- cross-task, other seeds: task A seed s against task B seed t ≠ s, free of that shared init;
- same task, other seeds: how alike two runs of one task can be (the reference a cross-task value is read against).

Beside them two controls. Chance: φ(r, r) of two Haar-random r-dimensional subspaces of R^d, mean and 95% interval
(``maths.random_subspace_overlap``; mean ≈ r/d). And a task-free control (issue 22): LoRA runs of the same setting
trained on a task's *shuffled* labels (``data.shuffle_labels``: the inputs, the model and the optimisation, no task)
enter as the pseudo-task "‹task› (shuffled labels)", compared with every true-label run:

- task vs shuffled labels, same seed / other seeds: what any training of this model on these inputs shares with a
  task's update. A cross-task value no higher than this says the shared directions come from the model and the data,
  not from what the tasks have in common;
- shuffled labels, other seeds: two task-free runs against each other.
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd
import torch

from ..maths import Interval, random_subspace_overlap, singular_subspaces, subspace_overlap
from ..runs import KIND_LABELS, MissingRuns, parse_module, run_deltas, sort_modules
from ..runs.select import groups_across_tasks, lora_with
from .. import roles
from .common import column, setting_names, weight_runs
from .metric_tables import task_order
from .table import Table

COMPARISONS = ("same task, other seeds", "cross-task, same seed", "cross-task, other seeds")
CONTROL_COMPARISONS = ("task vs shuffled labels, same seed", "task vs shuffled labels, other seeds",
                       "shuffled labels, other seeds")
SHUFFLED = roles.SHUFFLED_TASK  # the pseudo-task a shuffled-label run enters as
SIDES = {"column space": "φ column space (k=r)", "row space": "φ row space (k=r)"}
WHAT = ("the cross-task subspace analysis needs LoRA runs on two or more tasks with the same model, rank, α and "
        "targets, with ΔW on disk (delta_weights.safetensors or adapter/)")  # fmt: skip


def _comparison(a: str, b: str, same_seed: bool) -> str | None:
    """Which comparison a pair of runs of (pseudo-)tasks a, b is; None for two shuffled-label runs of two tasks."""
    controls = a.endswith(SHUFFLED) + b.endswith(SHUFFLED)
    if controls == 0:
        return COMPARISONS[0] if a == b else COMPARISONS[1] if same_seed else COMPARISONS[2]
    if controls == 1:
        return CONTROL_COMPARISONS[0] if same_seed else CONTROL_COMPARISONS[1]
    return CONTROL_COMPARISONS[2] if a == b else None


def _pairs(group: pd.DataFrame) -> list[tuple[str, pd.Series, pd.Series]]:
    """(comparison, run x, run y) for every comparison the group allows, task x before task y in the paper's order
    (a shuffled-label pseudo-task after every task)."""
    rows = {(r["task"], int(r["seed"])): r for _, r in group.iterrows()}
    tasks = task_order(group["task"])
    tasks = [t for t in tasks if not t.endswith(SHUFFLED)] + [t for t in tasks if t.endswith(SHUFFLED)]
    seeds = {t: sorted(s for task, s in rows if task == t) for t in tasks}
    pairs = [(_comparison(t, t, False), rows[t, s], rows[t, u]) for t in tasks for s, u in combinations(seeds[t], 2)]
    for a, b in combinations(tasks, 2):
        pairs += [(_comparison(a, b, s == u), rows[a, s], rows[b, u]) for s in seeds[a] for u in seeds[b]]
    return [pair for pair in pairs if pair[0] is not None]


def _with_controls(runs: pd.DataFrame) -> pd.DataFrame:
    """LoRA's true-label runs and, as the pseudo-task '‹task› (shuffled labels)', its shuffled-label runs."""
    lora = lora_with(runs, set())
    shuffled = runs[roles.studied(runs) & column(runs, "data.shuffle_labels").eq(True)]
    return pd.concat([lora, shuffled.assign(task=shuffled["task"] + SHUFFLED)])


def cross_task_pairs(runs: pd.DataFrame, draws: int = 100, seed: int = 0) -> Table:
    """One row per (LoRA setting, comparison, task pair, seed pair, adapted module): φ(r, r) of the column and row
    spaces of the two ΔW, with the random-subspace mean and 95% interval of ``draws`` draws (generator ``seed``)
    beside each. Raises ``MissingRuns`` without two tasks in one setting."""
    runs, left_out = weight_runs(runs)
    groups = [g for g in groups_across_tasks(_with_controls(runs))
              if (~g["task"].str.endswith(SHUFFLED)).any()]  # a setting with true-label runs
    if not groups:
        tasks = sorted(set(runs.loc[roles.studied(runs), "task"].dropna()))
        raise MissingRuns(f"{WHAT}; LoRA runs with ΔW found on tasks {tasks}")
    bases: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    chance: dict[tuple[int, int], Interval] = {}  # (d, r) -> the random interval, drawn once

    def subspaces(row: pd.Series) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if row["run"] not in bases:  # one SVD per run and module, however many pairs it is in
            r = int(row["rank"])
            bases[row["run"]] = {n: singular_subspaces(d, r) for n, d in run_deltas(row["run_dir"]).items()}
        return bases[row["run"]]

    def random(d: int, r: int) -> Interval:
        if (d, r) not in chance:
            chance[d, r] = random_subspace_overlap(d, r, draws, seed)
        return chance[d, r]

    records, used = [], set()
    names = setting_names(groups)
    for group, config in zip(groups, names):
        r = int(group["rank"].iloc[0])
        for comparison, x, y in _pairs(group):
            bx, by = subspaces(x), subspaces(y)
            for name in sort_modules([n for n in bx if n in by]):
                mid = parse_module(name)
                (ux, vx), (uy, vy) = bx[name], by[name]
                record = {"LoRA": config, "comparison": comparison, "task A": x["task"], "task B": y["task"],
                          "seed": f"{x['seed']}" if x["seed"] == y["seed"] else f"{x['seed']} vs {y['seed']}",
                          "layer": mid.layer, "module": KIND_LABELS.get(mid.kind, mid.kind)}  # fmt: skip
                record[SIDES["column space"]] = subspace_overlap(ux, uy)
                record[SIDES["row space"]] = subspace_overlap(vx, vy)
                for side, basis in (("column space", ux), ("row space", vx)):
                    interval = random(basis.shape[0], r)
                    record.update({f"random {side}": interval.mean, f"random {side} 2.5%": interval.lo,
                                   f"random {side} 97.5%": interval.hi})  # fmt: skip
                records.append(record)
            used |= {x["run"], y["run"]}
    if not records:
        raise MissingRuns(f"{WHAT}; the runs of one setting share no adapted module")
    first = groups[0]
    return Table(
        frame=pd.DataFrame(records),
        title="Cross-task subspaces: φ(r, r) between the ΔW of LoRA runs on two tasks, per module and pair of runs",
        runs=sorted(used),
        notes=[f"Random: φ(r, r) of two Haar-random r-dim subspaces of R^d, mean [2.5%, 97.5%] of {draws} draws.",
               f"Heat map: {names[0]}, tasks {', '.join(task_order(first['task']))}."],
        float_format=".3f",
        left_out=left_out,
    )


def _spread(pairs: Table, by: list[str], title: str, over: str) -> Table:
    values = list(SIDES.values())
    randoms = [c for c in pairs.frame.columns if c.startswith("random")]
    grouped = pairs.frame.groupby([*by, *randoms], sort=False, dropna=False)
    frame = grouped[values].agg(["median", "min", "max"])
    frame.columns = [v if stat == "median" else f"{v} {stat}" for v, stat in frame.columns]
    frame = frame.reset_index()
    frame.insert(len(by), over, grouped.size().values)
    frame = frame[[*by, over, *[c for v in values for c in (v, f"{v} min", f"{v} max")], *randoms]]
    return Table(frame=frame, title=title, runs=pairs.runs, notes=pairs.notes[:1] + [
        f"Cells: median [min, max] over the {over}. Read a cross-task value against the same task's other-seed value "
        "(what two runs of one task share) and the random interval (chance). The row space of same-seed runs shares "
        "A's random init when the tasks have the same number of labels: compare 'cross-task, other seeds' with "
        "'same task, other seeds'."], float_format=".3f", left_out=pairs.left_out)  # fmt: skip


def cross_task_table(pairs: Table) -> Table:
    """``cross_task_pairs`` per (setting, comparison, task pair, layer, module): median [min, max] over seed pairs."""
    by = ["LoRA", "comparison", "task A", "task B", "layer", "module"]
    return _spread(pairs, by, "Cross-task subspaces per module: φ(r, r) of ΔW's column and row spaces", "seed pairs")


def cross_task_agg(pairs: Table) -> Table:
    """``cross_task_pairs`` per (setting, comparison, task pair, module kind): median [min, max] over layers and
    seed pairs."""
    by = ["LoRA", "comparison", "task A", "task B", "module"]
    return _spread(pairs, by, "Cross-task subspaces over layers: φ(r, r) of ΔW's column and row spaces",
                   "layers × seed pairs")  # fmt: skip


def cross_task_matrix(pairs: Table, side: str, off_diagonal: str) -> tuple[list[str], torch.Tensor]:
    """(tasks, T x T matrix) of the mean φ(r, r) on ``side`` ("column space" or "row space") over layers, modules and
    seed pairs, for the first setting of ``cross_task_pairs``: the same task's other-seed value on the diagonal,
    ``off_diagonal`` ("cross-task, same seed" or "cross-task, other seeds") elsewhere, NaN where no pair exists."""
    if side not in SIDES or off_diagonal not in COMPARISONS[1:]:
        raise ValueError(f"side must be one of {list(SIDES)} and off_diagonal one of {list(COMPARISONS[1:])}, got "
                         f"{side!r} and {off_diagonal!r}")  # fmt: skip
    frame = pairs.frame[pairs.frame["LoRA"] == pairs.frame["LoRA"].iloc[0]]
    tasks = [t for t in task_order(set(frame["task A"]) | set(frame["task B"])) if not t.endswith(SHUFFLED)]
    means = frame.groupby(["comparison", "task A", "task B"])[SIDES[side]].mean()
    matrix = torch.full((len(tasks), len(tasks)), float("nan"), dtype=torch.float64)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            key = (COMPARISONS[0], a, a) if i == j else (off_diagonal, *sorted((a, b), key=tasks.index))
            if key in means.index:
                matrix[i, j] = means[key]
    return tasks, matrix
