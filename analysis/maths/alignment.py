"""Where do LoRA's directions come from? Alignment with the first full fine-tuning gradient (issue 23).

LoRA-GA (Wang et al. 2024) and LoRA-One (Zhang et al. 2025) argue that trained LoRA lines up with the top singular
subspaces of G₀ = ∂L/∂W at the pretrained weights. With G₀ = U S Vᵀ and an update's own bases, per module,

    column side:  φ(U_r, col(B))     and  φ(U_r, top-r left singular vectors of ΔW)
    row side:     φ(V_r, col(Aᵀ))    and  φ(V_r, top-r right singular vectors of ΔW)

with φ(P, Q) = ‖PᵀQ‖²_F / min(k_P, k_Q) (``subspace.subspace_overlap``): 1 when one span holds the other, about
k/d for unrelated subspaces. The control is chance: φ between random r-dim subspaces of the same space
(``subspace.random_subspace_overlap``, a 95% interval), and, in the builder, G₀ of another task.
"""

from __future__ import annotations

import torch

from .linalg import as_matrix, svd, top_singular_vectors
from .subspace import subspace_overlap

SIDES = ("column", "row")


def gradient_bases(g0: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r out × r, V_r in × r): G₀'s top-r left and right singular directions."""
    g = as_matrix(g0, "G0")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(g.shape):
        raise ValueError(f"r must be an integer in [1, {min(g.shape)}] for a {g.shape[0]}x{g.shape[1]} G0, got {r!r}")
    u, _, vh = svd(g)
    return u[:, :r], vh[:r].T.contiguous()


def factor_alignment(g0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, r: int | None = None) -> dict[str, float]:
    """{"column": φ(U_r, col(B)), "row": φ(V_r, col(Aᵀ))} for LoRA factors A (rank × in), B (out × rank); r defaults
    to the factors' rank. A factor of lower numerical rank is compared through the directions it has."""
    A, B = as_matrix(A, "A"), as_matrix(B, "B")
    rank = A.shape[0] if r is None else r
    u, v = gradient_bases(g0, rank)
    return {"column": subspace_overlap(u, _span(B, "left")), "row": subspace_overlap(v, _span(A, "right"))}


def delta_alignment(g0: torch.Tensor, delta: torch.Tensor, r: int) -> dict[str, float]:
    """{"column": φ(U_r, top-r left of ΔW), "row": φ(V_r, top-r right of ΔW)} at one rank r."""
    d = as_matrix(delta, "delta")
    if tuple(d.shape) != tuple(as_matrix(g0, "G0").shape):
        raise ValueError(f"ΔW {tuple(d.shape)} and G0 {tuple(g0.shape)} must be of one module")
    u, v = gradient_bases(g0, r)
    return {"column": subspace_overlap(u, top_singular_vectors(d, r, "left")),
            "row": subspace_overlap(v, top_singular_vectors(d, r, "right"))}


def _span(factor: torch.Tensor, side: str) -> torch.Tensor:
    """An orthonormal basis of a factor's column (B: ``left``) or row (A: ``right``) space, at its numerical rank."""
    s = torch.linalg.svdvals(factor)
    keep = max(1, int((s > s[0] * max(factor.shape) * torch.finfo(torch.float64).eps).sum())) if s[0] > 0 else 1
    return top_singular_vectors(factor, keep, side)
