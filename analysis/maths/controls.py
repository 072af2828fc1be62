"""What chance and noise give, so that every measurement can be read against them.

- ``Interval``: the mean and a central percentile interval of a control's values (e.g. ‖UᵀWV‖_F for 100 random
  orthonormal U, V); a measured value is "above" only when it lies above the whole interval.
- ``noise_floor`` / ``signal_rank``: the singular values that optimisation noise alone gives a ΔW, from two full
  fine-tunes that differ only in seed, and how many of a task ΔW's singular values rise above them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .linalg import as_matrix, singular_values
from .spectra import Spectrum, spectrum


@dataclass(frozen=True)
class Interval:
    """A control's distribution in brief: its mean and the central ``level`` percentile interval [lo, hi] of
    ``draws`` values (empirical percentiles, linear interpolation between order statistics)."""

    mean: float
    lo: float
    hi: float
    level: float
    draws: int

    def position(self, value: float) -> str:
        """'above', 'below' or 'within' the interval (the ends count as within)."""
        return "above" if value > self.hi else "below" if value < self.lo else "within"

    def __str__(self) -> str:
        return f"{self.mean:.3g} [{self.lo:.3g}, {self.hi:.3g}] ({self.level:.0%} of {self.draws} draws)"


def percentile_interval(values: torch.Tensor, level: float = 0.95) -> Interval:
    """Mean and the central ``level`` interval of ``values``: the (1−level)/2 and (1+level)/2 percentiles."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must be in (0, 1), got {level!r}")
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2 or not torch.isfinite(v).all():
        raise ValueError(f"an interval needs two or more finite values, got {v.numel()}")
    lo, hi = torch.quantile(v, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return Interval(mean=float(v.mean()), lo=float(lo), hi=float(hi), level=level, draws=v.numel())


def noise_floor(delta1: torch.Tensor, delta2: torch.Tensor) -> torch.Tensor:
    """The update that seed noise alone gives one run: (ΔW₁ − ΔW₂) / √2, float64, for two fine-tunes of one module
    that differ only in seed.

    If ΔWᵢ = S + Nᵢ with the task's signal S shared and the noises Nᵢ independent and alike, ΔW₁ − ΔW₂ = N₁ − N₂
    cancels S and has twice the variance of one N; dividing by √2 gives one run's noise, what a ΔW is measured
    against. Two identical updates give a zero floor.
    """
    d1, d2 = as_matrix(delta1, "delta1"), as_matrix(delta2, "delta2")
    if d1.shape != d2.shape:
        raise ValueError(f"the two updates must have one shape, got {tuple(d1.shape)} and {tuple(d2.shape)}")
    return (d1 - d2) / math.sqrt(2.0)


def signal_rank(delta: torch.Tensor | Spectrum, floor: torch.Tensor | float) -> int:
    """Number of singular values of ``delta`` above the largest singular value of ``floor``.

    The rule: σ_k(ΔW) counts as signal when σ_k(ΔW) > σ₁(floor), the largest stretch noise alone produced in any
    direction, and when it is above ΔW's own rounding (k ≤ its numerical rank, ``Spectrum.numerical_rank``), so a
    zero floor does not count rounding noise as signal. ``delta`` may be given as its ``Spectrum`` and ``floor`` as
    σ₁(floor), to reuse decompositions across many comparisons.
    """
    if not isinstance(floor, torch.Tensor):
        top = float(floor)
        if not top >= 0.0:
            raise ValueError(f"the floor's top singular value must be >= 0, got {floor!r}")
    else:
        f = as_matrix(floor, "floor")
        if isinstance(delta, torch.Tensor) and tuple(delta.shape) != tuple(f.shape):
            raise ValueError(f"delta {tuple(delta.shape)} and its noise floor {tuple(f.shape)} must have one shape")
        top = float(singular_values(f)[0])
    spec = delta if isinstance(delta, Spectrum) else spectrum(delta)
    return min(int((spec.singular_values > top).sum()), spec.numerical_rank)
