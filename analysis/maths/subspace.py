"""Normalised subspace similarity between learned directions (Hu et al. 2021, §7.2, Figures 3 and 4).

    φ(U₁, U₂, i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F / min(i, j)  ∈ [0, 1]

for orthonormal U₁ (d x r₁) and U₂ (d x r₂). The numerator is Σ cos² θ_k over the min(i, j) principal angles θ between
span(U₁[:, :i]) and span(U₂[:, :j]), so φ is the mean cos² of those angles: 1 when one span contains the other, 0
when they are orthogonal. For LoRA the paper takes U as the right-singular vectors of the A factor (r x in), the
directions A reads from the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .controls import Interval, percentile_interval
from .linalg import as_matrix, random_gaussian, random_orthonormal, svd, top_singular_vectors

_ORTHONORMAL_TOL = 1e-6


def _orthonormal_columns(u: torch.Tensor, what: str) -> torch.Tensor:
    u = as_matrix(u, what)
    gram = u.T @ u
    err = float((gram - torch.eye(gram.shape[0], dtype=gram.dtype)).abs().max()) if gram.numel() else 0.0
    if err > _ORTHONORMAL_TOL:
        raise ValueError(
            f"{what} must have orthonormal columns (max |UᵀU - I| = {err:.2e}); "
            f"pass singular vectors, e.g. top_singular_vectors(A, r, 'right')"
        )
    return u


def subspace_similarity(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """The φ grid for every i ≤ r₁, j ≤ r₂ at once: entry (i-1, j-1) = φ(U₁, U₂, i, j), float64 r₁ x r₂.

    One pass: with G = (U₁ᵀU₂)∘², ‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F = Σ_{a≤i, b≤j} G_ab is the 2-D cumulative sum of G, so
    the whole grid costs one d x r₁ x r₂ product instead of r₁·r₂ decompositions.
    """
    u1 = _orthonormal_columns(u1, "U1")
    u2 = _orthonormal_columns(u2, "U2")
    if u1.shape[0] != u2.shape[0]:
        raise ValueError(f"U1 and U2 must live in the same space, got {u1.shape[0]} and {u2.shape[0]} rows")
    g = (u1.T @ u2).square()
    overlap = g.cumsum(0).cumsum(1)
    i = torch.arange(1, u1.shape[1] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, u2.shape[1] + 1, dtype=torch.float64)[None, :]
    # Rounding can push a perfect overlap a hair above 1; φ is a mean of cos², so clamp to its range.
    return (overlap / torch.minimum(i, j)).clamp_(0.0, 1.0)


def lora_subspace_similarity(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """φ(A₁, A₂, i, j) between two LoRA A factors (r₁ x in, r₂ x in) through their right-singular vectors (§7.2)."""
    a1, a2 = as_matrix(a1, "A1"), as_matrix(a2, "A2")
    if a1.shape[1] != a2.shape[1]:
        raise ValueError(f"A factors must share the input dimension, got {tuple(a1.shape)} and {tuple(a2.shape)}")
    return subspace_similarity(
        top_singular_vectors(a1, min(a1.shape), "right"), top_singular_vectors(a2, min(a2.shape), "right")
    )


def random_subspace_similarity(shape1: tuple[int, int], shape2: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """The baseline of Figure 4: φ between two random Gaussian matrices shaped like the A factors compared."""
    return lora_subspace_similarity(random_gaussian(shape1, seed), random_gaussian(shape2, seed + 1))


def expected_random_similarity(k: int, d: int) -> float:
    """E[φ(k, k)] for two independent uniformly random k-dimensional subspaces of R^d: k / d.

    (E‖U₁ᵀU₂‖²_F = k·k/d for U₂ uniform, divided by min(k, k) = k.)
    """
    if not 1 <= k <= d:
        raise ValueError(f"need 1 <= k <= d, got k={k}, d={d}")
    return k / d


def singular_subspaces(delta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_k out x k, V_k in x k): orthonormal bases of the top-k left (column space) and right (row space) singular
    directions of an update, from one SVD. Compute once per ΔW and compare with ``subspace_overlap``."""
    d = as_matrix(delta, "delta")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= min(d.shape):
        raise ValueError(f"k must be an integer in [1, {min(d.shape)}] for a {d.shape[0]}x{d.shape[1]} update, got {k!r}")
    u, _, vh = svd(d)
    return u[:, :k], vh[:k].T.contiguous()


def subspace_overlap(u1: torch.Tensor, u2: torch.Tensor) -> float:
    """φ(k₁, k₂) = ‖U₁ᵀU₂‖²_F / min(k₁, k₂) between two whole bases: the last entry of ``subspace_similarity``."""
    return float(subspace_similarity(u1, u2)[-1, -1])


def delta_overlaps(delta1: torch.Tensor, delta2: torch.Tensor, k: int) -> tuple[float, float]:
    """(left, right): φ(k, k) between the top-k left and right singular subspaces of two updates of one layer.

    Used beyond the paper for LoRA vs full fine-tuning: how much of a full fine-tune's top-k ΔW subspace the
    rank-k LoRA update finds. Compare to ``expected_random_similarity(k, d)``.
    """
    d1, d2 = as_matrix(delta1, "delta1"), as_matrix(delta2, "delta2")
    if d1.shape != d2.shape:
        raise ValueError(f"updates of the same layer must have one shape, got {tuple(d1.shape)} and {tuple(d2.shape)}")
    (u1, v1), (u2, v2) = singular_subspaces(d1, k), singular_subspaces(d2, k)
    return subspace_overlap(u1, u2), subspace_overlap(v1, v2)


def random_subspace_overlap(d: int, k: int, draws: int = 100, seed: int = 0, level: float = 0.95) -> Interval:
    """The chance value of φ(k, k): ‖U₁ᵀU₂‖²_F / k for ``draws`` pairs of independent Haar-random k-dimensional
    subspaces of R^d, as its mean and central ``level`` interval (mean ≈ k/d, ``expected_random_similarity``).
    Reproducible: one ``torch.Generator`` seeded with ``seed`` draws every basis."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2 (100 or more for a 95% interval), got {draws!r}")
    if not 1 <= k <= d:
        raise ValueError(f"need 1 <= k <= d, got k={k}, d={d}")
    gen = torch.Generator().manual_seed(seed)
    u1, u2 = random_orthonormal(d, k, gen, batch=draws), random_orthonormal(d, k, gen, batch=draws)
    return percentile_interval((u1.transpose(1, 2) @ u2).square().sum((1, 2)) / k, level)


def delta_overlap(delta1: torch.Tensor, delta2: torch.Tensor, k: int, side: str = "left") -> float:
    """φ(k, k) between the top-k ``side`` ("left" or "right") singular subspaces of two updates; see
    ``delta_overlaps``."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    return delta_overlaps(delta1, delta2, k)[side == "right"]


def delta_row_space_similarity(delta1: torch.Tensor, delta2: torch.Tensor, r1: int, r2: int) -> torch.Tensor:
    """Figure 3 on ΔW instead of A: the φ grid between the top-r₁ and top-r₂ right singular subspaces (row spaces)
    of two updates of one module, r₁ x r₂. For LoRA, ΔW = s·B·A reads the input only through A's row space, so this
    asks the paper's question of the directions that reached the update rather than of A's init-dominated rows."""
    d1, d2 = as_matrix(delta1, "delta1"), as_matrix(delta2, "delta2")
    if d1.shape[1] != d2.shape[1]:
        raise ValueError(f"updates must share the input dimension, got {tuple(d1.shape)} and {tuple(d2.shape)}")
    return subspace_similarity(top_singular_vectors(d1, r1, "right"), top_singular_vectors(d2, r2, "right"))


@dataclass(frozen=True)
class FactorDrift:
    """How far a trained LoRA factor A (r x in) moved from its initial A₀.

    Attributes:
        relative_change: ‖A − A₀‖_F / ‖A₀‖_F (0: A never moved).
        similarity: φ(r, r) between the row spaces of A and A₀ (their top-r right singular subspaces): 1 when A
            still reads the input through its init's directions, about r/in for unrelated subspaces.
    """

    relative_change: float
    similarity: float


def factor_drift(a: torch.Tensor, a0: torch.Tensor) -> FactorDrift:
    """``FactorDrift`` of a trained A against its init A₀ (same shape, A₀ non-zero)."""
    a, a0 = as_matrix(a, "A"), as_matrix(a0, "A0")
    if a.shape != a0.shape:
        raise ValueError(f"A {tuple(a.shape)} and its init A0 {tuple(a0.shape)} must have one shape")
    init_norm = float(torch.linalg.matrix_norm(a0))
    if init_norm == 0.0:
        raise ValueError("A0 is zero: the relative change ‖A − A0‖/‖A0‖ is undefined (was A initialised to zero?)")
    r = min(a.shape)
    phi = subspace_similarity(top_singular_vectors(a, r, "right"), top_singular_vectors(a0, r, "right"))[-1, -1]
    return FactorDrift(float(torch.linalg.matrix_norm(a - a0)) / init_norm, float(phi))
