"""Pure maths on tensors for the analyses of Hu et al. (2021, §7) and their controls; no run folders, no pandas."""

from .intruders import Intruders, intruder_dimensions, left_singular_basis
from .linalg import as_matrix, random_gaussian, singular_values, svd, top_singular_vectors
from .projection import Projection, delta_vs_weight, projected_norm
from .spectra import Spectrum, energy_ranks, spectrum
from .subspace import (
    delta_overlap,
    delta_overlaps,
    expected_random_similarity,
    lora_subspace_similarity,
    random_subspace_similarity,
    subspace_similarity,
)

__all__ = [
    "Intruders",
    "Projection",
    "Spectrum",
    "as_matrix",
    "delta_overlap",
    "delta_overlaps",
    "delta_vs_weight",
    "energy_ranks",
    "expected_random_similarity",
    "intruder_dimensions",
    "left_singular_basis",
    "lora_subspace_similarity",
    "projected_norm",
    "random_gaussian",
    "random_subspace_similarity",
    "singular_values",
    "spectrum",
    "subspace_similarity",
    "svd",
    "top_singular_vectors",
]
