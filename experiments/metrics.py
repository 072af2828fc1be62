"""GLUE dev-set metrics (Wang et al. 2019), computed with scikit-learn and SciPy.

accuracy (SST-2, QNLI, RTE, MNLI matched / mismatched); accuracy and F1 of the positive class (MRPC, QQP); Matthews
correlation (CoLA); Pearson and Spearman correlation (STS-B, a regression).
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _classes(outputs: np.ndarray) -> np.ndarray:
    return outputs if outputs.ndim == 1 else outputs.argmax(axis=-1)


def _scores(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(-1) if outputs.ndim > 1 else outputs


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda out, y: accuracy_score(y, _classes(out)),
    "f1": lambda out, y: f1_score(y, _classes(out)),
    "matthews_correlation": lambda out, y: matthews_corrcoef(y, _classes(out)),
    "pearson": lambda out, y: pearsonr(_scores(out), y)[0],
    "spearman": lambda out, y: spearmanr(_scores(out), y)[0],
}


def glue_metrics(names: Sequence[str], outputs, labels, suffix: str = "") -> dict[str, float]:
    """Compute the named metrics of one eval split.

    Args:
        names: keys of METRICS, e.g. ``["accuracy", "f1"]``.
        outputs: logits (n × classes) or predicted classes (n,) for classification; scores (n,) or (n × 1) for
            regression.
        labels: gold classes or scores (n,).
        suffix: appended to every name (MNLI's mismatched split: ``"_mm"``).
    """
    outputs, labels = np.asarray(outputs), np.asarray(labels)
    if len(outputs) != len(labels):
        raise ValueError(f"{len(outputs)} predictions for {len(labels)} labels")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
    # A constant prediction leaves a correlation undefined; it counts as 0, no correlation, as scikit-learn's Matthews
    # correlation already does, so an epoch that predicts one class never wins "best" by a NaN comparison.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return {f"{n}{suffix}": float(np.nan_to_num(METRICS[n](outputs, labels))) for n in names}
