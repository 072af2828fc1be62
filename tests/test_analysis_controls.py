"""The controls and the direct test, against known answers: truncation (Eckart–Young), random-direction intervals,
noise floors, matched-norm intruders, how far A moved from its init."""

import math

import pytest
import torch
from helpers import low_rank, one_thread  # noqa: F401 (one_thread: an autouse fixture)

from analysis.maths import (
    best_rank_k,
    delta_row_space_similarity,
    delta_vs_weight,
    doubling_ranks,
    factor_drift,
    intruder_dimensions,
    intruders_at_norm,
    noise_floor,
    percentile_interval,
    random_orthonormal,
    random_projection,
    signal_rank,
    truncate_deltas,
    truncation_error,
)


# ---------------------------------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("k", [1, 3, 6])
def test_truncating_a_rank_k_delta_at_k_leaves_it_and_at_k_minus_1_does_not(k):
    d = low_rank(40, 24, k, seed=k)
    assert best_rank_k(d, k).dtype == torch.float32
    assert torch.allclose(best_rank_k(d, k), d, atol=1e-4 * float(d.abs().max()))
    assert truncation_error(d, k) < 1e-6
    if k > 1:
        s = torch.linalg.svdvals(d.double())
        cut = best_rank_k(d, k - 1).double()
        # Eckart–Young: the error of the best rank-(k-1) approximation is exactly the dropped σ_k
        assert float(torch.linalg.matrix_norm(d.double() - cut)) == pytest.approx(float(s[k - 1]), rel=1e-5)
        assert torch.linalg.matrix_rank(best_rank_k(d, k - 1)).item() == k - 1  # rank judged at float32 rounding
        assert truncation_error(d, k - 1) == pytest.approx(float(s[k - 1] / s.norm()), rel=1e-5)


def test_truncation_refuses_a_rank_above_the_matrix_and_truncates_every_module():
    with pytest.raises(ValueError, match=r"truncation rank k must be an integer in \[1, 24\]"):
        best_rank_k(low_rank(40, 24, 2, seed=0), 25)
    deltas = {"a": low_rank(8, 6, 3, seed=1), "b": low_rank(6, 6, 5, seed=2)}
    cut = truncate_deltas(deltas, 2)
    assert {n: int(torch.linalg.matrix_rank(d)) for n, d in cut.items()} == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="ΔW of a"):
        truncate_deltas(deltas, 7)
    assert doubling_ranks(384) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 384] and doubling_ranks(4) == [1, 2, 4]


# ---------------------------------------------------------------------------------------------------- random interval


def test_random_orthonormal_is_orthonormal_and_reproducible():
    q = random_orthonormal(30, 4, torch.Generator().manual_seed(3), batch=5)
    assert q.shape == (5, 30, 4)
    assert torch.allclose(q.transpose(1, 2) @ q, torch.eye(4, dtype=torch.float64).expand(5, 4, 4), atol=1e-12)
    assert torch.equal(q, random_orthonormal(30, 4, torch.Generator().manual_seed(3), batch=5))


def test_random_interval_is_reproducible_and_matches_its_expectation():
    w = torch.randn(48, 32, generator=torch.Generator().manual_seed(0))
    a, b = random_projection(w, 4, draws=200, seed=7), random_projection(w, 4, draws=200, seed=7)
    assert a == b and a.draws == 200 and a.level == 0.95
    assert random_projection(w, 4, draws=200, seed=8) != a
    assert a.lo < a.mean < a.hi
    # E‖UᵀWV‖²_F = r²‖W‖²_F / (out·in) for Haar U, V
    expected = 4**2 * float(torch.linalg.matrix_norm(w.double())) ** 2 / (48 * 32)
    norms2 = torch.linalg.matrix_norm(
        random_orthonormal(48, 4, g := torch.Generator().manual_seed(1), batch=2000).transpose(1, 2) @ w.double()
        @ random_orthonormal(32, 4, g, batch=2000)).square()  # fmt: skip
    assert float(norms2.mean()) == pytest.approx(expected, rel=0.08)


def test_percentile_interval_known_answer():
    iv = percentile_interval(torch.arange(101.0), level=0.9)
    assert (iv.mean, iv.lo, iv.hi, iv.draws) == pytest.approx((50.0, 5.0, 95.0, 101))
    assert iv.position(95.1) == "above" and iv.position(94.9) == "within" and iv.position(4) == "below"
    with pytest.raises(ValueError, match="two or more"):
        percentile_interval(torch.tensor([1.0]))


def test_delta_in_ws_top_directions_is_above_the_random_interval_and_a_random_delta_is_not():
    gen = torch.Generator().manual_seed(8)
    d = 64
    u, _, vh = torch.linalg.svd(torch.randn(d, d, generator=gen, dtype=torch.float64))
    w = u @ torch.diag(torch.logspace(1, -1, d, dtype=torch.float64)) @ vh
    aligned = delta_vs_weight(u[:, :4] @ vh[:4], w, 4, draws=100)
    assert aligned.versus_random == "above"
    lo, hi = aligned.amplification_random
    assert aligned.amplification < lo <= hi  # ΔW's amplification lies outside what random directions give
    # ΔWs with random directions land within the 95% interval about 95% of the time
    positions = [delta_vs_weight(torch.randn(d, d, generator=gen, dtype=torch.float64), w, 4, random=aligned.random)
                 for _ in range(60)]  # fmt: skip
    assert positions[0].random is aligned.random
    assert sum(p.versus_random == "within" for p in positions) >= 51  # P(fewer) < 1e-3 at p = 0.95


# ---------------------------------------------------------------------------------------------------- noise floor


def test_noise_floor_of_two_identical_updates_is_zero_and_all_rank_is_signal():
    d = low_rank(32, 20, 5, seed=4)
    floor = noise_floor(d, d.clone())
    assert floor.abs().max() == 0
    assert signal_rank(d, floor) == 5  # σ above the floor's σ₁ = 0 and above rounding: the 5 real ones


def test_signal_rank_counts_singular_values_above_the_floors_top_one():
    delta = torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5]))
    floor = torch.diag(torch.tensor([2.0, 0.1, 0.0, 0.0]))
    assert signal_rank(delta, floor) == 2
    n1, n2 = torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0]))
    expected = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64)) / math.sqrt(2)
    assert torch.allclose(noise_floor(n1, n2), expected)
    with pytest.raises(ValueError, match="one shape"):
        signal_rank(delta, torch.zeros(3, 3))


# ---------------------------------------------------------------------------------------------------- intruders


def test_matched_norm_intruders_do_not_depend_on_the_size_of_the_update():
    gen = torch.Generator().manual_seed(9)
    d = 60
    u, _, vh = torch.linalg.svd(torch.randn(d, d, generator=gen, dtype=torch.float64))
    w0 = u @ torch.diag(torch.linspace(10, 1, d, dtype=torch.float64)) @ vh
    x, y = torch.randn(d, 1, generator=gen, dtype=torch.float64), torch.randn(1, d, generator=gen, dtype=torch.float64)
    delta = (x / x.norm()) @ (y / y.norm())
    raw_small = intruder_dimensions(w0, w0 + 0.01 * delta, k=5)
    raw_big = intruder_dimensions(w0, w0 + 100.0 * delta, k=5)
    assert raw_small.count == 0 and raw_big.count == 1  # raw counts follow the size
    at = [intruders_at_norm(w0, c * delta, 30.0, k=5) for c in (0.01, 1.0, 100.0)]
    assert [i.count for i in at] == [1, 1, 1]
    assert torch.allclose(at[0].max_cosine, at[2].max_cosine, atol=1e-9)
    with pytest.raises(ValueError, match="zero ΔW"):
        intruders_at_norm(w0, torch.zeros(d, d), 1.0)


# ---------------------------------------------------------------------------------------------------- A vs its init


def test_factor_drift_known_answers():
    gen = torch.Generator().manual_seed(5)
    a0 = torch.randn(4, 50, generator=gen)
    same = factor_drift(a0, a0)
    assert same.relative_change == 0.0 and same.similarity == pytest.approx(1.0)
    rotated = factor_drift(torch.randn(4, 4, generator=gen) @ a0, a0)  # new rows in the same row space
    assert rotated.similarity == pytest.approx(1.0) and rotated.relative_change > 0
    q = torch.linalg.qr(torch.randn(50, 8, generator=gen))[0].T
    away = factor_drift(q[4:], q[:4])  # orthogonal row spaces of equal norm
    assert away.similarity == pytest.approx(0.0, abs=1e-12) and away.relative_change == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="A0 is zero"):
        factor_drift(a0, torch.zeros_like(a0))


def test_delta_row_space_similarity_sees_the_shared_input_directions():
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(2, 30, generator=gen)
    d_lo = torch.randn(20, 2, generator=gen) @ a
    d_hi = torch.randn(20, 6, generator=gen) @ torch.cat([a, torch.randn(4, 30, generator=gen)])
    phi = delta_row_space_similarity(d_lo, d_hi, 2, 6)
    assert phi.shape == (2, 6) and phi[1, 5] == pytest.approx(1.0, abs=1e-9)
