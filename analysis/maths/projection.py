"""How ΔW relates to W (Hu et al. 2021, §7.3, Table 7).

Project the pretrained W onto the r-dimensional subspace of ΔW, UᵀWVᵀ with U / Vᵀ the top-r left / right singular
vectors of ΔW, and compare its Frobenius norm with the same projection onto W's own top-r directions and onto
random ones. The paper finds ‖UᵀWqVᵀ‖_F small for ΔWq (0.32 at r=4), far below W's own (21.67) and above random
(0.02): ΔW amplifies directions W has but does not emphasise, by ‖ΔW‖_F / ‖UᵀWVᵀ‖_F ≈ 21.5 at r=4.

The random value is a distribution, not one draw: ‖UᵀWV‖_F for many Haar-random orthonormal U, V of the same rank
(``random_projection``), its mean and 95% interval. ΔW is "more aligned with W than random" only when its value lies
above that interval, and the amplification factor means something only against the same interval: the factor ΔW
would have were its directions random is ‖ΔW‖_F / (the random interval).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .controls import Interval, percentile_interval
from .linalg import as_matrix, random_orthonormal, top_singular_vectors


def projected_norm(weight: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> float:
    """‖UᵀWV‖_F for W (out x in), U (out x r), V (in x r) with orthonormal columns (the paper's UᵀWVᵀ, Vᵀ in x r)."""
    w = as_matrix(weight, "weight")
    u, v = as_matrix(u, "U"), as_matrix(v, "V")
    if u.shape[0] != w.shape[0] or v.shape[0] != w.shape[1]:
        raise ValueError(f"U {tuple(u.shape)} and V {tuple(v.shape)} do not fit a {w.shape[0]}x{w.shape[1]} W")
    return float(torch.linalg.matrix_norm(u.T @ w @ v))


def random_projection(weight: torch.Tensor, r: int, draws: int = 100, seed: int = 0, level: float = 0.95) -> Interval:
    """‖UᵀWV‖_F over ``draws`` independent Haar-random orthonormal U (out x r) and V (in x r): mean and central
    ``level`` interval. Reproducible: one ``torch.Generator`` seeded with ``seed`` draws every U and V.

    For reference, E‖UᵀWV‖²_F = r² ‖W‖²_F / (out·in) for Haar U, V, so the random value grows like r.
    """
    w = as_matrix(weight, "weight")
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(w.shape):
        raise ValueError(f"r must be an integer in [1, {min(w.shape)}], got {r!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2 (100 or more for a 95% interval), got {draws!r}")
    gen = torch.Generator().manual_seed(seed)
    u = random_orthonormal(w.shape[0], r, gen, batch=draws)
    v = random_orthonormal(w.shape[1], r, gen, batch=draws)
    norms = torch.linalg.matrix_norm(u.transpose(1, 2) @ w @ v)
    return percentile_interval(norms, level)


@dataclass(frozen=True)
class Projection:
    """One column group of Table 7.

    Attributes:
        r: dimension of the subspaces.
        delta_norm: ‖ΔW‖_F.
        weight_norm: ‖W‖_F.
        proj_delta: ‖UᵀWVᵀ‖_F with U, V the top-r singular vectors of ΔW.
        proj_weight: the same with W's own top-r singular vectors (= sqrt(Σ_{k≤r} σ_k(W)²)).
        random: the same for random orthonormal U, V of rank r (``random_projection``): mean and interval.
    """

    r: int
    delta_norm: float
    weight_norm: float
    proj_delta: float
    proj_weight: float
    random: Interval

    @property
    def proj_random(self) -> float:
        """The mean of the random-direction distribution."""
        return self.random.mean

    @property
    def versus_random(self) -> str:
        """'above', 'within' or 'below' the random interval: ΔW is more aligned with W than chance only if 'above'."""
        return self.random.position(self.proj_delta)

    @property
    def amplification(self) -> float:
        """‖ΔW‖_F / ‖UᵀWVᵀ‖_F with ΔW's directions; large when ΔW boosts directions W barely uses."""
        return self.delta_norm / self.proj_delta if self.proj_delta > 0 else float("inf")

    @property
    def amplification_random(self) -> tuple[float, float]:
        """The amplification ΔW would show were its directions random: ‖ΔW‖_F over the random interval's (hi, lo)."""
        return tuple(self.delta_norm / x if x > 0 else float("inf") for x in (self.random.hi, self.random.lo))

    def as_dict(self) -> dict[str, float | str]:
        lo, hi = self.amplification_random
        return {"r": self.r, "delta_norm": self.delta_norm, "weight_norm": self.weight_norm,
                "proj_delta": self.proj_delta, "proj_weight": self.proj_weight, "proj_random": self.random.mean,
                "proj_random_lo": self.random.lo, "proj_random_hi": self.random.hi, "versus_random": self.versus_random,
                "amplification": self.amplification, "amplification_random_lo": lo,
                "amplification_random_hi": hi}  # fmt: skip


def delta_vs_weight(
    delta: torch.Tensor, weight: torch.Tensor, r: int, seed: int = 0, draws: int = 100, random: Interval | None = None
) -> Projection:
    """Table 7 for one ΔW and its pretrained W at subspace dimension r (the LoRA rank in the paper).

    ``random`` (``random_projection(weight, r, draws, seed)``) may be passed to reuse one W's distribution across runs.
    """
    d, w = as_matrix(delta, "delta"), as_matrix(weight, "weight")
    if d.shape != w.shape:
        raise ValueError(f"delta {tuple(d.shape)} and weight {tuple(w.shape)} must have one shape")
    proj = {name: projected_norm(w, top_singular_vectors(m, r, "left"), top_singular_vectors(m, r, "right"))
            for name, m in (("delta", d), ("weight", w))}  # fmt: skip
    return Projection(
        r=r,
        delta_norm=float(torch.linalg.matrix_norm(d)),
        weight_norm=float(torch.linalg.matrix_norm(w)),
        proj_delta=proj["delta"],
        proj_weight=proj["weight"],
        random=random if random is not None else random_projection(w, r, draws, seed),
    )
