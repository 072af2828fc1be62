"""Best rank-k approximations of weight updates: the direct test of the intrinsic-rank hypothesis.

Hu et al. (2021, §7) argue ΔW has a low "intrinsic rank". Cutting a fine-tune's ΔW down to rank k in every adapted
matrix and measuring the task says how much of the gain survives at each k, with no training. By Eckart–Young the
rank-k truncated SVD, U_k diag(σ₁..σ_k) V_kᵀ, is the closest rank-k matrix to ΔW in Frobenius and spectral norm;
its relative Frobenius error is sqrt(Σ_{l>k} σ_l²) / ‖ΔW‖_F.
"""

from __future__ import annotations

import torch

from .linalg import as_matrix, svd


def _check_rank(k: int, shape: tuple[int, int], what: str) -> None:
    n = min(shape)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"truncation rank k must be an integer in [1, {n}] for the {shape[0]}x{shape[1]} {what}, "
                         f"got {k!r}")  # fmt: skip


def best_rank_k(delta: torch.Tensor, k: int) -> torch.Tensor:
    """The best rank-k approximation of ``delta`` (truncated SVD, computed in float64), in ``delta``'s dtype.

    A matrix of rank ≤ k comes back unchanged (up to rounding); k above min(out, in) is refused.
    """
    d = as_matrix(delta, "delta")
    _check_rank(k, tuple(d.shape), "delta")
    u, s, vh = svd(d)
    out = (u[:, :k] * s[:k]) @ vh[:k]
    return out.to(delta.dtype if isinstance(delta, torch.Tensor) and delta.is_floating_point() else torch.float64)


def truncate_deltas(deltas: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """{module: best rank-k approximation of its ΔW} for every module; k must fit every matrix."""
    for name, d in deltas.items():
        _check_rank(k, tuple(d.shape), f"ΔW of {name}")
    return {name: best_rank_k(d, k) for name, d in deltas.items()}


def truncation_error(delta: torch.Tensor, k: int) -> float:
    """‖ΔW − best_rank_k(ΔW)‖_F / ‖ΔW‖_F = sqrt(Σ_{l>k} σ_l² / Σ_l σ_l²); 0 for a zero ΔW."""
    d = as_matrix(delta, "delta")
    _check_rank(k, tuple(d.shape), "delta")
    s2 = svd(d)[1].square()
    total = float(s2.sum())
    return (float(s2[k:].sum()) / total) ** 0.5 if total > 0 else 0.0


def doubling_ranks(n: int) -> list[int]:
    """1, 2, 4, … below n, then n itself: the k at which a ΔW with min(out, in) = n is truncated."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]
