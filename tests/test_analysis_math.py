"""The analysis maths against known answers and against SciPy (Hu et al. 2021, §7)."""

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import low_rank, one_thread  # noqa: F401 (one_thread: an autouse fixture)

from analysis import (
    delta_overlap,
    delta_vs_weight,
    expected_random_similarity,
    intruder_dimensions,
    lora_subspace_similarity,
    parse_module,
    random_subspace_similarity,
    spectrum,
    subspace_similarity,
    top_singular_vectors,
)


def orthonormal(d: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=gen, dtype=torch.float64))
    return q


# ---------------------------------------------------------------------------------------------- subspace similarity


def test_phi_of_a_subspace_with_itself_is_one_on_the_diagonal():
    u = orthonormal(40, 12, seed=0)
    phi = subspace_similarity(u, u)
    assert phi.shape == (12, 12)
    assert torch.allclose(phi.diagonal(), torch.ones(12, dtype=torch.float64), atol=1e-12)
    # nested spans: span(U[:, :i]) ⊆ span(U[:, :j]) for i ≤ j, so φ = 1 on and above the diagonal too
    assert torch.allclose(phi.triu(), torch.ones(12, 12, dtype=torch.float64).triu(), atol=1e-12)


def test_phi_of_orthogonal_spans_is_zero():
    q = orthonormal(30, 10, seed=1)
    phi = subspace_similarity(q[:, :4], q[:, 4:])
    assert phi.shape == (4, 6)
    assert phi.abs().max() < 1e-12


def test_phi_grid_equals_mean_cos2_of_scipy_principal_angles():
    u1, u2 = orthonormal(50, 8, seed=2), orthonormal(50, 16, seed=3)
    phi = subspace_similarity(u1, u2)
    for i, j in [(1, 1), (1, 16), (3, 5), (8, 2), (8, 16), (5, 5)]:
        angles = scipy.linalg.subspace_angles(u1[:, :i].numpy(), u2[:, :j].numpy())
        assert len(angles) == min(i, j)
        assert phi[i - 1, j - 1].item() == pytest.approx(np.mean(np.cos(angles) ** 2), abs=1e-10)
    assert 0.0 <= phi.min() and phi.max() <= 1.0


def test_lora_similarity_compares_the_row_spaces_of_a():
    gen = torch.Generator().manual_seed(4)
    a8 = torch.randn(8, 64, generator=gen)
    # an r=16 A whose top rows span A_8's row space (plus noise-free extra directions): φ(i=8, j=16) = 1
    a16 = torch.cat([3.0 * torch.randn(8, 8, generator=gen) @ a8, torch.randn(8, 64, generator=gen)])
    phi = lora_subspace_similarity(a8, a16)
    assert phi.shape == (8, 16)
    assert phi[7, 15].item() == pytest.approx(1.0, abs=1e-9)
    ref = scipy.linalg.subspace_angles(a8.double().T.numpy(), a16.double().T.numpy())
    assert phi[7, 15].item() == pytest.approx(np.mean(np.cos(ref) ** 2), abs=1e-9)


def test_random_gaussian_baseline_is_near_r_over_d():
    phi = random_subspace_similarity((8, 256), (8, 256), seed=0)
    assert phi.shape == (8, 8)
    assert phi[-1, -1].item() == pytest.approx(expected_random_similarity(8, 256), abs=0.03)


def test_subspace_similarity_rejects_non_orthonormal_input():
    with pytest.raises(ValueError, match="orthonormal"):
        subspace_similarity(torch.randn(10, 3), orthonormal(10, 3, seed=0))


def test_delta_overlap_of_an_update_with_itself_is_one_and_random_is_small():
    d = low_rank(64, 48, 4, seed=5)
    assert delta_overlap(d, 2.0 * d, 4) == pytest.approx(1.0, abs=1e-9)
    assert delta_overlap(d, low_rank(64, 48, 4, seed=6), 4, "right") < 0.4


# ---------------------------------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("r", [1, 3, 7])
def test_rank_r_delta_has_r_nonzero_singular_values_and_full_energy_at_r(r):
    spec = spectrum(low_rank(32, 24, r, seed=r))
    assert spec.numerical_rank == r
    assert spec.energy_rank(1.0) == r
    assert spec.rank90 <= r
    assert spec.singular_values[r:].abs().max() < 1e-4 * spec.singular_values[0]
    assert torch.allclose(spec.singular_values, torch.as_tensor(scipy.linalg.svdvals(
        low_rank(32, 24, r, seed=r).double().numpy())), atol=1e-8)  # fmt: skip


def test_energy_effective_rank_known_answers():
    spec = spectrum(torch.diag(torch.tensor([3.0, 4.0, 0.0])))
    assert spec.singular_values.tolist() == pytest.approx([4.0, 3.0, 0.0])
    assert spec.energy.tolist() == pytest.approx([16 / 25, 1.0, 1.0])
    assert spec.energy_rank(0.5) == 1 and spec.energy_rank(0.9) == 2
    p = np.array([4, 3]) / 7
    assert spec.effective_rank == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert spectrum(torch.eye(5)).effective_rank == pytest.approx(5.0)
    zero = spectrum(torch.zeros(4, 3))
    assert zero.numerical_rank == 0 and zero.energy_rank(0.9) == 0 and zero.effective_rank == 0.0


def test_top_singular_vectors_are_orthonormal_and_match_the_svd():
    m = torch.randn(20, 12, generator=torch.Generator().manual_seed(7))
    left, right = top_singular_vectors(m, 5, "left"), top_singular_vectors(m, 5, "right")
    assert left.shape == (20, 5) and right.shape == (12, 5)
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.allclose(left.T @ left, eye, atol=1e-12) and torch.allclose(right.T @ right, eye, atol=1e-12)
    s = torch.linalg.svdvals(m.double())
    assert torch.allclose((left.T @ m.double() @ right).diagonal(), s[:5], atol=1e-10)
    with pytest.raises(ValueError, match="side"):
        top_singular_vectors(m, 2, "up")
    with pytest.raises(ValueError, match="k must be"):
        top_singular_vectors(m, 13)


# ---------------------------------------------------------------------------------------------------- ΔW vs W


def test_amplification_small_in_ws_top_subspace_and_large_for_random():
    gen = torch.Generator().manual_seed(8)
    d, r = 128, 4
    u, _, vh = torch.linalg.svd(torch.randn(d, d, generator=gen, dtype=torch.float64))
    w = u @ torch.diag(torch.logspace(2, -2, d, dtype=torch.float64)) @ vh  # strongly decaying spectrum
    aligned = u[:, :r] @ vh[:r]  # ‖ΔW‖_F = 2, in W's top-r subspace
    random = torch.randn(d, d, generator=gen, dtype=torch.float64)
    random = random / torch.linalg.matrix_norm(random) * 2.0  # same norm, random directions
    p_aligned, p_random = delta_vs_weight(aligned, w, r), delta_vs_weight(random, w, r)
    assert p_aligned.proj_delta == pytest.approx(p_aligned.proj_weight)  # ΔW's top directions are W's
    assert p_aligned.amplification < 0.02
    assert p_random.amplification > 10 * p_aligned.amplification
    assert p_random.proj_delta < p_random.proj_weight / 5
    s = torch.linalg.svdvals(w)
    assert p_random.proj_weight == pytest.approx(float(s[:r].square().sum().sqrt()))
    assert p_random.weight_norm == pytest.approx(float(torch.linalg.matrix_norm(w)))
    assert p_random.delta_norm == pytest.approx(2.0)
    assert p_aligned.as_dict()["amplification"] == pytest.approx(p_aligned.amplification)


# ---------------------------------------------------------------------------------------------------- intruders


def test_intruders_found_for_a_new_direction_not_for_rescaling():
    gen = torch.Generator().manual_seed(9)
    d = 200
    u, _, vh = torch.linalg.svd(torch.randn(d, d, generator=gen, dtype=torch.float64))
    w0 = u @ torch.diag(torch.linspace(10, 1, d, dtype=torch.float64)) @ vh
    x = torch.randn(d, 1, generator=gen, dtype=torch.float64)
    y = torch.randn(1, d, generator=gen, dtype=torch.float64)
    # a strong random direction: |cos| with each of W₀'s 200 singular vectors is about 1/√200, so it intrudes
    intruding = w0 + 50.0 * (x / x.norm()) @ (y / y.norm())
    found = intruder_dimensions(w0, intruding, k=5, threshold=0.5)
    assert found.count == 1 and found.ranks == [1]
    assert found.max_cosine[1:].min() > 0.5
    assert intruder_dimensions(w0, 1.1 * w0, k=5, threshold=0.5).count == 0


# ---------------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name,layer,kind", [
    ("bert.encoder.layer.3.attention.self.query", 3, "q"),
    ("roberta.encoder.layer.11.attention.self.value", 11, "v"),
    ("bert.encoder.layer.0.attention.output.dense", 0, "o"),
    ("bert.encoder.layer.5.intermediate.dense", 5, "ffn_in"),
    ("bert.encoder.layer.5.output.dense", 5, "ffn_out"),
    ("deberta.encoder.layer.2.attention.self.key_proj", 2, "k"),
    ("model.layers.7.self_attn.o_proj", 7, "o"),
    ("classifier", None, "classifier"),
])  # fmt: skip
def test_parse_module(name, layer, kind):
    mid = parse_module(name)
    assert (mid.layer, mid.kind) == (layer, kind)
