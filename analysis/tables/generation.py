"""Generation runs (causal-LM tasks, E2E NLG): the paper's Table 3 and what the models wrote.

- ``table3``: every metric of the best epoch (BLEU, NIST, ROUGE-L, the eval loss) per model / method, median over
  seeds [min, max], on the scale the paper prints (BLEU and ROUGE-L 0–100, NIST as is).
- ``generation_samples``: the first eval inputs with their references and each method's output (one seed), so a
  reader sees what a BLEU number stands for.
"""

from __future__ import annotations

import pandas as pd

from ..runs import CLASSIFICATION, MissingRuns, read_best, read_generations, short_path
from .. import roles
from .common import SPREAD_NOTE, config_names
from .metric_tables import _median_min_max
from .table import Table, human_count

PAPER_TABLE3 = {  # GPT-2 M, E2E test set (the paper's Table 3): the rows a CPU table is read beside
    "GPT-2 M FT (paper)": {"bleu": 68.2, "nist": 8.62, "rouge_l": 71.0, "params": 354.92e6},
    "GPT-2 M LoRA (paper)": {"bleu": 70.4, "nist": 8.85, "rouge_l": 71.8, "params": 0.35e6},
}
METRIC_ORDER = ("bleu", "nist", "rouge_l", "eval_loss")


def _generation_runs(runs: pd.DataFrame, what: str) -> pd.DataFrame:
    found = runs[runs["family"] != CLASSIFICATION]
    if found.empty:
        raise MissingRuns(f"{what} needs runs of a causal-LM task (task=e2e, e.g. +experiment=table3); found only "
                          f"{sorted(runs['task'].dropna().unique()) or 'no runs'}")
    return found


def _zero_shot(runs: pd.DataFrame) -> pd.Series:
    """Runs with ``train.epochs=0``: the model as loaded, nothing trained (for LoRA, B = 0: the pretrained model)."""
    return runs["train.epochs"].eq(0) if "train.epochs" in runs else pd.Series(False, index=runs.index)


def _names(runs: pd.DataFrame) -> pd.Series:
    """Each run's configuration name with its model; a zero-shot run is named so, whatever method prepared it, and
    the trained runs are named among themselves (its ``train.epochs=0`` does not make them '[train.epochs=1]')."""
    untrained = _zero_shot(runs)
    names = runs["model"].astype(str) + " zero-shot (no training)"
    if (~untrained).any():
        names[~untrained] = config_names(runs[~untrained], model=True)
    return names


def table3(runs: pd.DataFrame) -> Table:
    """Table 3 analogue: one row per task / model / method configuration, one column per metric."""
    runs = _generation_runs(runs, "Table 3")
    best = {label: read_best(d) for label, d in zip(runs["run"], runs["run_dir"])}
    metrics = [m for m in METRIC_ORDER if any(m in b for b in best.values())]
    frame = runs.assign(config=runs["task"].astype(str) + " " + _names(runs), _order=roles.order(runs))
    rows = []
    for config, group in frame.groupby("config", sort=False):
        row = {"task / model / method": config,
               "params": 0 if _zero_shot(group).all() else group["method_params"].median()}  # nothing trained
        for m in metrics:
            values = pd.Series([best[label].get(m) for label in group["run"]], dtype=float)
            row.update(dict(zip((m, f"{m} min", f"{m} max"), _median_min_max(values, scale=1.0))))
        row["seeds"] = str(group["seed"].nunique())
        row["_order"] = group["_order"].iloc[0]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["_order", "task / model / method"]).drop(columns="_order")
    paper = pd.DataFrame([{"task / model / method": name, **values, "seeds": "—"} for name, values in PAPER_TABLE3.items()])
    return Table(
        frame=pd.concat([table, paper], ignore_index=True),
        title="Table 3 analogue: generation metrics per method (median over seeds [min, max], best epoch)",
        runs=list(runs["run"]),
        notes=["BLEU (sacrebleu, 13a) and ROUGE-L (F, best reference) 0–100; NIST (NLTK, n=5); each generation "
               "scored against every reference of its input. METEOR and CIDEr are not computed offline "
               "(experiments/nlg_metrics.py). The paper's rows (GPT-2 M on the full E2E data, beam 10) are printed "
               "for reference, not as a like-for-like comparison. " + SPREAD_NOTE],
        formats={"params": human_count, "nist": lambda v: f"{v:.2f}"},
    )


def generation_samples(runs: pd.DataFrame, count: int = 5, seed: int = 0) -> Table:
    """The first ``count`` eval inputs of the generation runs of ``seed``: the input, one reference, and what each
    configuration wrote."""
    runs = _generation_runs(runs, "Generation samples")
    chosen = runs[runs["seed"] == seed]
    if chosen.empty:
        raise MissingRuns(f"generation samples need a run of seed {seed}; found seeds {sorted(runs['seed'].unique())}")
    rows: dict[str, dict] = {}
    used = []
    names = _names(chosen)
    for index, run in chosen.iterrows():
        outputs = read_generations(run["run_dir"])[:count]
        if not outputs:
            continue
        used.append(run["run"])
        column = names[index]
        for item in outputs:
            row = rows.setdefault(item["mr"], {"input": item["mr"], "a reference": item["references"][0],
                                               "references": len(item["references"])})
            row[column] = item["generation"]
    if not rows:
        raise MissingRuns("generation samples need runs that saved generations.jsonl (save: true)")
    model_paths = ", ".join(sorted({short_path(p) for p in chosen["model_path"]}))
    return Table(
        frame=pd.DataFrame(list(rows.values())),
        title=f"What the models wrote: the first {len(rows)} eval inputs, seed {seed}",
        runs=used,
        notes=[f"Greedy or beam decoding as the runs' task.generation set it; models: {model_paths}."],
    )
