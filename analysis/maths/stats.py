"""Statistics that can decide (issue 22): a difference between two configurations with a 95% bootstrap interval over
seeds and dev examples, a permutation p-value over seeds, and a four-way verdict against a margin fixed in advance.

Inputs are two *arms* (configurations), each a list of runs (seeds). A run is either

- its per-example outputs on the dev set: ``(outputs, labels)`` or a mapping with ``"outputs"``, ``"labels"`` and
  optionally ``"index"`` (a split of ``experiments.families.classification.load_predictions``); outputs are logits
  (n × classes), classes (n,), or regression scores (n,) / (n × 1). Every run of both arms must hold the same
  examples; with ``index`` they are aligned by it, otherwise by position. Then examples are resampled too, *paired*:
  one draw of example indices per bootstrap replicate, used for every run of both arms, the metric recomputed on it.
- its score alone (a float, on the scale metrics.json writes: GLUE metrics as fractions, BLEU/ROUGE-L 0–100): then
  only seeds are resampled, and the result says so (``resampled == "seeds"``): the dev set's sampling error is left
  out of the interval, which is then too narrow by that much.

Every difference is in *points*: ``METRICS[name].scale`` × the metric (accuracy 0.861 → 86.1), the unit the margins
(``MARGINS``) are written in.

Bootstrap (Efron & Tibshirani 1993, ch. 13, percentile interval). Replicate b draws example indices I_b (n with
replacement, shared by both arms) and, per arm, R seeds with replacement; the arm's value is the mean over the drawn
seeds of each seed's metric on I_b, written as the mean of all R seeds on I_b (the example part) plus the drawn seeds'
deviation from it (the seed part). Two corrections make its variance that of the estimate. (1) With R seeds the
plug-in bootstrap variance of a mean is (R−1)/R · S²/R, 2/3 of S²/R at R = 3: the seed part is scaled by √(R/(R−1))
(Davison & Hinkley 1997, §3.3). (2) Seeds and examples are crossed: with y_ri = μ + u_r + z_i + e_ri (seed effect,
example effect, the run's own luck on the example), Var(mean) = σ_u²/R + σ_z²/n + σ_e²/(Rn), but resampling both
counts σ_e²/(Rn) twice (Owen 2007, "the pigeonhole bootstrap", is conservative for this reason): the seeds' variance
on the data, S² ≈ σ_u² + σ_e²/n, holds it once more. So the seed part is scaled to σ_u² = S² − ŵ, where
ŵ = R/(R−1) · mean_r Var_b(m_r(I_b) − mean_r' m_r'(I_b)) estimates σ_e²/n from the replicates (0 when the seeds
differ by no more than their luck). On simulated pairs (tests/test_analysis_stats.py: 5 seeds a side, 200–300
examples) the 95% interval covers the true difference 0.955 of the time when examples dominate the noise and 0.93
when the seed effect does (the percentile interval ignores the t-quantile of 5 seeds); without (2) it covered 0.985.
The interval is the 2.5 and 97.5 percentiles of a − b over the replicates; the estimate is a − b on the data (each
arm: the mean over its seeds of the metric on all examples). With one seed in an arm its seed variance cannot be
estimated: the interval then holds example noise only, and the result notes it.

Permutation test over seeds (Fisher; Good 2005): the runs' scores pooled, every split into groups of R_a and R_b
(exact when there are at most ``exact_limit`` splits: C(6, 3) = 20 for 3 vs 3), the two-sided p the share of splits
whose |mean_a − mean_b| is at least the observed one, the observed split included. Its smallest value is
2/C(R_a+R_b, R_a) for equal groups (3 vs 3: 0.1; 5 vs 5: 2/252 ≈ 0.008): three seeds a side can never reach p < 0.05.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, NamedTuple, Sequence

import numpy as np
from scipy.stats import rankdata

Verdict = Literal["equivalent", "better", "worse", "inconclusive"]


class Metric(NamedTuple):
    scale: float  # metric → points
    per_example: bool  # recomputable on a resample of examples (a corpus BLEU is not)


# What each metric name (experiments/metrics.py, experiments/nlg_metrics.py) is in points and how it is resampled.
METRICS: dict[str, Metric] = {
    "accuracy": Metric(100.0, True),
    "f1": Metric(100.0, True),  # of the positive class (1), as GLUE's MRPC / QQP
    "matthews_correlation": Metric(100.0, True),
    "pearson": Metric(100.0, True),
    "spearman": Metric(100.0, True),
    "mean": Metric(1.0, True),  # the mean of a per-example value (a loss, a per-sentence score), on its own scale
    "bleu": Metric(1.0, False),  # nlg_metrics writes BLEU and ROUGE-L on 0–100 already, NIST on its own 0–~10
    "nist": Metric(1.0, False),
    "rouge_l": Metric(1.0, False),
}

# Margins of equivalence, in points, fixed before any run they judge (issue 22, 2026-12-04). A difference whose whole
# 95% interval lies within ±margin is "equivalent". The one home of these numbers: verdict rules read them from here.
MARGINS: dict[str, float] = {
    "accuracy": 1.0,  # 1 point: below one dev standard error of SST-2 (872 sentences, ≈ 1.3) — a gap no reader acts on
    "f1": 1.0,
    "pearson": 1.0,  # ×100, as GLUE reports STS-B
    "spearman": 1.0,
    "matthews_correlation": 2.0,  # MCC moves about twice as much as accuracy per changed CoLA prediction
    # E2E (Table 3): the paper's LoRA-vs-full FT gaps are 0.2–1.5 BLEU and 0.1–0.5 ROUGE-L, NIST 0.02–0.1; a margin
    # of 1 BLEU / 1 ROUGE-L point is ~1.5% of their values (~70), and NIST's 0.1 is the same ~1% of its ~8.7; smaller
    # margins would ask seeds to agree beyond what the paper's own rows separate.
    "bleu": 1.0,
    "rouge_l": 1.0,
    "nist": 0.1,
}


@dataclass(frozen=True)
class Difference:
    """a − b in points, its ``confidence`` interval [low, high], and how it was obtained."""

    metric: str
    estimate: float
    low: float
    high: float
    a: float  # each arm's value: the mean over its seeds, in points
    b: float
    seeds_a: int
    seeds_b: int
    examples: int | None  # dev examples resampled (paired); None: seeds only
    resampled: Literal["seeds and examples", "seeds", "seeds, paired"]
    p_value: float  # permutation over seeds, two-sided
    p_min: float  # the smallest p these seed counts allow
    confidence: float = 0.95
    resamples: int = 2000
    notes: tuple[str, ...] = field(default=())

    @property
    def interval(self) -> tuple[float, float]:
        return self.low, self.high


def verdict(interval: Difference | tuple[float, float], margin: float) -> Verdict:
    """The four verdicts of issue 22 on an interval [low, high] of a − b and a margin m ≥ 0 (points):

    - **equivalent**: the interval lies inside the closed band [−m, m] (an end on ±m counts as inside). This wins
      over better/worse: a difference that excludes 0 but stays within ±m is real and too small to matter.
    - **better**: low > 0 (0 excluded; an end exactly on 0 does not exclude it) and high > m (it reaches past +m).
    - **worse**: high < 0 and low < −m.
    - **inconclusive**: anything else — the interval holds 0 and reaches past ±m (too wide to tell).

    With m = 0 only a point interval [0, 0] is equivalent. Raises ValueError on NaN, low > high or m < 0.
    """
    low, high = interval.interval if isinstance(interval, Difference) else interval
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"an interval needs finite low <= high, got [{low}, {high}]")
    if not margin >= 0:
        raise ValueError(f"a margin is >= 0 points, got {margin}")
    if -margin <= low and high <= margin:
        return "equivalent"
    if low > 0 and high > margin:
        return "better"
    if high < 0 and low < -margin:
        return "worse"
    return "inconclusive"


def margin_for(metric: str) -> float:
    if metric not in MARGINS:
        raise KeyError(f"no margin fixed for metric {metric!r}; fixed: {', '.join(MARGINS)} (analysis/maths/stats.py)")
    return MARGINS[metric]


def constant_score(labels: np.ndarray | None, metric: str) -> float:
    """What always answering the majority class scores on these labels, in points (0 for a correlation: a constant
    has none): the floor a task has to be learned above; NaN when the labels are unknown and the metric needs them."""
    if metric in ("pearson", "spearman", "matthews_correlation"):
        return 0.0
    if labels is None:
        return math.nan
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    majority = values[counts.argmax()]
    if metric == "accuracy":
        return float(100 * counts.max() / len(labels))
    if metric == "f1":  # the positive class's F1 when always predicting the majority class
        return float(100 * 2 * counts.max() / (len(labels) + counts.max())) if majority == 1 else 0.0
    raise KeyError(f"no constant-predictor floor for metric {metric!r}; known: accuracy, f1 and the correlations")


def metric_on_resamples(metric: str, outputs: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One run's metric (points) on each row of example indices ``rows`` (B × n): a vector of B values.
    ``rows = np.arange(n)[None]`` gives the metric on the data itself."""
    if metric not in METRICS or not METRICS[metric].per_example:
        per_example = [m for m, spec in METRICS.items() if spec.per_example]
        raise ValueError(f"metric {metric!r} is not recomputed per example; per-example metrics: {per_example}")
    outputs, labels = np.asarray(outputs), np.asarray(labels)
    scale = METRICS[metric].scale
    if metric in ("pearson", "spearman", "mean"):
        x = outputs.reshape(len(outputs), -1)[:, 0] if outputs.ndim > 1 else outputs
        x = x.astype(np.float64)[rows]
        if metric == "mean":
            return scale * x.mean(axis=-1)
        y = labels.astype(np.float64)[rows]
        if metric == "spearman":
            x, y = rankdata(x, axis=-1), rankdata(y, axis=-1)  # ties get their mean rank, as scipy's spearmanr
        return scale * _pearson(x, y)
    predicted = outputs.argmax(axis=-1) if outputs.ndim > 1 else outputs
    predicted, truth = predicted[rows], labels[rows]
    if metric == "accuracy":
        return scale * (predicted == truth).mean(axis=-1)
    if not set(np.unique(labels)) <= {0, 1}:
        raise ValueError(f"{metric} is computed here for binary labels 0/1 only (CoLA, MRPC, QQP)")
    tp = ((predicted == 1) & (truth == 1)).sum(axis=-1).astype(np.float64)
    fp = ((predicted == 1) & (truth == 0)).sum(axis=-1).astype(np.float64)
    fn = ((predicted == 0) & (truth == 1)).sum(axis=-1).astype(np.float64)
    tn = ((predicted == 0) & (truth == 0)).sum(axis=-1).astype(np.float64)
    if metric == "f1":
        return scale * _ratio(2 * tp, 2 * tp + fp + fn)  # 0 with no positive predicted or true, as scikit-learn
    return scale * _ratio(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis; 0 where either side is constant (experiments/metrics.py's convention)."""
    x, y = x - x.mean(axis=-1, keepdims=True), y - y.mean(axis=-1, keepdims=True)
    return _ratio((x * y).sum(axis=-1), np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1)))


def permutation_pvalue(a: Sequence[float], b: Sequence[float], exact_limit: int = 100_000, resamples: int = 20_000,
                       seed: int = 0) -> float:
    """Two-sided permutation p of mean(a) − mean(b) over the runs' scores (module docstring). Exact up to
    ``exact_limit`` splits, else ``resamples`` random ones with p = (1 + hits)/(1 + resamples)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("a permutation test needs at least one run in each arm")
    pooled, k = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean())
    tolerance = 1e-9 * max(1.0, float(np.abs(pooled).max()))  # the same split, summed in another order, is not "less"
    if math.comb(len(pooled), k) <= exact_limit:
        groups = np.array(list(itertools.combinations(range(len(pooled)), k)))
        in_a = np.zeros((len(groups), len(pooled)), dtype=bool)
        in_a[np.arange(len(groups))[:, None], groups] = True
        stats = np.abs(pooled @ in_a.T / k - pooled @ (~in_a).T / len(b))
        return float(np.mean(stats >= observed - tolerance))
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.tile(np.arange(len(pooled)), (resamples, 1)), axis=1)
    shuffled = pooled[order]
    stats = np.abs(shuffled[:, :k].mean(axis=1) - shuffled[:, k:].mean(axis=1))
    return float((1 + np.sum(stats >= observed - tolerance)) / (1 + resamples))


def smallest_pvalue(seeds_a: int, seeds_b: int) -> float:
    """The smallest two-sided permutation p that ``seeds_a`` vs ``seeds_b`` runs can give (distinct scores)."""
    splits = math.comb(seeds_a + seeds_b, seeds_a)
    return (2 if seeds_a == seeds_b else 1) / splits


def difference_interval(a_runs: Sequence, b_runs: Sequence, metric: str, confidence: float = 0.95,
                        resamples: int = 2000, seed: int = 0, unbiased_seeds: bool = True) -> Difference:
    """a − b of ``metric`` in points with its bootstrap interval and permutation p (module docstring).

    ``a_runs``/``b_runs``: per run, either per-example outputs (``(outputs, labels)`` or a mapping with outputs,
    labels and optionally index) or a float score; both arms of one kind. ``seed`` fixes the resampling.
    ``unbiased_seeds=False`` leaves out both corrections of the seed part (the plain two-way bootstrap)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is in (0, 1), got {confidence}")
    if len(a_runs) == 0 or len(b_runs) == 0:
        raise ValueError("each arm needs at least one run")
    kinds = {_is_score(run) for run in [*a_runs, *b_runs]}
    if len(kinds) > 1:
        raise ValueError("both arms must give per-example outputs, or both per-run scores, not a mix")
    rng = np.random.default_rng(seed)
    notes = []
    if kinds == {True}:
        a_table = np.asarray(a_runs, dtype=np.float64)[:, None] * METRICS[metric].scale  # R × 1: the same every b
        b_table = np.asarray(b_runs, dtype=np.float64)[:, None] * METRICS[metric].scale
        a_full, b_full, examples = a_table[:, 0], b_table[:, 0], None
        notes.append("seeds only: no per-example predictions, so the dev set's sampling error is not in the interval")
    else:
        runs, labels = _aligned([*a_runs, *b_runs])
        examples = len(labels)
        rows = rng.integers(0, examples, (resamples, examples))
        identity = np.arange(examples)[None]
        chunk = max(1, 4_000_000 // examples)  # bounds the B × n gathers' memory (~32 MB)
        tables, full = [], []
        for outputs in runs:
            tables.append(np.concatenate([metric_on_resamples(metric, outputs, labels, rows[i:i + chunk])
                                          for i in range(0, resamples, chunk)]))
            full.append(metric_on_resamples(metric, outputs, labels, identity)[0])
        a_table, b_table = np.stack(tables[:len(a_runs)]), np.stack(tables[len(a_runs):])
        a_full, b_full = np.array(full[:len(a_runs)]), np.array(full[len(a_runs):])
    a_boot = _seed_resampled(a_table, resamples, rng, unbiased_seeds, a_full)
    b_boot = _seed_resampled(b_table, resamples, rng, unbiased_seeds, b_full)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(a_boot - b_boot, [tail, 100 - tail])
    for arm, count in (("a", len(a_runs)), ("b", len(b_runs))):
        if count == 1:
            notes.append(f"one seed in arm {arm}: its seed variance is not estimated, the interval is too narrow")
    p_min = smallest_pvalue(len(a_runs), len(b_runs))
    if p_min >= 1 - confidence:
        notes.append(f"{len(a_runs)} vs {len(b_runs)} seeds: the permutation p cannot go below {p_min:.3g}")
    return Difference(
        metric=metric, estimate=float(a_full.mean() - b_full.mean()), low=float(low), high=float(high),
        a=float(a_full.mean()), b=float(b_full.mean()), seeds_a=len(a_runs), seeds_b=len(b_runs), examples=examples,
        resampled="seeds" if examples is None else "seeds and examples",
        p_value=permutation_pvalue(a_full, b_full), p_min=p_min, confidence=confidence, resamples=resamples,
        notes=tuple(notes),
    )


def paired_difference(a: Sequence[float], b: Sequence[float], metric: str, confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> Difference:
    """a − b where a[r] and b[r] are two measurements of the *same* run r (an intervention and its control on one
    trained model; φ with two references): the bootstrap interval of the mean per-run difference over runs drawn with
    replacement, its spread scaled by √(R/(R−1)) as the seed part above, and the exact two-sided sign-flip p (each
    run's difference flipped in sign, all 2^R ways; its smallest value 2/2^R, 1/16 for five runs)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    a_arr, b_arr = (np.asarray(x, dtype=np.float64) * METRICS[metric].scale for x in (a, b))
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or len(a_arr) == 0:
        raise ValueError(f"a paired difference needs two equally long, non-empty lists, got {len(a)} and {len(b)}")
    d = a_arr - b_arr
    boot = _seed_resampled(d[:, None], resamples, np.random.default_rng(seed), True)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    tolerance = 1e-9 * max(1.0, float(np.abs(d).max()))
    p_value = float(np.mean(np.abs(signs @ d) >= abs(d.sum()) - tolerance))
    notes = ("one run: its variance is not estimated, the interval is a point",) if len(d) == 1 else ()
    return Difference(metric=metric, estimate=float(d.mean()), low=float(low), high=float(high), a=float(a_arr.mean()),
                      b=float(b_arr.mean()), seeds_a=len(d), seeds_b=len(d), examples=None, resampled="seeds, paired",
                      p_value=p_value, p_min=2 / 2 ** len(d), confidence=confidence, resamples=resamples, notes=notes)


def _seed_resampled(table: np.ndarray, resamples: int, rng: np.random.Generator, unbiased: bool,
                    on_data: np.ndarray | None = None) -> np.ndarray:
    """Per replicate b: the mean over R seeds drawn with replacement of ``table[:, b]`` (R × B, or R × 1 when the
    examples are not resampled). When ``unbiased``, its seed part (the deviation from the mean of all R seeds on the
    same examples) is scaled to the variance σ_u²/R of the seeds' effect alone (module docstring): by √(R/(R−1)), and,
    when examples are resampled too, by √((S² − ŵ)/S²), with S² the seeds' variance on the data (``on_data``: each
    seed's metric on all examples) and ŵ the part of it that is each run's own luck on these examples."""
    seeds = len(table)
    columns = np.arange(resamples) if table.shape[1] > 1 else np.zeros(resamples, dtype=int)
    drawn = table[rng.integers(0, seeds, (resamples, seeds)), columns[:, None]].mean(axis=1)
    center = table.mean(axis=0)[columns]
    if not unbiased or seeds == 1:
        return drawn
    scale = seeds / (seeds - 1)
    if table.shape[1] > 1 and on_data is not None:
        between = np.var(on_data, ddof=1)
        luck = scale * np.var(table - table.mean(axis=0), axis=1).mean()
        scale *= max(0.0, between - luck) / between if between > 0 else 0.0
    return center + math.sqrt(scale) * (drawn - center)


def _is_score(run) -> bool:
    """A per-run score (a number), not per-example outputs (a pair or a mapping of arrays)."""
    return isinstance(run, (int, float, np.number)) or (isinstance(run, np.ndarray) and run.ndim == 0)


def _aligned(runs: Sequence) -> tuple[list[np.ndarray], np.ndarray]:
    """Every run's outputs in one example order, and the labels they share; ValueError when runs differ in examples."""
    out, reference = [], None
    for number, run in enumerate(runs):
        if isinstance(run, Mapping):
            outputs, labels, index = np.asarray(run["outputs"]), np.asarray(run["labels"]), run.get("index")
        else:
            (outputs, labels), index = run, None
            outputs, labels = np.asarray(outputs), np.asarray(labels)
        if len(outputs) != len(labels):
            raise ValueError(f"run {number}: {len(outputs)} outputs for {len(labels)} labels")
        if index is not None:
            order = np.argsort(np.asarray(index), kind="stable")
            outputs, labels, index = outputs[order], labels[order], np.asarray(index)[order]
        key = (labels, index)
        if reference is None:
            reference = key
        elif len(labels) != len(reference[0]) or not np.array_equal(labels, reference[0]) or (
                index is not None and reference[1] is not None and not np.array_equal(index, reference[1])):
            raise ValueError(f"run {number} is not scored on the same examples as run 0 (labels or index differ): "
                             f"a paired bootstrap needs one dev set")
        out.append(outputs)
    return out, reference[0]
