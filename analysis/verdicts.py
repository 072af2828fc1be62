"""Every claim's rule as code, and the verdict table generated from the committed results (issue 22).

    python -m analysis.verdicts results/            # writes results/VERDICTS.md, fills REPRODUCTION.md's table

One row per claim: the paper's number, ours as a difference with its 95% interval, the seeds (and dev examples) it
rests on, the verdict, the rule and the files it was computed from. Each claim is a function of the committed files
only (``results/**.csv``), so re-running the command on them reproduces VERDICTS.md byte for byte (the bootstrap is
seeded; nothing depends on the clock or the machine).

Two kinds of rule, both fixed before the runs they judge (REPRODUCTION.md, "Rules"):
- a comparison of two configurations: a − b in points with a 95% bootstrap interval over seeds (and over dev
  examples, paired, where the runs kept their predictions) and issue 22's four verdicts against the metric's margin
  (``analysis.maths.stats``: equivalent when the interval lies inside ±m, better / worse when it excludes 0 and reaches
  past ±m, inconclusive otherwise);
- a measurement against chance: ours over seeds (or layers × pairs) against the 95% interval of random draws:
  "above chance" when all of ours lies above it, "at chance" when ours overlaps it, "below chance" when all below.
A Table 2 comparison counts only where the task learns: the reference (full fine-tuning) must be *better* than the
head alone by the same rule; otherwise the row says the task did not learn at that budget and gives no verdict.
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import roles
from .maths.stats import Difference, constant_score, difference_interval, margin_for, paired_difference, verdict

TABLE_START, TABLE_END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"
HEADER = ("claim", "paper", "ours: difference [95% interval] or value vs chance", "seeds · examples", "verdict",
          "rule", "source")  # fmt: skip


@dataclass(frozen=True)
class Row:
    claim: str
    paper: str
    ours: str
    evidence: str
    verdict: str
    rule: str
    sources: tuple[str, ...]


# ------------------------------------------------------------------------------------------------ reading results


def _runs(root: Path, *paths: str) -> pd.DataFrame:
    """The committed run tables (results/**/runs.csv), old and new columns read alike, each (config, seed) once."""
    frames = [pd.read_csv(root / p) for p in paths if (root / p).is_file()]
    if not frames:
        raise FileNotFoundError(f"none of {', '.join(paths)} under {root}")
    runs = pd.concat(frames, ignore_index=True)
    rename = {"train_samples": "train.max_train_samples", "epochs": "train.epochs", "label": "run"}
    runs = runs.rename(columns={k: v for k, v in rename.items() if k in runs and v not in runs})
    keys = [c for c in ("task", "method", "rank", "targets", "init", "rslora", "lr", "train.max_train_samples",
                        "train.epochs", "shuffle_labels", "config_id", "seed") if c in runs]  # fmt: skip
    return runs.drop_duplicates(keys).reset_index(drop=True)


def _true_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs trained on their task's own labels: a shuffled-label run is a control, never an arm (the column is
    ``data.shuffle_labels`` in run tables written since issue 21, ``shuffle_labels`` before)."""
    for column in ("data.shuffle_labels", "shuffle_labels"):
        if column in runs:
            runs = runs[~runs[column].astype(str).eq("True")]
    return runs


def _arm(runs: pd.DataFrame, **match) -> pd.DataFrame:
    mask = pd.Series(True, index=runs.index)
    for key, value in match.items():
        column = runs[key]
        mask &= column.isna() if value is None else column.astype(str).eq(str(value)) | column.eq(value)
    return _true_labels(runs[mask])


def _best_rate(arm: pd.DataFrame, min_seeds: int = 3) -> pd.DataFrame:
    """The runs of the learning rate with the best median among those with ≥ ``min_seeds`` seeds (chosen on the
    dev set the score is reported on: the rows say so)."""
    by_lr = {lr: g for lr, g in arm.groupby("lr") if g["seed"].nunique() >= min_seeds} or dict(list(arm.groupby("lr")))
    return by_lr[max(by_lr, key=lambda lr: by_lr[lr]["score"].median())]


def _span(estimate: float, low: float, high: float, fmt: str = "+.1f") -> str:
    """'+1.5 [−2.2, +5.3]': a difference and its interval, as every row writes them."""
    return f"{format(estimate, fmt)} [{format(low, fmt)}, {format(high, fmt)}]".replace("-", "−")


def _interval(d: Difference, fmt: str = "+.1f") -> str:
    return _span(d.estimate, d.low, d.high, fmt)


def _difference(a: pd.DataFrame, b: pd.DataFrame, metric: str, predictions: dict | None = None) -> Difference:
    """a − b: per-example outputs where both arms have them (``predictions``: run → outputs), else per-run scores."""
    if predictions and all(r in predictions for r in [*a["run"], *b["run"]]):
        return difference_interval([predictions[r] for r in a["run"]], [predictions[r] for r in b["run"]], metric)
    return difference_interval(list(a["score"]), list(b["score"]), metric)


def _comparison(claim: str, paper: str, a: pd.DataFrame, b: pd.DataFrame, metric: str, rule: str,
                sources: tuple[str, ...], predictions: dict | None = None, note: str = "") -> Row:
    d = _difference(a, b, metric, predictions)
    margin = margin_for(metric)
    digits = 2 if margin < 0.5 else 1  # NIST's margin is 0.1: one decimal would hide it
    examples = f" · {d.examples} examples" if d.examples else " · seeds only"
    ours = f"{_interval(d, f'+.{digits}f')} ({d.a:.{digits}f} vs {d.b:.{digits}f}; p = {d.p_value:.2g})"
    return Row(claim, paper, ours + (f"; {note}" if note else ""), f"{d.seeds_a} vs {d.seeds_b}{examples}",
               f"{verdict(d, margin)} (±{margin:g})", rule, sources)


def _chance(claim: str, paper: str, ours: tuple[float, float, float], chance: tuple[float, float, float],
            evidence: str, rule: str, sources: tuple[str, ...], fmt: str = ".3f", against: str = "chance") -> Row:
    """Ours (median [min, max]) against chance (mean [2.5%, 97.5%] of random draws), or against a control's values
    (``against``: its name; median [min, max]): above only when all of ours lies above all of it."""
    (med, lo, hi), (c_mean, c_lo, c_hi) = ours, chance
    word = f"above {against}" if lo > c_hi else f"below {against}" if hi < c_lo else f"at {against}"
    text = f"{med:{fmt}} [{lo:{fmt}}, {hi:{fmt}}] vs {against} {c_mean:{fmt}} [{c_lo:{fmt}}, {c_hi:{fmt}}]"
    return Row(claim, paper, text, evidence, word, rule, sources)


def _cell(text: str) -> tuple[float, float, float]:
    """'0.025 [0.000, 0.163]' → (0.025, 0.0, 0.163)."""
    numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", str(text))]
    return (numbers[0], numbers[1], numbers[2]) if len(numbers) >= 3 else (numbers[0],) * 3


def load_predictions_csv(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """``predictions.csv.gz`` (the analysis command's ``predictions`` product): run → outputs, labels, index."""
    frame = pd.read_csv(path)
    outputs = [c for c in frame.columns if c.startswith("output")]
    return {run: {"outputs": g[outputs].to_numpy().squeeze(), "labels": g["label"].to_numpy(),
                  "index": g["index"].to_numpy()} for run, g in frame.groupby("run", sort=False)}  # fmt: skip


# ------------------------------------------------------------------------------------------------ the claims

TASKS = "tasks/five_seeds/runs.csv"
BEYOND = "— (beyond the paper)"  # the paper column of a claim the paper does not make
PAPER_T2 = {"sst2": "95.1 vs 94.8 (RoBERTa-base)", "mrpc": "89.7 vs 90.2", "cola": "63.4 vs 63.6",
            "rte": "86.6 vs 78.7", "stsb": "91.5 vs 91.2"}  # LoRA vs full FT, the paper's Table 2 (RoBERTa-base)
LEARNS = ("full FT must be *better* than the head alone (same rule) for the task to test the claim; then LoRA r=8 "
          "− full FT, each at its best-median rate, against the margin")  # fmt: skip


def table2_rows(root: Path) -> list[Row]:
    runs = _runs(root, TASKS)
    rows = []
    for task in ("sst2", "mrpc", "cola", "rte", "stsb"):
        on = runs[runs["task"] == task]
        if on.empty:
            continue
        metric = on["metric"].iloc[0]  # the task's own (conf/task/<task>.yaml), as each run recorded it
        lora = _best_rate(_arm(on, method=roles.STUDIED, rank=8.0, targets="qv", init="gaussian", rslora=False))
        full = _best_rate(_arm(on, method=roles.REFERENCE))
        head = _arm(on, method=roles.BASELINE)
        claim = f"Table 2, {task} (2,000 × 2 ep): LoRA matches full FT"
        learned = _difference(full, head, metric)
        if verdict(learned, margin_for(metric)) != "better":
            rows.append(Row(claim, PAPER_T2[task], f"full FT − head alone {_interval(learned)}",
                            f"{learned.seeds_a} vs {learned.seeds_b} · seeds only",
                            "not tested: the task did not learn at this budget", LEARNS, (TASKS,)))
            continue
        rows.append(_comparison(claim, PAPER_T2[task], lora, full, metric, LEARNS, (TASKS,),
                                note=f"rates {lora['lr'].iloc[0]:.3g} vs {full['lr'].iloc[0]:.3g}, chosen on dev"))
    return rows


def table2_learn_rows(root: Path) -> list[Row]:
    """Table 2 on the full training sets (results/table2_learn): the epoch chosen on a held-out slice of the training
    split, dev reported, per-example predictions kept, so the interval holds the dev set's sampling error too."""
    folder = root / "table2_learn"
    if not (folder / "runs.csv").is_file():
        return []
    runs = pd.read_csv(folder / "runs.csv")
    runs = runs[runs["status"].eq("complete")] if "status" in runs else runs
    runs = _true_labels(runs)
    path = folder / "predictions.csv.gz"
    predictions = load_predictions_csv(path) if path.is_file() else None
    searched = folder / "lr_selection.csv"
    chosen = pd.read_csv(searched) if searched.is_file() else pd.DataFrame(columns=["task", "lr", "chosen"])
    chosen = chosen[chosen["chosen"].eq("chosen")]
    rows = []
    for task in [t for t in ("sst2", "mrpc", "cola", "rte", "stsb") if t in set(runs["task"])]:
        on = runs[runs["task"] == task]
        metric = on["metric"].iloc[0]
        lora, full = on[on["method"] == roles.STUDIED], on[on["method"] == roles.REFERENCE]
        if lora.empty or full.empty:
            continue
        sources = ("table2_learn/runs.csv",) + (("table2_learn/predictions.csv.gz",) if predictions else ())
        cap = on["train.max_train_samples"].dropna() if "train.max_train_samples" in on else pd.Series(dtype=float)
        budget = f"{int(cap.iloc[0]):,} examples" if len(cap) else "full training set"
        claim = f"Table 2, {task} ({budget}, 3 ep): LoRA matches full FT"
        rule = ("LoRA r=8 − full FT at the presets' rates; epoch chosen on a 500-example slice of the training split, "
                "dev reported; tested only where full FT clears the constant predictor by more than the margin")
        rates = chosen[chosen["task"] == task]
        if len(rates):  # rule 15: each arm at the rate its search chose on the selection slice, the search's seed out
            lora, full = (arm[np.isclose(arm["lr"], rates.loc[rates["method"] == role, "lr"].iloc[0])
                              & arm["seed"].ne(0)] for arm, role in ((lora, roles.STUDIED), (full, roles.REFERENCE)))
            sources += ("table2_learn/lr_selection.csv",)
            rule = ("LoRA r=8 − full FT, each at the rate searched on the selection slice (seed 0, five rates; the "
                    "confirmation seeds 1–5 only); epoch chosen on that slice, dev reported; tested only where full FT "
                    "clears the constant predictor by more than the margin")
        if min(len(lora), len(full)) < 3:
            rows.append(Row(claim, PAPER_T2[task], f"LoRA {100 * lora['score'].mean():.1f} vs full FT "
                            f"{100 * full['score'].mean():.1f}", f"{len(lora)} vs {len(full)} seeds",
                            "not tested: fewer than 3 seeds per arm", rule, sources))
            continue
        floor = _constant_predictor(predictions, full, metric)
        learned = full["score"].mean() * 100 - floor
        if not learned > margin_for(metric):
            rows.append(Row(claim, PAPER_T2[task], f"full FT {100 * full['score'].mean():.1f} vs the constant "
                            f"predictor's {floor:.1f}", f"{len(full)} seeds", "not tested: the task did not learn "
                            "at this budget", rule, sources))
            continue
        rows.append(_comparison(claim, PAPER_T2[task], lora, full, metric, rule, sources, predictions,
                                note=f"the constant predictor scores {floor:.1f}"))
    return rows


def budget_ladder_rows(root: Path) -> list[Row]:
    """One row per task: LoRA − full FT at each rung of the budget ladder (results/budget_ladder/budget_ladder.csv,
    ``analysis.tables.budget_ladder``), the verdict of each rung, so a reader sees whether it moves with the budget."""
    path = root / "budget_ladder" / "budget_ladder.csv"
    if not path.is_file():
        return []
    ladder = pd.read_csv(path)
    rows = []
    for task, rungs in ladder.groupby("task", sort=False):
        if len(rungs) < 2:
            continue
        rungs = rungs.sort_values("examples trained")
        ours = " · ".join(f"{r['examples trained']:,}: " + _span(*(r[f"LoRA − full FT{end}"]
                                                                    for end in ("", " 2.5%", " 97.5%")))
                          for _, r in rungs.iterrows())  # fmt: skip
        each = [str(v).split(":")[0] for v in rungs["verdict"]]
        decided = {v for v in each if v in ("equivalent", "better", "worse")}  # rule 17: two decided rungs disagree
        verdicts = ("depends on the budget: " if len(decided) > 1 else "not shown to depend on the budget: ") + \
            " · ".join(each)
        seeds = " · ".join(dict.fromkeys(rungs["seeds"]))
        examples = int(rungs["dev examples"].max()) if rungs["dev examples"].notna().all() else None
        rows.append(Row(f"Budget ladder, {task}: does LoRA − full FT depend on the examples trained on?",
                        "— (one budget per task)", ours, f"{seeds} per rung" + (f" · {examples} examples" if examples
                                                                               else " · seeds only"),
                        f"{verdicts} (±{rungs['margin'].iloc[0]:g})",
                        "table2_learn's rule at each rung (epoch chosen on the 500-example selection slice, dev "
                        "reported), rungs by examples trained; it depends on the budget only if two rungs' verdicts "
                        "disagree and neither is inconclusive", (_source(root, path),)))
    return rows


def _table3_runs(root: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str, tuple[str, ...]]:
    """(the trained runs, the zero-shot run or None, the test MRs scored, the sources): rule 22's whole test set
    (results/table3_test) once it holds three seeds per arm and the zero-shot run, else the 50-MR rerun
    (results/table3_rerun, beside table3_zero_shot), else the first table (results/table3)."""
    if (root / "table3_test" / "runs.csv").is_file():
        runs = _runs(root, "table3_test/runs.csv")
        untrained = runs["train.epochs"].eq(0)
        trained = runs[~untrained]
        arms = [_arm(trained, method=m)["seed"].nunique() for m in (roles.STUDIED, roles.REFERENCE)]
        if untrained.any() and min(arms) >= 3:
            return trained, runs[untrained], "all 630 test MRs", ("table3_test/runs.csv",)
    source = "table3_rerun/runs.csv" if (root / "table3_rerun" / "runs.csv").is_file() else "table3/runs.csv"
    zero = "table3_zero_shot/runs.csv"
    zeros = (zero,) if (root / zero).is_file() else ()
    return _runs(root, source), _runs(root, zero) if zeros else None, "50 test MRs", (source, *zeros)


def table3_rows(root: Path) -> list[Row]:
    """Table 3, one verdict per metric, LoRA r=4 against full FT and each against the untrained model, from
    ``_table3_runs``."""
    runs, zero, scored, sources = _table3_runs(root)
    source = sources[0]
    lora, full = _arm(runs, method=roles.STUDIED), _arm(runs, method=roles.REFERENCE)
    rows = [_comparison("Table 3, E2E BLEU: LoRA r=4 matches full FT", "70.4 vs 68.2 (GPT-2 M)", lora, full, "bleu",
                        f"LoRA − full FT, BLEU of the best epoch, {scored}, greedy", (source,))]
    if zero is not None:  # the floor: SmolLM2 as loaded, nothing trained
        for name, arm in (("LoRA r=4", lora), ("full FT", full)):
            rows.append(_comparison(f"Table 3, E2E BLEU: {name} beats the zero-shot model", "— (no zero-shot row)",
                                    arm, zero, "bleu", "fine-tuned − the same model untrained (train.epochs=0, greedy: "
                                    f"one deterministic run), {scored}", sources))
    for metric, paper in (("nist", "8.85 vs 8.68"), ("rouge_l", "71.8 vs 69.2")):
        column = f"best_{metric}"  # each run's value at its best epoch (run tables written since issue 22)
        if column in runs and runs[column].notna().all():
            rows.append(_comparison(f"Table 3, E2E {metric.upper()}: LoRA r=4 matches full FT", paper,
                                    lora.assign(score=lora[column]), full.assign(score=full[column]), metric,
                                    f"LoRA − full FT, {metric.upper()} of the best epoch, {scored}, greedy",
                                    (source,)))
            continue
        table = pd.read_csv(root / "table3" / "table3.csv").set_index("task / model / method")  # medians only
        cells = {m: (table.loc[i, metric], table.loc[i, f"{metric} min"], table.loc[i, f"{metric} max"])
                 for m, i in (("LoRA", next(i for i in table.index if "LoRA" in i)),
                              ("full FT", next(i for i in table.index if "full FT" in i and "smollm2" in i)))}
        (a, a_lo, a_hi), (b, b_lo, b_hi) = cells["LoRA"], cells["full FT"]
        rows.append(Row(f"Table 3, E2E {metric.upper()}: LoRA matches full FT", paper,
                        f"{a:.2f} [{a_lo:.2f}, {a_hi:.2f}] vs {b:.2f} [{b_lo:.2f}, {b_hi:.2f}]", "3 vs 3 · medians",
                        "inconclusive: per-run values not in the committed files (only median [min, max])",
                        "LoRA − full FT against the margin; needs per-run values", ("table3/table3.csv",)))
    return rows


def table5_rows(root: Path) -> list[Row]:
    runs = _runs(root, "table5/runs.csv")
    qv = _arm(runs, targets="qv")
    rows = []
    others = {t: _arm(runs, targets=t) for t in ("q", "k", "v", "o", "qk", "qkvo")}
    best_other = max(others, key=lambda t: others[t]["score"].median())
    for t in dict.fromkeys(("q", best_other)):
        rows.append(_comparison(f"Table 5: {{Wq, Wv}} beats {t} at one budget (SST-2, 4,000 × 2 ep)",
                                "{Wq, Wv} best: 91.0 vs Wq 85.2 (WikiSQL), 73.7 vs 70.4 (MNLI)", qv, others[t],
                                "accuracy", "{Wq, Wv} − the other weight type at 36.9K LoRA parameters",
                                ("table5/runs.csv",)))
    return rows


def table6_rows(root: Path) -> list[Row]:
    runs = _runs(root, "table6/runs.csv")
    rows = []
    for targets, name in (("qv", "{Wq, Wv}"), ("q", "Wq"), ("qkvo", "all four")):
        arm = _arm(runs, targets=targets)
        rows.append(_comparison(f"Table 6: r=1 suffices for {name} (SST-2, 4,000 × 2 ep, α fixed)",
                                "r=1 within 0.5 of r=64 (WikiSQL, MNLI)", _arm(arm, rank=1), _arm(arm, rank=64),
                                "accuracy", "r=1 − r=64; equivalent supports the claim", ("table6/runs.csv",)))
    tasks = _runs(root, TASKS)
    for rslora, scale in ((False, "α/r (the confound: r=64 has 1/8 of r=8's scale)"), (True, "α/√r (rsLoRA)")):
        hi = _arm(tasks, task="sst2", method=roles.STUDIED, rank=64.0, init="gaussian", rslora=rslora, lr=0.001)
        lo = _arm(tasks, task="sst2", method=roles.STUDIED, rank=8.0, init="gaussian", rslora=False, lr=0.001)
        rows.append(_comparison(f"Table 6, scale confound out: r=64 − r=8 at {scale}", "—", hi, lo, "accuracy",
                                "the rank's effect with the scale held (rsLoRA) vs moving with r", (TASKS,)))
    return rows


# Section 7's runs (Gaussian A, 2,000 × 2) and the follow-ups issue 22 asks Table 7 and intruders on: Kaiming A (A
# moves from its init) and the main job's 6× longer runs (8,000 × 3, r = 4, 8, 16, 64).
FOLLOW_UPS = (("intrinsic_rank", ""), ("intrinsic_rank/fig3_kaiming", ", Kaiming A"),
              ("intrinsic_rank/fig3_longer", ", 6× longer"))


def table7_rows(root: Path) -> list[Row]:
    """Table 7 on the Gaussian-A runs and, where committed, on the Kaiming-A ones (A moves from its init there)."""
    col = "‖UᵀWVᵀ‖_F, U,V of ΔW"
    rand = "‖UᵀWVᵀ‖_F, U,V random"
    rows = []
    for folder, what in FOLLOW_UPS:
        if not (root / folder / "table7.csv").is_file():
            continue
        for _, r in pd.read_csv(root / folder / "table7.csv").iterrows():
            rows.append(_chance(f"Table 7: ΔW of {r['method']} amplifies W's directions ({r['module']}, layer 3, "
                                f"r={int(r['r'])}{what})", "‖UᵀWVᵀ‖ of ΔW ≫ random (0.32 vs 0.02, amplification 21.5)",
                                (r[col], r[f"{col} min"], r[f"{col} max"]),
                                (r[rand], r[f"{rand} 2.5%"], r[f"{rand} 97.5%"]),
                                f"{int(r['seeds'])} seeds · 100 random draws", "ours [min, max] over seeds against the "
                                "95% interval of 100 random U, V", (f"{folder}/table7.csv",)))
    return rows


def subspace_rows(root: Path) -> list[Row]:
    rows = []
    for folder, what in (("intrinsic_rank", "Gaussian A, 2,000 × 2 ep"), ("intrinsic_rank/fig3_kaiming", "Kaiming A"),
                         ("intrinsic_rank/fig3_longer", "Gaussian A, 6× longer")):
        table = pd.read_csv(root / folder / "subspace_summary_agg.csv")
        for _, r in table[table["comparison"] == "ranks"].iterrows():
            rows.append(_chance(f"Figure 3: r=8 and r=64 share their top direction ({r['module']}, {what})",
                                "φ(1, 1) > 0.5", _cell(r["φ(1,1)"]), _cell(r["random φ(1,1)"]),
                                f"{int(r['layers × pairs'])} layers × pairs", "φ(1, 1) [min, max] over layers × "
                                "pairs against random r-dim subspaces; the paper's 0.5 is the bar",
                                (f"{folder}/subspace_summary_agg.csv",)))
    table = pd.read_csv(root / "intrinsic_rank" / "subspace_summary_agg.csv")
    for _, r in table[table["comparison"] == "seeds"].iterrows():
        rows.append(_chance(f"Figure 4: two seeds share top directions ({r['module']}, {r['ranks']})",
                            "top directions shared, the rest at chance", _cell(r["φ(1,1)"]),
                            _cell(r["random φ(1,1)"]), f"{int(r['layers × pairs'])} layers × pairs",
                            "φ(1, 1) of A over two seeds against random", ("intrinsic_rank/subspace_summary_agg.csv",)))
    return rows


def spectra_rows(root: Path) -> list[Row]:
    table = pd.read_csv(root / "intrinsic_rank" / "spectra.csv")
    full = table[table["method"].str.startswith("full FT")]
    ranks = full["signal rank vs seed noise"].dropna()
    q = np.percentile(ranks, [50, 0, 100])
    return [Row("Spectra: a full fine-tune's ΔW has a low intrinsic rank (SST-2)", "rank deficient (§7)",
                f"signal rank {q[0]:g} [{q[1]:g}, {q[2]:g}] over {len(ranks)} modules, of up to 384",
                "3 seeds · seed-noise floor", "low rank: every module's signal rank ≤ 8",
                "directions of ΔW above the seed-difference floor, median [min, max] over modules",
                ("intrinsic_rank/spectra.csv",))]


def truncation_rows(root: Path) -> list[Row]:
    table = pd.read_csv(root / "tasks" / "truncation_summary.csv")
    table = table[table["method"].str.startswith(("full FT", "LoRA (r=8, Wq, Wv, lr"))]
    family = table["method"].str.split(" ").str[0]
    # Per task and method, the rate that gained most: the configuration Table 2 compares.
    table = table.loc[table.assign(_f=family).groupby(["task", "_f"])["gain"].idxmax()]
    rows = []
    for _, r in table.iterrows():
        value = r["rank for 90% of gain"]
        if pd.isna(value) or r["gain"] < margin_for(r["metric"]):  # no gain worth keeping: nothing to test
            continue
        rows.append(Row(f"Truncation: {r['method']} on {r['task']} keeps 90% of its gain at a low rank",
                        "r = 1–8 suffice (Table 6)", f"rank {value:g} [{r['rank for 90% of gain min']:g}, "
                        f"{r['rank for 90% of gain max']:g}] for 90% of a gain of {r['gain']:.1f}",
                        f"{int(r['seeds'])} seeds ({r['seeds reaching 90%']} reach it)",
                        "low rank" if r["rank for 90% of gain max"] <= 8 else "not low rank (> 8 in some seed)",
                        "the smallest k whose truncated ΔW keeps 90% of the gain over the head alone (gains ≥ the "
                        "margin only)",
                        ("tasks/truncation_summary.csv",)))
    return rows


def forgetting_rows(root: Path) -> list[Row]:
    runs = _runs(root, TASKS)
    rows = []
    for task in ("sst2", "stsb", "mrpc", "rte"):
        on = runs[runs["task"] == task]
        lora = _best_rate(_arm(on, method=roles.STUDIED, rank=8.0, targets="qv", init="gaussian", rslora=False))
        full = _best_rate(_arm(on, method=roles.REFERENCE))
        a, b = full.assign(score=full["forgetting"]), lora.assign(score=lora["forgetting"])
        rows.append(_comparison(f"Forgetting, {task}: full FT forgets more of MiniLM's STS-B skill than LoRA",
                                BEYOND, a, b, "spearman", "full FT − LoRA forgetting (Spearman ×100 "
                                "lost), each at its best-median task rate", (TASKS,)))
    return rows


def intruder_rows(root: Path) -> list[Row]:
    """Raw and matched-norm intruders per method on the Gaussian-A runs and, where committed, the Kaiming-A ones (no
    full fine-tune among those: raw counts only)."""
    rows = []
    for folder, what in FOLLOW_UPS:
        path = root / folder / "intruders.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        for method in sorted(set(table["method"])):
            on = table[table["method"] == method]
            raw, matched = on["intruders"], on["intruders at matched norm"].dropna()
            ours = f"raw {raw.median():g} [{raw.min():g}, {raw.max():g}]"
            if len(matched):
                ours += f", at matched norm {matched.median():g} [{matched.min():g}, {matched.max():g}] per module"
                word = "has intruders" if matched.max() > 0 else "none at matched norm"
            else:
                ours += " per module; no full FT among these runs to match the norm to"
                word = "has intruders (raw)" if raw.max() > 0 else "none (raw)"
            rows.append(Row(f"Intruders: {method} (SST-2, top-10, ε = 0.5{what})", "LoRA has intruders, full FT few "
                            "(Shuttleworth et al.)", ours, f"{int(on['seeds'].max())} seeds · {len(on)} modules", word,
                            "intruders per module, median [min, max] over modules; LoRA's ΔW scaled to full FT's norm "
                            "(the other direction: the rows 'Intruders at LoRA's norm')", (f"{folder}/intruders.csv",)))
    return rows


def intruder_norm_rows(root: Path) -> list[Row]:
    """LoRA − full FT in intruders per run (summed over the modules both changed) at a common norm, both ways: the
    full fine-tune's (LoRA's ΔW scaled down) and LoRA's (full FT's scaled up), per task folder of results/intruders
    (the table2_learn runs; E2E's, the Table 3 runs)."""
    rows = []
    for path in sorted((root / "intruders").glob("*/intruders_runs.csv")):
        table, task = pd.read_csv(path), path.parent.name
        lora, full = table[table["method"].str.startswith("LoRA")], table[table["method"].eq("full FT")]
        studied = " · ".join(sorted(set(lora["method"])))
        for column, how in (("intruders at matched norm", "full FT's norm (LoRA's ΔW scaled down)"),
                            ("intruders at LoRA's norm", "LoRA's norm (full FT's ΔW scaled up)")):  # fmt: skip
            d = difference_interval(list(lora[column]), list(full[column]), "mean")
            found = verdict(d, 0.0)
            word = {"better": "LoRA has more", "worse": "full FT has more", "equivalent": "none in either"}.get(
                found, "not told apart")
            rows.append(Row(f"Intruders at {how}: {studied} vs full FT ({task})",
                            "LoRA has intruders, full FT few (Shuttleworth et al.)",
                            f"{_interval(d)} per run ({d.a:.1f} vs {d.b:.1f} over {int(lora['modules'].iloc[0])} "
                            f"modules; p = {d.p_value:.2g})", f"{d.seeds_a} vs {d.seeds_b} · seeds only", word,
                            "LoRA − full FT in intruders per run (top-10, ε = 0.5) at one common norm per module; "
                            "more when the interval lies above 0", (_source(root, path),)))
    return rows


def cross_task_rows(root: Path) -> list[Row]:
    """Other seeds only: with the paper's Gaussian A, runs of one seed share A's init on every task, so same-seed
    row spaces agree by construction (φ ≈ 0.99), not because the tasks do."""
    table = pd.read_csv(root / "cross_task" / "cross_task_agg.csv")
    rows = []
    for comparison in ("cross-task, other seeds", "same task, other seeds"):
        for side, factor in (("column", "B"), ("row", "A")):
            on = table[(table["comparison"] == comparison) & table["LoRA"].str.startswith("LoRA (r=8")]
            values = on[f"φ {side} space (k=r)"]
            chance = (on[f"random {side} space"].mean(), on[f"random {side} space 2.5%"].min(),
                      on[f"random {side} space 97.5%"].max())
            rows.append(_chance(f"Cross-task: {comparison}, {side} space ({factor}'s side), LoRA r=8",
                                BEYOND, (values.median(), values.min(), values.max()), chance,
                                f"{len(on)} (task pair, module) cells", "φ(r, r) against Haar-random subspaces "
                                "(the task-free control: the rows 'Cross-task: tasks share more than any training "
                                "does')", ("cross_task/cross_task_agg.csv",)))
    return rows


RULE_18_CONTROLS = ("sst2", "stsb")  # the shuffled-label tasks rule 18 named before its runs; 18b adds the others'


def cross_task_control_rows(root: Path) -> list[Row]:
    """Rules 18 and 18b: cross-task φ (other seeds) against the task-free control, LoRA's φ between a task's run and a
    run on shuffled labels (other seeds), per side, on the table2_learn runs (results/table2_learn/cross_task_agg.csv):
    rule 18 with the controls it named (SST-2's and STS-B's shuffled labels), 18b with every task's."""
    path = root / "table2_learn" / "cross_task_agg.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    table = table[table["LoRA"] == table["LoRA"].iloc[0]]
    control = table["comparison"] == "task vs shuffled labels, other seeds"
    shuffled = table.loc[control, "task B"].str.removesuffix(roles.SHUFFLED_TASK)  # the shuffled run is task B
    named = control & table["task B"].isin([t + roles.SHUFFLED_TASK for t in RULE_18_CONTROLS])
    arms = [("", named, "18")]
    if set(shuffled) - set(RULE_18_CONTROLS):
        arms.append((f", every task's control ({len(set(shuffled))} tasks)", control, "18b"))
    rows = []
    for which, cells, rule in arms:
        for side, factor in (("column", "B"), ("row", "A")):
            column = f"φ {side} space (k=r)"
            ours, floor = table.loc[table["comparison"] == "cross-task, other seeds", column], table.loc[cells, column]
            if ours.empty or floor.empty:
                continue
            rows.append(_chance(f"Cross-task: tasks share more than any training does, {side} space ({factor}'s "
                                f"side), {table['LoRA'].iloc[0]}{which}", BEYOND,
                                (ours.median(), ours.min(), ours.max()), (floor.median(), floor.min(), floor.max()),
                                f"{len(ours)} vs {len(floor)} (task pair, module) cells",
                                f"rule {rule}: cross-task φ (other seeds) above the task-free control (a task's run vs "
                                "LoRA on shuffled labels, other seeds) when all its cells lie above all the control's",
                                (_source(root, path),), against="the shuffled-label control"))
    return rows


def interpolation_rows(root: Path) -> list[Row]:
    table = pd.read_csv(root / "cross_task" / "interpolation.csv")
    rows = []
    for task in ("sst2", "stsb"):
        mixed, alone = [], []
        for _, g in table[table["task"] == task].groupby("seed"):
            end = g.loc[g["recorded"].notna(), "value"].iloc[0]  # the adapter alone at full scale
            half = g[np.isclose(g["w"], 0.5)].iloc[0]
            mixed.append(100 * half["value"] / end)
            alone.append(100 * half["alone"] / end)
        d = difference_interval(mixed, alone, "mean")
        margin = INTERPOLATION_MARGIN
        rows.append(Row(f"Interpolation: {task} at w = 0.5 of sst2 + stsb loses no more than its adapter alone at "
                        "half scale", BEYOND, f"{_interval(d)} "
                        f"points of the metric kept ({d.a:.1f}% mixed vs {d.b:.1f}% alone)",
                        f"{d.seeds_a} vs {d.seeds_b} · seeds only", f"{verdict(d, margin)} (±{margin:g})",
                        "mixed − alone at the same scale, % of the full-scale metric; worse = interference",
                        ("cross_task/interpolation.csv",)))
    return rows


def lr_rows(root: Path) -> list[Row]:
    runs = _runs(root, TASKS)
    on = _arm(runs, task="sst2", method=roles.STUDIED, rank=8.0, targets="qv", init="gaussian", rslora=False)
    hi, lo = on[np.isclose(on["lr"], 2.69e-3)], on[np.isclose(on["lr"], 1e-3)]
    return [_comparison("Learning rate: LoRA's searched 2.69e-3 beats the presets' 1e-3 (SST-2, 2,000 × 2 ep)",
                        "— (the paper tunes per task)", hi, lo, "accuracy",
                        "searched rate − default, five seeds each at 2,000 × 2 ep; the search's one-seed trials ran at 2,000 × 1 ep, "
                        "another configuration, so none is among them",
                        (TASKS,))]


# ------------------------------------------------------------------------------------------------ beyond the paper
# Issue 23's rules B1–B4 (REPRODUCTION.md, "Beyond the paper"), read from results/beyond/<analysis>/<task>/.


def _beyond(root: Path, analysis: str, name: str) -> list[tuple[str, Path]]:
    """(task, file) of one beyond-the-paper analysis, one folder per task: results/beyond/<analysis>/<task>/<name>."""
    return [(p.parent.name, p) for p in sorted((root / "beyond" / analysis).glob(f"*/{name}"))]


def _source(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def gradient_alignment_rows(root: Path) -> list[Row]:
    """B1: per side, LoRA's φ with its task's G₀ (each seed: the mean over adapted modules) against random subspaces
    and against φ with another task's G₀, paired by run."""
    rows = []
    for task, path in _beyond(root, "gradient_alignment", "gradient_alignment_seeds.csv"):
        table = pd.read_csv(path)
        lora, full = table[table["φ column (B)"].notna()], table[table["φ column (B)"].isna()]
        for side, factor in (("column", "B"), ("row", "Aᵀ")):
            own, other = lora[f"φ {side} (ΔW)"], lora.get(f"φ {side} (ΔW), other task's G₀")
            chance = (lora[f"random {side}"].mean(), lora[f"random {side} 2.5%"].min(),
                      lora[f"random {side} 97.5%"].max())
            above = bool((own > chance[2]).all())
            at = chance[1] <= own.median() <= chance[2]
            text = (f"φ {own.median():.3f} [{own.min():.3f}, {own.max():.3f}] vs chance {chance[0]:.3f} "
                    f"[{chance[1]:.3f}, {chance[2]:.3f}]")
            d = None
            if other is not None and other.notna().all():
                d = paired_difference(list(own), list(other), "mean")
                text += f"; own − other task's G₀ {_interval(d, '+.3f')} (p = {d.p_value:.2g})"
            if len(full):
                text += f"; full FT's ΔW {full[f'φ {side} (ΔW)'].median():.3f}"
            word = ("held: from G₀" if above and d is not None and d.low > 0 else "not held: at chance" if at
                    else "not told apart")  # fmt: skip
            rows.append(Row(f"B1: LoRA's {side} space ({factor}) comes from G₀ ({task}, r=8, Wq, Wv)",
                            "— (LoRA-GA, LoRA-One: aligned)", text, f"{len(own)} seeds · mean over modules", word,
                            "every seed above the random 97.5% point and own − other task's G₀ (paired by run) "
                            "with its interval above 0", (_source(root, path),)))
    return rows


def rank_allocation_rows(root: Path) -> list[Row]:
    """B2: LoRA with the allocated per-module rank − uniform r=8, at the same number of parameters."""
    rows = []
    for task, path in _beyond(root, "rank_allocation", "runs.csv"):
        runs = pd.read_csv(path)
        runs = runs[runs["status"].eq("complete")] if "status" in runs else runs
        lora = runs[runs["method"] == roles.STUDIED]
        pattern = [c for c in lora if c == "rank_pattern" or c.startswith("rank_pattern.")]  # flattened per module
        allocated = lora[lora[pattern].notna().any(axis=1)] if pattern else lora.iloc[:0]
        uniform = lora.drop(allocated.index)
        if allocated.empty or uniform.empty:
            continue
        preds = path.parent / "predictions.csv.gz"
        predictions = load_predictions_csv(preds) if preds.is_file() else None
        sources = (_source(root, path),) + ((_source(root, preds),) if predictions else ())
        rows.append(_comparison(f"B2: a per-module rank from full FT's ΔW beats uniform r=8 ({task}, equal "
                                "parameters)", BEYOND, allocated, uniform, runs["metric"].iloc[0],
                                "allocated − uniform at uniform r=8's LoRA parameters; epoch chosen on a held-out "
                                "training slice, dev reported", sources, predictions))
    return rows


def intruder_cost_rows(root: Path) -> list[Row]:
    """B3: at λ = 0 and 0.25, intruders scaled − as many top non-intruders scaled alike, paired by run, for the dev
    metric (costs skill: worse at both λ) and for forgetting (causes forgetting: scaling intruders lowers it more)."""
    rows = []
    for task, path in _beyond(root, "intruder_cost", "intruder_cost.csv"):
        table = pd.read_csv(path)
        metric = table["metric"].iloc[0]
        arms = sorted(set(table["arm"]), key=lambda a: not a.startswith("intruders"))
        for what, column, margin_metric, claim in (
                ("skill", "value", metric, "cost task skill"),
                ("forgetting", "forgetting (STS-B ×100)", "spearman", "cause forgetting")):  # fmt: skip
            if table[column].isna().all():
                continue
            found, texts = [], []
            for lam in (0.0, 0.25):
                at = table[np.isclose(table["λ"], lam)].pivot_table(index="seed", columns="arm", values=column)
                d = paired_difference(list(at[arms[0]]), list(at[arms[1]]), "mean")
                found.append(verdict(d, margin_for(margin_metric)))
                texts.append(f"λ={lam:g}: {_interval(d)} (p = {d.p_value:.2g})")
            # Held: below the control by more than the margin at both λ (a lower metric; less forgetting left).
            word = (f"held: intruders {claim}" if all(v == "worse" for v in found) else
                    "not held: no more than the control" if all(v == "equivalent" for v in found) else
                    "not told apart")  # fmt: skip
            scaled = table.loc[table["arm"] == arms[0], "directions scaled"]
            rows.append(Row(f"B3: intruder dimensions {claim} ({task}, LoRA r=8)", "— (Shuttleworth et al.: they "
                            "cause forgetting)", "intruders − control " + "; ".join(texts) + f" (points; "
                            f"{scaled.median():g} [{scaled.min():g}, {scaled.max():g}] intruders per run)",
                            f"{at.shape[0]} seeds · paired", f"{word} ({', '.join(found)}; ±"
                            f"{margin_for(margin_metric):g})", "intruders scaled − the same number of top "
                            "non-intruders scaled, paired by run, worse at both λ = 0 and 0.25",
                            (_source(root, path),)))
    return rows


def sharpness_rows(root: Path) -> list[Row]:
    """B4: Spearman ρ between λ_max at init (the method's own parameters) and the best searched rate."""
    rows = []
    for task, path in _beyond(root, "sharpness", "sharpness.csv"):
        table = pd.read_csv(path)
        rho, lo, hi = table["ρ(λ_max, best lr)"].iloc[0], table["ρ 2.5%"].iloc[0], table["ρ 97.5%"].iloc[0]
        rows.append(Row(f"B4: each method's best learning rate follows λ_max ({task})", "— (Lee et al. 2026)",
                        f"ρ = {rho:+.2f} [{lo:+.2f}, {hi:+.2f}] over {len(table)} configurations".replace("-", "−"),
                        f"{len(table)} configurations · {int(table['converged'].sum())} λ_max converged",
                        str(table["verdict"].iloc[0]), "ρ's bootstrap interval below 0 holds, above 0 does not; no "
                        "verdict while any λ_max is unconverged", (_source(root, path),)))
    return rows


INTERPOLATION_MARGIN = 1.0  # points of the metric kept, % of the adapter's own score: fixed with the rule, before runs

def _constant_predictor(predictions: dict | None, runs: pd.DataFrame, metric: str) -> float:
    """The majority class's score on the runs' dev examples (``stats.constant_score``)."""
    return constant_score(predictions[runs["run"].iloc[0]]["labels"] if predictions else None, metric)


CLAIMS: tuple[Callable[[Path], list[Row]], ...] = (
    table2_rows, table2_learn_rows, budget_ladder_rows, table3_rows, table5_rows, table6_rows, table7_rows,
    subspace_rows, spectra_rows, truncation_rows, forgetting_rows, intruder_rows, intruder_norm_rows, cross_task_rows,
    cross_task_control_rows, interpolation_rows, lr_rows, gradient_alignment_rows, rank_allocation_rows,
    intruder_cost_rows, sharpness_rows,
)


# ------------------------------------------------------------------------------------------------ the table


def verdict_rows(root: Path) -> list[Row]:
    return [row for claim in CLAIMS for row in claim(root)]


def to_markdown(rows: list[Row]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell(c) for c in (r.claim, r.paper, r.ours, r.evidence, r.verdict, r.rule,
                                                  ", ".join(f"`{s}`" for s in r.sources))) + " |" for r in rows]
    return "\n".join(lines)


def document(rows: list[Row]) -> str:
    counts = pd.Series([r.verdict.split(" (")[0].split(":")[0] for r in rows]).value_counts()
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    return "\n".join([
        "# Verdicts",
        "",
        "Generated by `python -m analysis.verdicts results/` from the committed files named in each row; rerunning it "
        "reproduces this file byte for byte. Rules: `analysis/verdicts.py` (each claim a function) and "
        "`analysis/maths/stats.py` (the interval, the margins, the four verdicts). Differences are in points (metric "
        "×100); intervals are 95% bootstrap intervals over seeds, and over dev examples where the runs kept their "
        "predictions (`seeds only` says where they did not: the dev set's sampling error is then not in the "
        "interval). Learning rates and epochs of the older results were chosen on the dev set they report; rows "
        "that say so are read with that in mind. Paper numbers are RoBERTa-base / GPT-2 M at full scale, ours "
        "MiniLM / SmolLM2 on CPU budgets: compare verdicts, not levels.",
        "",
        f"{len(rows)} claims: {summary}.",
        "",
        to_markdown(rows),
        "",
    ])


def fill_reproduction(path: Path, table: str) -> bool:
    """Replace the text between the markers of REPRODUCTION.md with ``table``; False when the markers are absent."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    if TABLE_START not in text or TABLE_END not in text:
        return False
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    path.write_text(f"{head}{TABLE_START}\n{table}\n{TABLE_END}{tail}", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.verdicts", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the results folder (results/)")
    parser.add_argument("--out", type=Path, default=None, help="where to write VERDICTS.md (default: <results>/)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        print(f"analysis.verdicts: {args.results} is not a folder; give the results folder (results/)", file=sys.stderr)
        return 2
    try:
        rows = verdict_rows(args.results)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"analysis.verdicts: {args.results}: a claim's files are missing or unreadable ({err})", file=sys.stderr)
        return 1
    out = (args.out or args.results) / "VERDICTS.md"
    from lorakit.files import atomic_write

    atomic_write(out, lambda tmp: Path(tmp).write_text(document(rows), encoding="utf-8"))
    filled = fill_reproduction(args.results / "REPRODUCTION.md", to_markdown(rows))
    print(f"wrote {out} ({len(rows)} claims)" + ("; filled REPRODUCTION.md's table" if filled else ""))
    return 0


def write_predictions(runs: pd.DataFrame, out: Path) -> Path | None:
    """``predictions.csv.gz``: every run's per-example dev outputs (run, index, label, output columns), so verdicts
    with example-level intervals can be recomputed from committed files. None when no run kept predictions."""
    from experiments.families.classification import PREDICTIONS, SELECTION, load_predictions

    frames = []
    for _, run in runs.iterrows():
        if not (Path(run["run_dir"]) / PREDICTIONS).is_file():
            continue
        for split, arrays in load_predictions(run["run_dir"]).items():
            if split == SELECTION:  # the held-out training slice the epoch was chosen on: never reported
                continue
            outputs = np.asarray(arrays["outputs"]).reshape(len(arrays["labels"]), -1)
            frame = pd.DataFrame(outputs, columns=[f"output{i}" for i in range(outputs.shape[1])]).round(5)
            frame.insert(0, "label", arrays["labels"])
            frame.insert(0, "index", arrays.get("index", np.arange(len(frame))))
            frame.insert(0, "split", split)
            frame.insert(0, "run", run["run"])
            frames.append(frame)
    if not frames:
        return None
    text = pd.concat(frames, ignore_index=True).to_csv(index=False)
    path = out / "predictions.csv.gz"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz:  # mtime 0: the same runs give the same bytes
        gz.write(text.encode())
    from lorakit.files import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return path


if __name__ == "__main__":
    sys.exit(main())
