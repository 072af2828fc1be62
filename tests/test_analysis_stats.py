"""analysis/maths/stats.py against known answers and SciPy: bootstrap coverage, equivalence that can hold, the
permutation test's floor at few seeds, and the four verdicts' edges. Fast: vectorised numpy, fixed RNG seeds."""

import numpy as np
import pytest
from scipy import stats as scipy_stats
from scipy.special import ndtr
from sklearn.metrics import f1_score, matthews_corrcoef

from analysis.maths.stats import (
    MARGINS,
    METRICS,
    _seed_resampled,
    difference_interval,
    margin_for,
    metric_on_resamples,
    paired_difference,
    permutation_pvalue,
    smallest_pvalue,
    verdict,
)


def simulated_arms(rng, mu_a, mu_b, seeds=5, examples=300, seed_sd=0.1):
    """Per-example correctness of two arms on the same examples: example i is right in run r of arm k when
    mu_k + u_kr + z_i + e_kri > 0 (z shared by both arms: the pairing; u: the seed; e: the rest), so each arm's
    expected accuracy is Φ(mu_k / √(2 + seed_sd²)) exactly."""
    z = rng.standard_normal(examples)
    labels = np.ones(examples, dtype=int)

    def arm(mu):
        u = seed_sd * rng.standard_normal((seeds, 1))
        return [(row.astype(int), labels) for row in (mu + u + z + rng.standard_normal((seeds, examples)) > 0)]

    truth = 100 * (ndtr(mu_a / np.sqrt(2 + seed_sd**2)) - ndtr(mu_b / np.sqrt(2 + seed_sd**2)))
    return arm(mu_a), arm(mu_b), truth


def test_metrics_on_the_data_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    labels, logits = rng.integers(0, 2, 300), rng.standard_normal((300, 2))
    predicted = logits.argmax(1)
    whole = np.arange(300)[None]
    assert metric_on_resamples("accuracy", logits, labels, whole)[0] == pytest.approx(100 * (predicted == labels).mean())
    assert metric_on_resamples("f1", logits, labels, whole)[0] == pytest.approx(100 * f1_score(labels, predicted))
    assert metric_on_resamples("matthews_correlation", predicted, labels, whole)[0] == pytest.approx(
        100 * matthews_corrcoef(labels, predicted))
    gold = rng.uniform(0, 5, 300)
    scores = (gold + rng.standard_normal(300)).round(1)[:, None]  # rounded: ties, which Spearman ranks by their mean
    assert metric_on_resamples("pearson", scores, gold, whole)[0] == pytest.approx(
        100 * scipy_stats.pearsonr(scores[:, 0], gold)[0])
    assert metric_on_resamples("spearman", scores, gold, whole)[0] == pytest.approx(
        100 * scipy_stats.spearmanr(scores[:, 0], gold)[0])
    assert metric_on_resamples("pearson", np.ones(300), gold, whole)[0] == 0  # constant: 0, as experiments/metrics
    with pytest.raises(ValueError, match="not recomputed per example"):
        metric_on_resamples("bleu", scores, gold, whole)


def test_the_interval_covers_the_true_difference_at_its_nominal_rate():
    rng = np.random.default_rng(1)
    covered = []
    for draw in range(200):
        a, b, truth = simulated_arms(rng, 0.9, 0.75)
        result = difference_interval(a, b, "accuracy", resamples=400, seed=draw)
        covered.append(result.low <= truth <= result.high)
    assert 0.93 <= np.mean(covered) <= 0.97


def test_crossed_seeds_and_examples_are_not_counted_twice():
    """Without the seed part's correction for each run's own luck (stats.py, (2)) the interval is too wide: the
    same simulated pairs give a larger width; with seeds all alike (seed_sd = 0) the seed part vanishes."""
    a, b, _ = simulated_arms(np.random.default_rng(8), 0.9, 0.75, seed_sd=0.0)
    corrected = difference_interval(a, b, "accuracy", resamples=2000)
    plain = difference_interval(a, b, "accuracy", resamples=2000, unbiased_seeds=False)
    assert corrected.high - corrected.low < plain.high - plain.low


def test_identical_distributions_with_enough_examples_are_equivalent():
    a, b, truth = simulated_arms(np.random.default_rng(2), 1.2, 1.2, seeds=5, examples=5000, seed_sd=0.02)
    result = difference_interval(a, b, "accuracy", resamples=500)
    assert truth == 0 and result.resampled == "seeds and examples" and result.examples == 5000
    assert -1 < result.low < 0 < result.high < 1 and verdict(result, MARGINS["accuracy"]) == "equivalent"


def test_three_seeds_with_a_wide_spread_are_inconclusive():
    result = difference_interval([0.80, 0.86, 0.83], [0.82, 0.78, 0.85], "accuracy")
    assert result.resampled == "seeds" and result.examples is None and result.estimate == pytest.approx(1.333, abs=1e-3)
    assert result.low < 0 < result.high and result.high - result.low > 4
    assert verdict(result, margin_for("accuracy")) == "inconclusive"
    assert result.p_min == 0.1 and result.p_value >= 0.1
    assert any("seeds only" in n for n in result.notes) and any("cannot go below 0.1" in n for n in result.notes)


def test_a_clear_gap_over_five_seeds_is_better_and_the_reverse_worse():
    a, b = [0.852, 0.861, 0.857, 0.866, 0.859], [0.821, 0.818, 0.829, 0.824, 0.815]
    result = difference_interval(a, b, "accuracy")
    assert verdict(result, 1.0) == "better" and result.p_value == pytest.approx(2 / 252)
    assert verdict(difference_interval(b, a, "accuracy"), 1.0) == "worse"


def test_permutation_p_of_three_against_three_is_never_below_005():
    rng = np.random.default_rng(3)
    draws = rng.standard_normal((300, 6)) * rng.uniform(0.1, 10, (300, 1)) + rng.uniform(-5, 5, (300, 1))
    p = [permutation_pvalue(row[:3], row[3:] + shift) for row, shift in zip(draws, rng.uniform(-20, 20, 300))]
    assert min(p) >= 0.1 and smallest_pvalue(3, 3) == 0.1
    assert permutation_pvalue([1, 2, 3], [10, 11, 12]) == pytest.approx(0.1)  # as far apart as can be: 2 of 20 splits
    assert permutation_pvalue([10, 11, 12, 13, 14], [1, 2, 3, 4, 5]) == pytest.approx(2 / 252)  # 5 vs 5 can: 0.008


def test_permutation_p_matches_scipy():
    rng = np.random.default_rng(4)
    for _ in range(5):
        a, b = rng.normal(0.3, 1, 5), rng.normal(0, 1, 5)
        reference = scipy_stats.permutation_test((a, b), lambda x, y: x.mean() - y.mean(), permutation_type="independent",
                                                 alternative="two-sided", n_resamples=np.inf)
        assert permutation_pvalue(a, b) == pytest.approx(reference.pvalue)
    a, b = rng.normal(0.5, 1, 12), rng.normal(0, 1, 12)  # C(24, 12) = 2.7M splits: sampled
    reference = scipy_stats.permutation_test((a, b), lambda x, y: x.mean() - y.mean(), permutation_type="independent",
                                             n_resamples=20_000, random_state=0)
    assert permutation_pvalue(a, b) == pytest.approx(reference.pvalue, abs=0.01)


def test_paired_runs_take_out_what_each_run_shares_and_the_sign_flip_p_is_scipys():
    rng = np.random.default_rng(5)
    run_effect = rng.normal(0, 5, 5)  # each trained model's own level: shared by its intervention and control
    a, b = 70 + run_effect + 0.8 + rng.normal(0, 0.1, 5), 70 + run_effect  # a 0.8-point gap, the same in every run
    paired, unpaired = paired_difference(a, b, "mean"), difference_interval(list(a), list(b), "mean")
    assert paired.low > 0.5 and paired.high < 1.1 and paired.resampled == "seeds, paired"
    assert unpaired.low < 0 < unpaired.high  # read as two independent arms, the runs' spread hides the gap
    reference = scipy_stats.permutation_test((a - b,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert paired.p_value == pytest.approx(reference.pvalue) == pytest.approx(2 / 32)  # five runs: 2 of 32 flips
    same = paired_difference([3.0, 4.0, 5.0], [2.0, 3.0, 4.0], "accuracy")  # fractions → points, a constant gap
    assert (same.low, same.estimate, same.high) == pytest.approx((100.0, 100.0, 100.0))
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 2.0], [1.0], "mean")


def test_one_run_a_side_is_scipys_paired_bootstrap_of_the_examples():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 800)
    a = np.where(rng.random(800) < 0.86, labels, 1 - labels)
    b = np.where(rng.random(800) < 0.82, labels, 1 - labels)
    ours = difference_interval([(a, labels)], [(b, labels)], "accuracy", resamples=4000)
    reference = scipy_stats.bootstrap(((a == labels) * 100.0, (b == labels) * 100.0), lambda x, y: x.mean() - y.mean(),
                                      paired=True, vectorized=False, method="percentile", n_resamples=4000,
                                      random_state=0).confidence_interval
    assert ours.estimate == pytest.approx(100 * ((a == labels).mean() - (b == labels).mean()))
    assert ours.low == pytest.approx(reference.low, abs=0.25) and ours.high == pytest.approx(reference.high, abs=0.25)
    assert sum("one seed in arm" in n for n in ours.notes) == 2


def test_seed_resampling_has_the_unbiased_variance():
    scores = np.array([[70.0], [74.0], [79.0]])
    replicates = _seed_resampled(scores, 200_000, np.random.default_rng(6), unbiased=True)
    assert replicates.mean() == pytest.approx(scores.mean(), abs=0.02)
    assert replicates.std() == pytest.approx(scores.std(ddof=1) / np.sqrt(3), rel=0.01)
    plug_in = _seed_resampled(scores, 200_000, np.random.default_rng(6), unbiased=False)
    assert plug_in.std() == pytest.approx(scores.std(ddof=0) / np.sqrt(3), rel=0.01)


def test_regression_runs_are_paired_by_their_index():
    rng = np.random.default_rng(7)
    gold = rng.uniform(0, 5, 400)
    runs = [{"outputs": (gold + rng.normal(0, s, 400))[:, None], "labels": gold, "index": np.arange(400)}
            for s in (0.8, 0.9, 1.0, 1.6, 1.7, 1.8)]
    shuffled = rng.permutation(400)  # the same examples in another order: aligned by index
    runs[4] = {key: value[shuffled] for key, value in runs[4].items()}
    result = difference_interval(runs[:3], runs[3:], "pearson", resamples=500)
    expected = np.mean([100 * scipy_stats.pearsonr(r["outputs"][:, 0], r["labels"])[0] for r in runs[:3]]) - np.mean(
        [100 * scipy_stats.pearsonr(r["outputs"][:, 0], r["labels"])[0] for r in runs[3:]])
    assert result.estimate == pytest.approx(expected) and result.low > 0 and result.examples == 400
    assert verdict(result, margin_for("pearson")) == "better"


def test_logits_of_a_classifier_are_read_as_its_classes():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 500)
    runs = [(np.eye(2)[np.where(rng.random(500) < p, labels, 1 - labels)] + 0.1 * rng.random((500, 2)), labels)
            for p in (0.9, 0.9, 0.9, 0.7, 0.7, 0.7)]
    result = difference_interval(runs[:3], runs[3:], "f1", resamples=300)
    f1 = [100 * f1_score(labels, outputs.argmax(1)) for outputs, _ in runs]
    assert result.estimate == pytest.approx(np.mean(f1[:3]) - np.mean(f1[3:])) and result.low > 10
    assert result.p_value == pytest.approx(0.1) and verdict(result, margin_for("f1")) == "better"


def test_runs_on_other_examples_or_mixed_inputs_are_refused():
    labels = np.array([0, 1, 1, 0])
    with pytest.raises(ValueError, match="not scored on the same examples"):
        difference_interval([(labels, labels)], [(labels, np.array([1, 0, 1, 0]))], "accuracy")
    with pytest.raises(ValueError, match="not a mix"):
        difference_interval([(labels, labels)], [0.8], "accuracy")
    with pytest.raises(ValueError, match="unknown metric"):
        difference_interval([0.8], [0.7], "bleu_4")
    with pytest.raises(KeyError, match="no margin fixed"):
        margin_for("eval_loss")


@pytest.mark.parametrize("interval, margin, expected", [
    ((-0.5, 0.8), 1.0, "equivalent"),
    ((-1.0, 1.0), 1.0, "equivalent"),     # ends on ±m count as inside
    ((0.2, 0.9), 1.0, "equivalent"),      # excludes 0 but within the margin: real and too small to matter
    ((0.2, 1.4), 1.0, "better"),          # excludes 0, reaches past +m
    ((1.5, 3.0), 1.0, "better"),
    ((-3.0, -0.1), 1.0, "worse"),
    ((0.0, 2.0), 1.0, "inconclusive"),    # an end on 0 does not exclude it
    ((-0.5, 2.0), 1.0, "inconclusive"),
    ((-2.0, 2.0), 1.0, "inconclusive"),
    ((0.0, 0.0), 0.0, "equivalent"),
    ((0.1, 0.2), 0.0, "better"),
])
def test_the_four_verdicts_and_their_edges(interval, margin, expected):
    assert verdict(interval, margin) == expected


def test_verdict_refuses_what_is_not_an_interval():
    for interval, margin in (((1.0, 0.0), 1.0), ((float("nan"), 1.0), 1.0), ((0.0, 1.0), -1.0)):
        with pytest.raises(ValueError):
            verdict(interval, margin)


def test_every_margin_has_a_metric_and_points_are_the_unit():
    assert set(MARGINS) <= set(METRICS)
    assert MARGINS["matthews_correlation"] == 2 * MARGINS["accuracy"] == 2.0
    assert {MARGINS[m] for m in ("accuracy", "f1", "pearson", "spearman")} == {1.0}
