"""Analyses of LoRA and full fine-tuning updates (Hu et al. 2021, §7) and the paper's tables and figures.

Three layers, each using only the ones before it:
- ``analysis.maths``: pure maths on tensors (``spectrum``, ``subspace_similarity``, ``delta_vs_weight``,
  ``intruder_dimensions``, ...), with the controls every measurement is read against;
- ``analysis.runs``: reading run folders into a table and tensors, module names, choosing runs;
- ``analysis.tables``: a table (and figure data) per analysis from the run table (``table2``, ...);
then ``analysis.plots`` draws and ``python -m analysis`` (the command, analysis/command.py) turns run folders into files.
"""

from __future__ import annotations

import importlib

# Where each public name lives. Loaded on first use (PEP 562), so `import analysis.maths` from a training run pulls in
# the maths alone, never the run reader, the tables or matplotlib.
_HOMES: dict[str, str] = {
    **dict.fromkeys((
        'Table', 'table2', 'table5', 'table6', 'to_markdown', 'write_table'
    ), 'tables'),
    **dict.fromkeys((
        'FactorDrift', 'Interval', 'Intruders', 'Projection', 'Spectrum', 'best_rank_k', 'delta_overlap',
        'delta_overlaps', 'delta_vs_weight', 'energy_ranks', 'expected_random_similarity', 'factor_drift',
        'intruder_dimensions', 'intruders_at_norm', 'left_singular_basis', 'lora_subspace_similarity',
        'noise_floor', 'projected_norm', 'random_gaussian', 'random_projection', 'random_subspace_overlap',
        'random_subspace_similarity', 'signal_rank', 'singular_subspaces', 'singular_values', 'spectrum',
        'subspace_overlap', 'subspace_similarity', 'svd', 'top_singular_vectors', 'truncate_deltas'
    ), 'maths'),
    **dict.fromkeys((
        'KINDS', 'KIND_LABELS', 'MissingRuns', 'ModuleId', 'RunError', 'RunWarning', 'Skipped', 'base_weights',
        'find_run_dirs', 'load_runs', 'lora_factors', 'parse_module', 'run_deltas', 'scan_runs', 'sort_modules',
        'targets_label'
    ), 'runs'),
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
