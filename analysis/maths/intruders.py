"""Intruder dimensions (Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence").

A fine-tune changes W₀ into W = W₀ + ΔW. A top singular vector u_k of W is an intruder when it is dissimilar to
every singular vector of W₀:  max_l |⟨u_k, u_l(W₀)⟩| < ε. LoRA is reported to create such directions with large
singular values; full fine-tuning mostly rotates existing ones.

A bigger ΔW moves W's singular vectors further whatever its directions, so counts from updates of different sizes
compare sizes as much as kinds of update. ``intruders_at_norm`` rescales ΔW to a common Frobenius norm first (the
analyses use the full fine-tune's, per module): then a difference in counts is a difference in directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import as_matrix, svd


@dataclass(frozen=True)
class Intruders:
    """Which of the top-k left singular vectors of the tuned W are intruders.

    Attributes:
        k: number of top singular vectors examined.
        threshold: ε; a vector is an intruder when its largest |cos| with W₀'s singular vectors is below it.
        max_cosine: float64 (k,), max_l |⟨u_k(W), u_l(W₀)⟩| for each of the top-k vectors of W.
    """

    k: int
    threshold: float
    max_cosine: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.max_cosine < self.threshold

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def ranks(self) -> list[int]:
        """1-based positions (in W's spectrum) of the intruders."""
        return [int(i) + 1 for i in torch.nonzero(self.mask).flatten()]


def left_singular_basis(weight: torch.Tensor) -> torch.Tensor:
    """All left singular vectors of W (out x min(out, in)), float64."""
    return svd(as_matrix(weight, "weight"))[0]


def intruder_dimensions(
    base: torch.Tensor,
    tuned: torch.Tensor,
    k: int = 10,
    threshold: float = 0.5,
    base_basis: torch.Tensor | None = None,
) -> Intruders:
    """Intruder dimensions among the top-k left singular vectors of ``tuned`` relative to ``base`` (W₀).

    ``base_basis`` (``left_singular_basis(base)``) may be passed to reuse W₀'s decomposition across runs.
    """
    w0, w = as_matrix(base, "base"), as_matrix(tuned, "tuned")
    if w0.shape != w.shape:
        raise ValueError(f"base {tuple(w0.shape)} and tuned {tuple(w.shape)} must have one shape")
    n = min(w.shape)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}], got {k!r}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold ε must be in (0, 1], got {threshold!r}")
    u0 = left_singular_basis(w0) if base_basis is None else as_matrix(base_basis, "base_basis")
    cos = (svd(w)[0][:, :k].T @ u0).abs()
    return Intruders(k=k, threshold=threshold, max_cosine=cos.max(dim=1).values)


def rescale_to_norm(delta: torch.Tensor, norm: float) -> torch.Tensor:
    """ΔW · norm / ‖ΔW‖_F (float64): the same directions and singular-value proportions at Frobenius norm ``norm``."""
    d = as_matrix(delta, "delta")
    current = float(torch.linalg.matrix_norm(d))
    if current == 0.0:
        raise ValueError("cannot rescale a zero ΔW to a norm: it has no direction")
    if not norm > 0.0 or norm == float("inf"):
        raise ValueError(f"the target norm must be positive and finite, got {norm!r}")
    return d * (norm / current)


def intruders_at_norm(
    base: torch.Tensor,
    delta: torch.Tensor,
    norm: float,
    k: int = 10,
    threshold: float = 0.5,
    base_basis: torch.Tensor | None = None,
) -> Intruders:
    """``intruder_dimensions`` of W₀ + ΔW·norm/‖ΔW‖_F: intruders at matched update norm. Unchanged when ΔW is
    multiplied by any positive constant."""
    w0 = as_matrix(base, "base")
    return intruder_dimensions(w0, w0 + rescale_to_norm(delta, norm), k, threshold, base_basis)


def scale_directions(weight: torch.Tensor, positions: list[int], lam: float) -> torch.Tensor:
    """W with its singular directions at 1-based ``positions`` scaled by λ (float64):

        W' = W + (λ − 1) · Σ_{k ∈ positions} σ_k u_k v_kᵀ

    λ = 1 leaves W; λ = 0 removes exactly those rank-1 components, and nothing else (the others are orthogonal to
    them). The intervention of Shuttleworth et al. (2024, §5) on W = W₀ + ΔW, with ``positions`` = the intruders'
    ``Intruders.ranks``; PEFT's ``reduce_intruder_dimension`` applies the same W' (its ``mitigation_lambda`` is this
    λ, the share of the direction kept) but then re-factors W' − W₀ into a LoRA of the adapter's rank, a truncation
    this exact W' does not make."""
    w = as_matrix(weight, "weight")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"λ must be in [0, 1], got {lam!r}")
    n = min(w.shape)
    if any(isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n for k in positions):
        raise ValueError(f"positions are 1-based ranks in [1, {n}], got {positions!r}")
    if not positions:
        return w.clone()
    u, s, vh = svd(w)
    idx = torch.tensor(sorted(set(positions))) - 1
    return w + (lam - 1.0) * (u[:, idx] * s[idx]) @ vh[idx]


def control_positions(found: Intruders) -> list[int]:
    """The control of an intervention on ``found.ranks``: as many of W's top-k directions that are NOT intruders,
    the highest first (fewer when the top k hold fewer non-intruders)."""
    return [k for k in range(1, found.k + 1) if k not in set(found.ranks)][: found.count]
