"""Sharpness at init: the largest eigenvalue of the training loss's Hessian w.r.t. a method's trainable parameters
(issue 23; Lee et al. 2026 report that each method's best learning rate tracks it).

Lanczos on Hessian-vector products (double backward: Hv = ∂/∂θ ⟨∂L/∂θ, v⟩, no Hessian is formed; Golub & Van Loan
2013, §10.1). After j steps the orthonormal q₁…q_j span the Krylov space of a random start and H restricted to it is
the tridiagonal T_j (diagonal α, off-diagonal β); its largest eigenvalue θ (a Ritz value) approaches λ_max from
below, and with T_j's eigenvector s, ‖H y − θ y‖ = β_j·|s_j| for the Ritz vector y: an eigenvalue of H lies within
that residual of θ. The iteration stops when the residual is at most ``tol``·|θ| ("converged"). Every q is
re-orthogonalised against all earlier ones (full reorthogonalisation: without it rounding makes copies of converged
Ritz values), so j vectors of the parameters' size are kept. Lanczos reads the largest *algebraic* eigenvalue
directly, so an indefinite Hessian (LoRA's at B = 0 has no A-A block; a full fine-tune's encoder) needs no shift, where
power iteration finds the eigenvalue of largest magnitude and, on these Hessians, did not converge in 20 steps (the
CPU demonstration, REPRODUCTION.md). A rank correlation across methods, with a bootstrap interval over methods,
relates λ_max to each method's best rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .controls import Interval, percentile_interval


@dataclass(frozen=True)
class TopEigenvalue:
    value: float  # λ_max: the largest Ritz value at the last step
    iterations: int  # Hessian-vector products
    converged: bool
    residual: float = float("nan")  # ‖Hy − λy‖ of its Ritz vector y: an eigenvalue lies within it


def hessian_vector_product(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                           vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """H v for H = ∇²L(θ) at the current ``params``, by double backward; ``loss_fn()`` recomputes L."""
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector))
    # A parameter the loss is linear in has no second derivative in the graph: its row of H is zero.
    hv = torch.autograd.grad(dot, params, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(params, hv)]


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], iterations: int = 60,
                           tol: float = 1e-3, seed: int = 0) -> TopEigenvalue:
    """λ_max of ∇²L w.r.t. ``params`` by Lanczos (module docstring) from a random start drawn with ``seed``, at most
    ``iterations`` Hessian-vector products; converged when the Ritz residual is ≤ ``tol``·|λ_max|."""
    params = list(params)
    if not params:
        raise ValueError("no parameters: λ_max needs the method's trainable parameters")
    generator = torch.Generator().manual_seed(seed)
    q = _normalised([torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params])
    basis, alphas, betas = [], [], []
    value, residual = 0.0, float("inf")
    for step in range(1, iterations + 1):
        basis.append(q)
        w = hessian_vector_product(loss_fn, params, q)
        alphas.append(_dot(w, q))
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough": Parlett 1998, §6.9)
            for b in basis:
                w = _axpy(-_dot(w, b), b, w)
        beta = float(torch.sqrt(sum(x.double().square().sum() for x in w)))
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        ritz, vectors = torch.linalg.eigh(tridiagonal)
        value, residual = float(ritz[-1]), beta * float(vectors[-1, -1].abs())
        scale = max(abs(value), float(ritz.abs().max()), 1e-30)
        if residual <= tol * max(abs(value), 1e-12 * scale) or beta <= 1e-12 * scale:
            return TopEigenvalue(value, step, True, residual)
        betas.append(beta)
        q = [x / beta for x in w]
    return TopEigenvalue(value, iterations, False, residual)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _axpy(alpha: float, x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [b + alpha * a for a, b in zip(x, y)]


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
