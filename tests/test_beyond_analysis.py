"""Beyond the paper, the maths (issue 23), on known answers: the energy allocation, φ of G₀ with LoRA factors, the
intruder intervention, and λ_max by power iteration."""

import math

import pandas as pd
import pytest
import torch

from analysis.maths.alignment import delta_alignment, factor_alignment, gradient_bases
from analysis.maths.allocation import allocate_ranks, energy_allocation, uniform_budget
from analysis.maths.intruders import control_positions, intruder_dimensions, scale_directions
from analysis.maths.sharpness import spearman, spearman_interval, top_hessian_eigenvalue
from analysis.maths.subspace import subspace_overlap


def with_spectrum(out: int, inp: int, sigmas, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, len(sigmas), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, len(sigmas), generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(sigmas, dtype=torch.float64)) @ v.T


# --- where should the rank go -----------------------------------------------------------------------------------

def test_energy_needs_and_budget():
    flat = with_spectrum(16, 16, [1.0] * 8, 0)  # 8 equal directions: 90% energy needs 8 (7.2 → 8)
    steep = with_spectrum(16, 16, [3.0, 1.0], 1)  # 9 / 10 of the energy in one direction
    needs, ranks = energy_allocation({"flat": flat, "steep": steep}, 0.9, uniform_budget({"a": (16, 16)}, 9))
    assert needs == {"flat": 8, "steep": 1}
    assert ranks == {"flat": 8, "steep": 1}  # 9 ranks of 32 parameters: exactly r=9 on one module's budget


def test_allocation_is_proportional_and_within_budget():
    shapes = {f"m{i}": (32, 32) for i in range(4)}
    budget = uniform_budget(shapes, 4)  # 16 ranks in all
    ranks = allocate_ranks({"m0": 1, "m1": 2, "m2": 4, "m3": 9}, shapes, budget)
    assert sum(r * 64 for r in ranks.values()) <= budget and sum(ranks.values()) == 16
    assert ranks["m0"] <= ranks["m1"] <= ranks["m2"] <= ranks["m3"] and ranks["m0"] >= 1
    assert allocate_ranks({"m0": 1, "m1": 1, "m2": 1, "m3": 1}, shapes, budget) == {m: 4 for m in shapes}
    with pytest.raises(ValueError, match="below rank 1 on every module"):
        allocate_ranks({"m0": 1, "m1": 1, "m2": 1, "m3": 1}, shapes, 100)


# --- where do LoRA's directions come from ------------------------------------------------------------------------

def test_factors_spanning_g0s_subspaces_give_phi_one_and_orthogonal_zero():
    g0 = with_spectrum(12, 10, [5.0, 4.0, 3.0, 2.0, 1.0], 2)
    u, v = gradient_bases(g0, 2)
    mix = torch.tensor([[2.0, 1.0], [0.5, -1.0]], dtype=torch.float64)  # any invertible mix spans the same subspace
    assert factor_alignment(g0, mix @ v.T, u @ mix, 2) == pytest.approx({"column": 1.0, "row": 1.0}, abs=1e-10)
    full_u, _, full_vh = torch.linalg.svd(g0)
    B_off, A_off = full_u[:, 2:4], full_vh[2:4]  # G₀'s 3rd and 4th directions: orthogonal to its top 2
    assert factor_alignment(g0, A_off, B_off, 2) == pytest.approx({"column": 0.0, "row": 0.0}, abs=1e-10)
    assert delta_alignment(g0, g0 * 3.0, 3) == pytest.approx({"column": 1.0, "row": 1.0}, abs=1e-10)
    assert subspace_overlap(u, u) == pytest.approx(1.0)


# --- what do intruder dimensions cost ----------------------------------------------------------------------------

def intruded(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(W₀ full rank, W = W₀ + 10·u vᵀ) with u, v even mixes of five of W₀'s singular directions (|cos| = 1/√5 < ε)."""
    base = with_spectrum(20, 20, torch.linspace(4.0, 0.2, 20).tolist(), seed)
    u0, _, vh0 = torch.linalg.svd(base)
    u, v = u0[:, 10:15].sum(1) / math.sqrt(5), vh0[10:15].sum(0) / math.sqrt(5)
    return base, base + 10.0 * torch.outer(u, v)


def test_scaling_a_rank1_intruder_by_zero_removes_exactly_that_direction():
    base, tuned = intruded()
    found = intruder_dimensions(base, tuned, k=3, threshold=0.5)
    assert found.ranks == [1]
    u, s, vh = torch.linalg.svd(tuned)
    removed = scale_directions(tuned, found.ranks, 0.0)
    torch.testing.assert_close(removed @ vh[0], torch.zeros(20, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.linalg.svdvals(removed)[:19], s[1:], atol=1e-10, rtol=0)  # the rest untouched
    half = scale_directions(tuned, found.ranks, 0.5)
    torch.testing.assert_close(torch.linalg.svdvals(half), torch.sort(torch.cat([s[1:], s[:1] / 2]), descending=True)[0],
                               atol=1e-10, rtol=0)
    assert control_positions(found) == [2]  # as many top non-intruders, the highest first
    torch.testing.assert_close(scale_directions(tuned, [], 0.0), tuned)


def test_scaling_to_zero_restores_w0_when_the_intruder_is_orthogonal_to_it():
    base = with_spectrum(20, 20, [4.0, 3.0, 2.0, 1.0], 3)  # rank 4: directions outside it exist
    u0, _, vh0 = torch.linalg.svd(base)
    tuned = base + 10.0 * torch.outer(u0[:, 10], vh0[10])
    torch.testing.assert_close(scale_directions(tuned, [1], 0.0), base, atol=1e-10, rtol=0)


def test_peft_reduce_intruder_dimension_is_this_intervention_cut_to_the_adapter_rank():
    """PEFT's mitigation finds the same intruders (top_k=10, ε=0.5 on W₀ + ΔW's left vectors), scales them to the
    same λ·σ, then re-factors W' − W₀ at the adapter's rank: its result is W₀ + best rank-r approximation of ours − W₀."""
    peft = pytest.importorskip("peft")
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    base, _ = intruded()
    u0, _, vh0 = torch.linalg.svd(base)
    model = torch.nn.Sequential(torch.nn.Linear(20, 20, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(base)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=2, target_modules=["0"]))
    layer = peft_model.base_model.model[0]
    with torch.no_grad():  # ΔW = 10·u vᵀ + 6·u' v'ᵀ, rank 2, both even mixes of W₀'s directions
        layer.lora_A["default"].weight.copy_(torch.stack([vh0[10:15].sum(0), vh0[2:7].sum(0)]) / math.sqrt(5))
        layer.lora_B["default"].weight.copy_(torch.stack([u0[:, 10:15].sum(1) * 10, u0[:, 2:7].sum(1) * 6], 1) / math.sqrt(5))
    tuned = base + layer.get_delta_weight("default")
    found = intruder_dimensions(base, tuned)
    assert found.count >= 1
    ours = scale_directions(tuned, found.ranks, 0.25)
    reduce_intruder_dimension(peft_model, mitigation_lambda=0.25, logging_sink=None)
    theirs = base + layer.get_delta_weight("intruder_reduced")
    u, s, vh = torch.linalg.svd(ours - base)
    assert float(s[2]) > 0.05  # ours − W₀ has rank 4 > r: the cut is a real difference
    torch.testing.assert_close(theirs, base + (u[:, :2] * s[:2]) @ vh[:2], atol=1e-8, rtol=0)
    assert float(torch.linalg.matrix_norm(theirs - ours)) == pytest.approx(float(s[2:].norm()), rel=1e-6)


# --- sharpness ---------------------------------------------------------------------------------------------------

def test_lanczos_on_a_quadratic_returns_its_top_eigenvalue():
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    eigenvalues = torch.tensor([7.0, 3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    hessian = q @ torch.diag(eigenvalues) @ q.T
    a = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)  # θ in two tensors: the vector is their concat
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(6, generator=g, dtype=torch.float64)

    def loss():  # ½ (a − c)ᵀ H (a − c) + Σ b: b enters linearly, so the 9 × 9 Hessian is diag(H, 0)
        x = a.flatten() - shift
        return 0.5 * x @ hessian @ x + b.sum()

    found = top_hessian_eigenvalue(loss, [a, b], iterations=200, tol=1e-10)
    assert found.converged and found.value == pytest.approx(7.0, rel=1e-6) and found.iterations <= 9


def test_lanczos_reads_the_top_of_an_indefinite_hessian_and_its_residual_bounds_the_error():
    g = torch.Generator().manual_seed(5)
    n = 400  # large enough that Lanczos stops well before n steps
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.cat([torch.tensor([3.0, 2.5, -7.0], dtype=torch.float64),
                             torch.linspace(-1.0, 1.0, n - 3, dtype=torch.float64)])
    hessian = q @ torch.diag(eigenvalues) @ q.T
    theta = torch.zeros(n, dtype=torch.float64, requires_grad=True)

    found = top_hessian_eigenvalue(lambda: 0.5 * theta @ hessian @ theta, [theta], iterations=100, tol=1e-6)
    assert found.converged and found.iterations < 100
    assert abs(found.value - 3.0) <= found.residual + 1e-12 and found.value == pytest.approx(3.0, rel=1e-6)
    assert found.value <= 3.0 + 1e-9  # a Ritz value never passes the top eigenvalue


def test_spearman_and_its_interval():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # SciPy's, with the tie
    rho, interval = spearman_interval([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5], draws=500)
    assert rho == pytest.approx(0.8285714285714285) and interval.lo <= rho <= interval.hi <= 1.0
    assert not math.isnan(interval.mean)


def test_best_rates_take_the_confirmed_rate_with_the_highest_median(tmp_path):
    from analysis.tables.sharpness import best_rates

    rows = ["task,config,budget,lr,score,score min,score max,seeds,verdict",
            "sst2,LoRA,2k x 1,0.001,76.6,75.9,77.2,3,x", "sst2,LoRA,2k x 1,0.0027,77.6,76.8,78.8,3,x",
            "sst2,LoRA,2k x 1,0.008,79.0,79.0,79.0,1,search trial",  # one seed: not confirmed
            "sst2,full FT,2k x 1,5e-05,77.3,74.9,77.4,3,x", "sst2,full FT,2k x 1,0.00027,81.1,81.0,81.1,3,x",
            "sst2,full FT,2k x 2,5e-05,90.0,90.0,90.0,3,x", "mrpc,LoRA,2k x 1,0.1,99.0,99.0,99.0,3,x"]
    (tmp_path / "lr.csv").write_text("\n".join(rows) + "\n")
    best = best_rates(tmp_path / "lr.csv", "sst2").set_index("config")["best lr"].to_dict()
    assert best == {"LoRA": 0.0027, "full FT": 0.00027}  # at the budget where most configurations were confirmed


def test_each_searched_configuration_is_rebuilt_from_its_folder_or_its_recorded_overrides():
    from analysis.tables.sharpness import best_rates, searched_configurations

    summary = pd.DataFrame({"task": "sst2", "config": ["LoRA", "full FT"], "budget": "2k x 1", "lr": [1e-3, 3e-4],
                            "score": [77.0, 81.0], "seeds": 3})
    trials = pd.DataFrame({"config": ["LoRA", "LoRA", "full FT"], "budget": "2k x 1", "seed": [1, 0, 0],
                           "run": ["lr/method=lora,seed=1,train.lr=0.001", "lr/method=lora,seed=0,train.lr=0.001",
                                   "confirm/method=full,seed=0,task=sst2,train.full_lr=0.0003,model.head=[a,b]"]})
    sources = searched_configurations(trials, best_rates(summary, "sst2"), {"lr/method=lora,seed=0,train.lr=0.001":
                                                                           "/runs/lora0"})  # fmt: skip
    assert sources == {"LoRA": "/runs/lora0",  # a folder where one exists
                       "full FT": ["method=full", "task=sst2", "model.head=[a,b]", "seed=0"]}  # else its overrides


def test_lanczos_finds_the_top_eigenvalue_of_a_small_indefinite_hessian():
    """The dominant eigenvalue is −7, the top one 3 (LoRA at B = 0 is indefinite so): Lanczos reads 3 directly."""
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    hessian = q @ torch.diag(torch.tensor([3.0, 1.0, 0.5, -2.0, -7.0], dtype=torch.float64)) @ q.T
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    found = top_hessian_eigenvalue(lambda: 0.5 * x @ hessian @ x, [x], iterations=500, tol=1e-12)
    assert found.converged and found.value == pytest.approx(3.0, rel=1e-6)
