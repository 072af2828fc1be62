"""Where should the rank go? A per-module rank from a measurement, at a fixed parameter budget (issue 23, beyond the
paper).

Given a matrix M_m per adapted module m (a full fine-tune's ΔW, or G₀ = ∂L/∂W at the pretrained weights) with
singular values σ₁ ≥ σ₂ ≥ …, the module's need is

    k_m = min { k : Σ_{i≤k} σ_i² ≥ X · Σ_i σ_i² }      (the smallest rank keeping a fraction X of its energy)

and a LoRA of rank r_m at module m (out_m × in_m) costs r_m·(in_m + out_m) parameters. The allocation scales the
needs to a budget P (e.g. uniform r=8's, Σ_m 8·(in_m + out_m)):

    r_m = max(1, ⌊s·k_m⌋) + (one more for the largest remainders s·k_m − ⌊s·k_m⌋ while the budget allows),

with s the largest scale at which Σ_m max(1, ⌊s·k_m⌋)·(in_m + out_m) ≤ P, and r_m ≤ min(in_m, out_m). So ranks stay
proportional to the measured needs, every module keeps at least rank 1 (it is adapted either way), and the total
never exceeds P (it falls short by less than one module's cheapest extra rank, unless the caps bind).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .spectra import spectrum


def lora_cost(shape: tuple[int, int], rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on an out × in matrix: r·(in + out)."""
    return rank * (shape[0] + shape[1])


def uniform_budget(shapes: Mapping[str, tuple[int, int]], rank: int) -> int:
    """Σ_m r·(in_m + out_m): the parameters of uniform rank ``rank`` on every module."""
    return sum(lora_cost(shape, rank) for shape in shapes.values())


def allocate_ranks(needs: Mapping[str, int], shapes: Mapping[str, tuple[int, int]], budget: int) -> dict[str, int]:
    """Ranks proportional to ``needs`` (module → k_m ≥ 1) within ``budget`` parameters (module docstring)."""
    if set(needs) != set(shapes) or not needs:
        raise ValueError("needs and shapes must name the same, non-empty set of modules")
    if any(not isinstance(k, int) or k < 1 for k in needs.values()):
        raise ValueError(f"every need must be an integer >= 1, got {dict(needs)}")
    cap = {m: min(shapes[m]) for m in needs}
    floor = {m: lora_cost(shapes[m], 1) for m in needs}
    if sum(floor.values()) > budget:
        raise ValueError(f"the budget {budget} is below rank 1 on every module ({sum(floor.values())} parameters)")

    def ranks_at(scale: float) -> dict[str, int]:
        return {m: min(cap[m], max(1, math.floor(scale * needs[m]))) for m in needs}

    def cost(ranks: Mapping[str, int]) -> int:
        return sum(lora_cost(shapes[m], r) for m, r in ranks.items())

    lo, hi = 0.0, max(cap.values()) / min(needs.values()) + 1.0  # at hi every module is at its cap
    for _ in range(100):  # bisection on s: cost(ranks_at(s)) is non-decreasing in s
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(ranks_at(mid)) <= budget else (lo, mid)
    ranks = ranks_at(lo)
    spent = cost(ranks)
    by_remainder = sorted(needs, key=lambda m: (-(lo * needs[m] - math.floor(lo * needs[m])), m))
    for m in by_remainder:  # the largest remainders first, each one rank more while the budget allows
        extra = lora_cost(shapes[m], 1)
        if ranks[m] < cap[m] and spent + extra <= budget:
            ranks[m] += 1
            spent += extra
    return ranks


def energy_allocation(
    matrices: Mapping[str, torch.Tensor], fraction: float, budget: int
) -> tuple[dict[str, int], dict[str, int]]:
    """(needs k_m at energy ``fraction``, ranks within ``budget``) for module → measured matrix (ΔW or G₀)."""
    needs = {m: max(1, spectrum(M).energy_rank(fraction)) for m, M in matrices.items()}  # a zero M still gets 1
    shapes = {m: tuple(M.shape) for m, M in matrices.items()}
    return needs, allocate_ranks(needs, shapes, budget)

