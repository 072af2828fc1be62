"""The roles the paper's claims give to methods, named once: every other analysis asks a run's identity and facts
(experiments/records.py), never a method's name.

- the reference: full fine-tuning, what "LoRA matches full fine-tuning" (Table 2) and every ΔW control compare to;
- the baseline: the task head alone on the frozen encoder, the level a method's gain is measured from;
- the method under study: LoRA, whose rank, targets and factors Tables 5-7 and Figures 3-4 vary.

A variant of the method under study (DoRA, QLoRA, LoRA+) is studied only where a table asks for every method with
factors (``has_factors``); it never pools with LoRA, since its configuration id differs.
"""

from __future__ import annotations

import pandas as pd

REFERENCE = "full"
BASELINE = "head"
STUDIED = "lora"
# A control, not an arm: a run trained on its task's shuffled labels enters the cross-task tables (and their verdicts)
# as the pseudo-task "‹task› (shuffled labels)".
SHUFFLED_TASK = " (shuffled labels)"


def reference(runs: pd.DataFrame) -> pd.Series:
    """Mask of the reference's runs (full fine-tuning)."""
    return runs["method"].eq(REFERENCE)


def baseline(runs: pd.DataFrame) -> pd.Series:
    """Mask of the baseline's runs (the head alone)."""
    return runs["method"].eq(BASELINE)


def studied(runs: pd.DataFrame) -> pd.Series:
    """Mask of the runs of the method under study (LoRA itself, not its variants)."""
    return runs["method"].eq(STUDIED)


def order(runs: pd.DataFrame) -> pd.Series:
    """A row order for method tables: the reference first, the method under study, the others by label, the
    baseline last."""
    return reference(runs).map({True: 0, False: 2}).where(~studied(runs), 1).where(~baseline(runs), 9)
