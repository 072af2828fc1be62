"""Linear algebra every analysis shares: float64 matrices, thin SVD, top singular directions, random matrices.

Every decomposition runs in float64 whatever the input dtype, so results do not depend on how a run stored its
tensors; on the CPU, or on the GPU after ``use_device("cuda")`` (``execution.device``'s semantics: auto | cpu | cuda;
``python -m analysis.figures --device``). Results come back on the CPU either way.
"""

from __future__ import annotations

import torch

SIDES = ("left", "right")
_DEVICE = torch.device("cpu")  # where svd and singular_values run (use_device)


def use_device(name: str) -> torch.device:
    """Run the SVDs on ``name``: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda`` (one-line
    error without a GPU). A float64 SVD of a 4096 x 4096 ΔW takes ~30 s on one CPU core."""
    global _DEVICE
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA device; use auto or cpu")
    _DEVICE = torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
    return _DEVICE


def _on_device(mat: torch.Tensor) -> torch.Tensor:
    return mat if _DEVICE.type == "cpu" else mat.to(_DEVICE)


def as_matrix(m: torch.Tensor, what: str = "matrix") -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        m = torch.as_tensor(m)
    if m.ndim != 2:
        raise ValueError(f"{what} must be 2-D (out x in), got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{what} has non-finite entries")
    return m.detach().to(device="cpu", dtype=torch.float64)


def svd(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float64, m = U diag(S) Vh. A wide matrix is decomposed through its transpose: torch's CPU SVD of
    a 384 x 1536 matrix is ~20x slower than of its 1536 x 384 transpose."""
    mat = _on_device(as_matrix(m))
    if mat.shape[0] < mat.shape[1]:
        v, s, uh = torch.linalg.svd(mat.T, full_matrices=False)
        return uh.T.cpu(), s.cpu(), v.T.cpu()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    return u.cpu(), s.cpu(), vh.cpu()


def singular_values(m: torch.Tensor) -> torch.Tensor:
    """σ₁ ≥ … ≥ σ_n in float64 (through the transpose for wide matrices, as ``svd``)."""
    mat = _on_device(as_matrix(m))
    return torch.linalg.svdvals(mat.T if mat.shape[0] < mat.shape[1] else mat).cpu()


def top_singular_vectors(m: torch.Tensor, k: int, side: str = "left") -> torch.Tensor:
    """Orthonormal basis of the top-k left (out x k) or right (in x k) singular directions of ``m``, as columns.

    For a LoRA factor A (r x in) the paper compares the row space of A, i.e. ``top_singular_vectors(A, r, "right")``
    (Hu et al. 2021, §7.2). Singular vectors are defined up to sign, and up to rotation within a repeated singular
    value; the subspace similarity is invariant to both.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    mat = as_matrix(m)
    n = min(mat.shape)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in [1, {n}] for a {mat.shape[0]}x{mat.shape[1]} matrix, got {k!r}")
    u, _, vh = svd(mat)
    return u[:, :k] if side == "left" else vh[:k].T.contiguous()


def random_gaussian(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A float64 matrix with i.i.d. N(0, 1) entries, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def random_orthonormal(rows: int, cols: int, generator: torch.Generator, batch: int | None = None) -> torch.Tensor:
    """Columns of an orthonormal basis drawn uniformly (Haar) from the rows x cols Stiefel manifold, float64;
    ``batch`` draws at once give a (batch, rows, cols) tensor.

    Q of the QR decomposition of a Gaussian matrix, with each column's sign set by R's diagonal: without that sign
    fix LAPACK's convention makes the draw not uniform (Mezzadri 2007, "How to generate random matrices from the
    classical compact groups").
    """
    if not 1 <= cols <= rows:
        raise ValueError(f"an orthonormal basis needs 1 <= cols <= rows, got {rows}x{cols}")
    shape = (rows, cols) if batch is None else (batch, rows, cols)
    q, r = torch.linalg.qr(torch.randn(*shape, generator=generator, dtype=torch.float64))
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    return q * torch.where(signs == 0, 1.0, signs).unsqueeze(-2)
