"""Singular-value spectra of weight updates: energy, rank at an energy fraction, effective rank.

The intrinsic-rank question of Hu et al. (2021, §7) and its follow-ups (Biderman et al. 2024: full fine-tuning's
ΔW needs 10–100× the rank of typical LoRA configs to reach 90% of its spectral energy) is asked of the singular
values σ₁ ≥ σ₂ ≥ … of ΔW. Every decomposition here runs in float64, whatever the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .linalg import as_matrix, singular_values

# Cumulative energy is compared to a fraction with this slack, so that a rank-r matrix reaches 100% at k = r even
# though the float64 sum of its r non-zero σ² differs from the total by a few ulps.
_ENERGY_SLACK = 1e-9


@dataclass(frozen=True)
class Spectrum:
    """The singular values of one matrix and what they say about its rank.

    Attributes:
        singular_values: σ₁ ≥ … ≥ σ_n, n = min(out, in), float64.
        energy: cumulative energy fraction, energy[k-1] = Σ_{l≤k} σ_l² / Σ_l σ_l² (all zeros for a zero matrix).
        numerical_rank: number of σ above max(out, in) · eps(input dtype) · σ₁ (NumPy's ``matrix_rank`` rule, with
            the machine epsilon of the dtype the matrix was stored in, since that is where its rounding noise lives).
        effective_rank: exp(H(p)), p_k = σ_k / Σσ (Roy & Vetterli 2007): 1 for a rank-1 matrix, n when all σ are
            equal, 0 for a zero matrix.
    """

    singular_values: torch.Tensor
    energy: torch.Tensor
    numerical_rank: int
    effective_rank: float

    def energy_rank(self, fraction: float = 0.9) -> int:
        """Smallest k with Σ_{l≤k} σ_l² ≥ fraction · Σ σ_l²; 0 for a zero matrix."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"energy fraction must be in (0, 1], got {fraction!r}")
        if self.frobenius_norm == 0.0:
            return 0
        reached = self.energy >= fraction - _ENERGY_SLACK
        return int(torch.nonzero(reached)[0, 0]) + 1

    @property
    def rank90(self) -> int:
        return self.energy_rank(0.9)

    @property
    def frobenius_norm(self) -> float:
        return float(self.singular_values.square().sum().sqrt())

    @property
    def stable_rank(self) -> float:
        """‖M‖²_F / σ₁² = Σ σ_l² / σ₁² (Rudelson & Vershynin 2007): 1 for a rank-1 matrix, n when all σ are equal,
        never above the numerical rank and, unlike it, insensitive to tiny σ; 0 for a zero matrix."""
        top = float(self.singular_values[0]) if len(self) else 0.0
        return self.frobenius_norm**2 / top**2 if top > 0.0 else 0.0

    @property
    def top_share(self) -> float:
        """σ₁ / Σ σ_l: the top direction's share of the nuclear norm (p₁ of ``effective_rank``'s distribution), 1
        for a rank-1 matrix, 1/n when all σ are equal, 0 for a zero matrix. Its energy share σ₁²/Σσ² is
        1/``stable_rank``."""
        total = float(self.singular_values.sum())
        return float(self.singular_values[0]) / total if total > 0.0 else 0.0

    def __len__(self) -> int:
        return self.singular_values.numel()


def spectrum(delta: torch.Tensor) -> Spectrum:
    """The spectrum of a ΔW (or any matrix): singular values, cumulative energy, numerical and effective rank."""
    eps = torch.finfo(delta.dtype).eps if isinstance(delta, torch.Tensor) and delta.is_floating_point() else 2.0**-52
    m = as_matrix(delta, "delta")
    s = singular_values(m)
    total = s.square().sum()
    if total == 0:
        zeros = torch.zeros_like(s)
        return Spectrum(singular_values=s, energy=zeros, numerical_rank=0, effective_rank=0.0)
    energy = torch.cumsum(s.square(), 0) / total
    tol = max(m.shape) * eps * s[0]
    p = s / s.sum()
    p = p[p > 0]
    entropy = -(p * p.log()).sum()
    return Spectrum(
        singular_values=s,
        energy=energy,
        numerical_rank=int((s > tol).sum()),
        effective_rank=float(entropy.exp()),
    )


def energy_ranks(delta: torch.Tensor, fractions: Sequence[float] = (0.5, 0.9, 0.99)) -> dict[float, int]:
    """{fraction: rank that reaches it} for one matrix, e.g. {0.9: 12}."""
    spec = spectrum(delta)
    return {f: spec.energy_rank(f) for f in fractions}
