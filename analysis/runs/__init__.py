"""Reading run folders (docs/CONTRACTS.md): the run table, the tensors behind each run, module names, and which runs
each analysis looks at."""

from .folders import (
    CLASSIFICATION,
    MissingRuns,
    RunError,
    RunWarning,
    Skipped,
    find_run_dirs,
    load_runs,
    read_best,
    read_generations,
    read_truncation,
    runs_footnote,
    runs_table,
    scan_runs,
    short_path,
)
from .modules import KIND_LABELS, KINDS, ModuleId, parse_module, sort_modules, targets_label
from .tensors import base_weights, init_factors, lora_factors, num_labels, run_base_weights, run_deltas

__all__ = [
    "CLASSIFICATION",
    "KINDS",
    "KIND_LABELS",
    "MissingRuns",
    "ModuleId",
    "RunError",
    "RunWarning",
    "Skipped",
    "base_weights",
    "find_run_dirs",
    "init_factors",
    "load_runs",
    "lora_factors",
    "num_labels",
    "parse_module",
    "read_best",
    "read_generations",
    "read_truncation",
    "run_base_weights",
    "run_deltas",
    "runs_footnote",
    "runs_table",
    "scan_runs",
    "short_path",
    "sort_modules",
    "targets_label",
]
