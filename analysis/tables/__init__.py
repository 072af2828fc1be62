"""Tables and figure data from the run table: each builder takes ``analysis.runs.scan_runs``'s table and returns
numbers ready to write or plot, or raises ``MissingRuns`` naming the runs it needs."""

from .common import config_names, head_baseline, seed_spread, setting_names, varying_note, weight_runs
from .cross_task import cross_task_agg, cross_task_matrix, cross_task_pairs, cross_task_table
from .forgetting import forgetting_table
from .generation import generation_samples, table3
from .init_drift import init_drift_table
from .interpolation import interpolation_curves
from .intruders import intruder_table, intruder_tables
from .lr_search import lr_search_tables
from .metric_tables import PAPER_TASK_ORDER, table2, table2_verdicts, table5, table6, task_order
from .projection import table7
from .spectra import spectra_table
from .subspace import (
    SubspaceGrids,
    figure3_grids,
    figure4_grids,
    overlap_table,
    subspace_summary,
    subspace_summary_agg,
)
from .table import Table, human_count, to_markdown, write_table
from .truncation import rank_to_keep, truncation_tables

__all__ = [
    "PAPER_TASK_ORDER",
    "SubspaceGrids",
    "Table",
    "config_names",
    "setting_names",
    "cross_task_agg",
    "cross_task_matrix",
    "cross_task_pairs",
    "cross_task_table",
    "figure3_grids",
    "figure4_grids",
    "forgetting_table",
    "generation_samples",
    "head_baseline",
    "human_count",
    "init_drift_table",
    "interpolation_curves",
    "intruder_table",
    "intruder_tables",
    "lr_search_tables",
    "overlap_table",
    "rank_to_keep",
    "seed_spread",
    "spectra_table",
    "subspace_summary",
    "subspace_summary_agg",
    "table2",
    "table2_verdicts",
    "table3",
    "table5",
    "table6",
    "table7",
    "task_order",
    "to_markdown",
    "truncation_tables",
    "varying_note",
    "weight_runs",
]
