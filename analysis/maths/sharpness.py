"""Sharpness at init: the largest eigenvalue of the training loss's Hessian w.r.t. a method's trainable parameters
(issue 23; Lee et al. 2026 report that each method's best learning rate tracks it).

Power iteration on Hessian-vector products (double backward: Hv = ∂/∂θ ⟨∂L/∂θ, v⟩, no Hessian is formed):

    v ← Hv / ‖Hv‖,   λ ← ⟨v, Hv⟩       until |λ_t − λ_{t−1}| ≤ tol·|λ_t|

converges to the eigenvalue of largest magnitude. At init that can be negative (LoRA's factors at B = 0: the
Hessian has no A-A block and is indefinite; the encoder of a full fine-tune too): then μ = λ_min, and power iteration
on the shifted H − μI (positive semi-definite, its top eigenvalue λ_max − μ) gives λ_max = that + μ. A rank
correlation across methods, with a bootstrap interval over methods, relates λ_max to each method's best rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .controls import Interval, percentile_interval


@dataclass(frozen=True)
class TopEigenvalue:
    value: float  # λ, the Rayleigh quotient at the last iterate
    iterations: int
    converged: bool


def hessian_vector_product(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                           vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v for H = ∇²L(θ) at the current ``params``, by double backward; ``loss_fn()`` recomputes L."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector))
    # A parameter the loss is linear in has no second derivative in the graph: its row of H is zero.
    hv = torch.autograd.grad(dot, params, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hv)]


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iterations: int = 50,
                           tol: float = 1e-3, seed: int = 0) -> TopEigenvalue:
    """λ_max of ∇²L w.r.t. ``params`` by power iteration (module docstring), from a random start drawn with ``seed``;
    when the dominant eigenvalue is negative, again on H − λ_min·I. ``iterations`` bounds each of the two passes."""
    params = list(params)
    if not params:
        raise ValueError("no parameters: λ_max needs the method's trainable parameters")
    found = _power_iteration(loss_fn, params, iterations, tol, seed, shift=0.0)
    if found.value >= 0.0:
        return found
    shifted = _power_iteration(loss_fn, params, iterations, tol, seed + 1, shift=found.value)
    return TopEigenvalue(shifted.value + found.value, found.iterations + shifted.iterations,
                         found.converged and shifted.converged)


def _power_iteration(loss_fn, params, iterations: int, tol: float, seed: int, shift: float) -> TopEigenvalue:
    """The dominant eigenvalue of H − shift·I."""
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    v = _normalised(v)
    value = None
    for step in range(1, iterations + 1):
        hv = [h - shift * x for h, x in zip(hessian_vector_product(loss_fn, params, v), v)]
        new = float(sum((a * b).sum() for a, b in zip(v, hv)))
        if all(float(h.abs().max()) == 0.0 for h in hv):
            return TopEigenvalue(0.0, step, True)
        v = _normalised(hv)
        if value is not None and abs(new - value) <= tol * abs(new):
            return TopEigenvalue(new, step, True)
        value = new
    return TopEigenvalue(value, iterations, False)


def _normalised(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(sum(v.double().square().sum() for v in vectors))
    return [v / norm.to(v.dtype) for v in vectors]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks (ties get their mean rank)."""
    rx, ry = _ranks(torch.as_tensor(x, dtype=torch.float64)), _ranks(torch.as_tensor(y, dtype=torch.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def _ranks(values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for value in torch.unique(values):  # ties: the mean of their ranks
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_interval(x: Sequence[float], y: Sequence[float], draws: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, Interval]:
    """(ρ, its bootstrap interval): ρ recomputed on ``draws`` resamples of the (x, y) pairs with replacement
    (resamples whose x or y is constant, where ρ is undefined, are left out)."""
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"a rank correlation needs three or more (x, y) pairs, got {len(x)} and {len(y)}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(draws):
        pick = torch.randint(len(x), (len(x),), generator=generator).tolist()
        rho = spearman([x[i] for i in pick], [y[i] for i in pick])
        if rho == rho:
            values.append(rho)
    return spearman(x, y), percentile_interval(torch.tensor(values), level)
