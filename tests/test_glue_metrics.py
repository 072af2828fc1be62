"""GLUE metrics against values worked out by hand on fixed predictions."""

import math

import numpy as np
import pytest

from experiments.metrics import glue_metrics

# labels 1 0 0 1 1, predictions 1 0 1 1 0: TP = 2, TN = 1, FP = 1, FN = 1.
LABELS = [1, 0, 0, 1, 1]
PREDICTIONS = [1, 0, 1, 1, 0]


def test_accuracy_f1_and_matthews_by_hand():
    got = glue_metrics(["accuracy", "f1", "matthews_correlation"], PREDICTIONS, LABELS)
    assert got["accuracy"] == pytest.approx(3 / 5)
    assert got["f1"] == pytest.approx(2 / 3)  # precision = recall = 2/3
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 − 1) / sqrt(3·3·2·2)
    assert got["matthews_correlation"] == pytest.approx(1 / 6)


def test_logits_are_argmaxed():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5], [-3.0, 3.0], [1.0, 0.0]])
    assert glue_metrics(["accuracy"], logits, LABELS) == glue_metrics(["accuracy"], PREDICTIONS, LABELS)


def test_three_classes_with_mismatched_suffix():
    logits = np.eye(3)[[0, 1, 2, 2]]
    assert glue_metrics(["accuracy"], logits, [0, 1, 2, 1], suffix="_mm") == {"accuracy_mm": 0.75}


def test_pearson_and_spearman_by_hand():
    scores = np.array([[1.0], [2.0], [3.0], [4.0]])  # a regression head's (n × 1) output
    got = glue_metrics(["pearson"], scores, [2.0, 4.0, 5.0, 9.0])
    # deviations (−1.5, −.5, .5, 1.5) and (−3, −1, 0, 4): Σxy = 11, Σx² = 5, Σy² = 26
    assert got["pearson"] == pytest.approx(11 / math.sqrt(5 * 26))
    # ranks (1, 2, 3, 4) and (1, 4, 3, 2): Σd² = 8, ρ = 1 − 6·8 / (4·15)
    assert glue_metrics(["spearman"], scores, [2.0, 9.0, 5.0, 4.0])["spearman"] == pytest.approx(0.2)


def test_constant_prediction_counts_as_no_correlation():
    assert glue_metrics(["pearson", "matthews_correlation"], [1, 1, 1], [0, 1, 1]) == {
        "pearson": 0.0,
        "matthews_correlation": 0.0,
    }


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown metric"):
        glue_metrics(["bleu"], PREDICTIONS, LABELS)
    with pytest.raises(ValueError, match="4 predictions for 5 labels"):
        glue_metrics(["accuracy"], PREDICTIONS[:4], LABELS)
