"""Pure maths on tensors for the analyses of Hu et al. (2021, §7) and their controls; no run folders, no pandas."""

from .controls import Interval, noise_floor, percentile_interval, signal_rank
from .intruders import Intruders, intruder_dimensions, intruders_at_norm, left_singular_basis, rescale_to_norm
from .linalg import as_matrix, random_gaussian, random_orthonormal, singular_values, svd, top_singular_vectors
from .projection import Projection, delta_vs_weight, projected_norm, random_projection
from .spectra import Spectrum, energy_ranks, spectrum
from .stats import MARGINS, Difference, difference_interval, margin_for, permutation_pvalue, verdict
from .subspace import (
    FactorDrift,
    delta_overlap,
    delta_overlaps,
    delta_row_space_similarity,
    expected_random_similarity,
    factor_drift,
    lora_subspace_similarity,
    random_subspace_overlap,
    random_subspace_similarity,
    singular_subspaces,
    subspace_overlap,
    subspace_similarity,
)
from .truncation import best_rank_k, doubling_ranks, truncate_deltas, truncation_error

__all__ = [
    "MARGINS",
    "Difference",
    "FactorDrift",
    "Interval",
    "Intruders",
    "Projection",
    "Spectrum",
    "as_matrix",
    "best_rank_k",
    "delta_overlap",
    "delta_overlaps",
    "delta_row_space_similarity",
    "delta_vs_weight",
    "difference_interval",
    "doubling_ranks",
    "energy_ranks",
    "expected_random_similarity",
    "factor_drift",
    "intruder_dimensions",
    "intruders_at_norm",
    "left_singular_basis",
    "lora_subspace_similarity",
    "margin_for",
    "noise_floor",
    "percentile_interval",
    "permutation_pvalue",
    "projected_norm",
    "random_gaussian",
    "random_orthonormal",
    "random_projection",
    "random_subspace_overlap",
    "random_subspace_similarity",
    "rescale_to_norm",
    "signal_rank",
    "singular_subspaces",
    "singular_values",
    "spectrum",
    "subspace_overlap",
    "subspace_similarity",
    "svd",
    "top_singular_vectors",
    "truncate_deltas",
    "truncation_error",
    "verdict",
]
