"""Analyses of LoRA and full fine-tuning updates (Hu et al. 2021, §7) and the paper's tables and figures.

Pure functions on tensors (``spectrum``, ``subspace_similarity``, ``delta_vs_weight``, ``intruder_dimensions``)
and on the run table (``scan_runs``, ``table2``, ...); ``python -m analysis.figures`` turns run folders into files.
"""

from .intruders import Intruders, intruder_dimensions, left_singular_basis
from .modules import KIND_LABELS, KINDS, ModuleId, parse_module, sort_modules, targets_label
from .projection import Projection, delta_vs_weight, projected_norm
from .runs import (
    MissingRuns,
    RunError,
    RunWarning,
    Skipped,
    base_weights,
    find_run_dirs,
    load_runs,
    lora_factors,
    run_deltas,
    scan_runs,
)
from .spectra import Spectrum, energy_ranks, random_gaussian, singular_values, spectrum, svd, top_singular_vectors
from .subspace import (
    delta_overlap,
    delta_overlaps,
    expected_random_similarity,
    lora_subspace_similarity,
    random_subspace_similarity,
    subspace_similarity,
)
from .tables import Table, table2, table5, table6, to_markdown, write_table

__all__ = [
    "Intruders",
    "KINDS",
    "KIND_LABELS",
    "MissingRuns",
    "ModuleId",
    "Projection",
    "RunError",
    "RunWarning",
    "Skipped",
    "Spectrum",
    "Table",
    "base_weights",
    "delta_overlap",
    "delta_overlaps",
    "delta_vs_weight",
    "energy_ranks",
    "expected_random_similarity",
    "find_run_dirs",
    "intruder_dimensions",
    "left_singular_basis",
    "load_runs",
    "lora_factors",
    "lora_subspace_similarity",
    "parse_module",
    "projected_norm",
    "random_gaussian",
    "random_subspace_similarity",
    "run_deltas",
    "scan_runs",
    "singular_values",
    "sort_modules",
    "spectrum",
    "subspace_similarity",
    "svd",
    "table2",
    "table5",
    "table6",
    "targets_label",
    "to_markdown",
    "top_singular_vectors",
    "write_table",
]
