"""The result ``Table`` every builder returns, and its writers: CSV (the numbers, unrounded) and Markdown (for
reading: title, table, notes, the runs it came from)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from ..runs import runs_footnote


# Interval columns beside a value column ``v``: ``v min`` / ``v max`` (spread over seeds) and ``v 2.5%`` /
# ``v 97.5%`` (a 95% interval). In Markdown the three read as one cell, 'v [lo, hi]'.
INTERVAL_SUFFIXES = ((" min", " max"), (" 2.5%", " 97.5%"))


@dataclass
class Table:
    """A result table with its title, the runs it came from and notes for the reader.

    ``left_out``: runs the analysis could not use and why ('label: no ΔW (method=bitfit)'); ``missing_controls``:
    the controls absent from the runs, each saying which runs would give it. Both are written under the table and
    listed in index.md.
    """

    frame: pd.DataFrame
    title: str
    runs: list[str]
    notes: list[str] = field(default_factory=list)
    formats: dict[str, Callable[[object], str]] = field(default_factory=dict)
    float_format: str | None = None
    left_out: list[str] = field(default_factory=list)
    missing_controls: list[str] = field(default_factory=list)


def _cell(value: object, fmt: Callable[[object], str] | None, float_format: str | None = None) -> str:
    if fmt is not None and not _missing(value):
        return fmt(value)
    if _missing(value):
        return "—"
    if isinstance(value, float) and float_format:
        return format(value, float_format)
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value).replace("|", "\\|")


def _missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def to_markdown(
    frame: pd.DataFrame, formats: dict[str, Callable[[object], str]] | None = None, float_format: str | None = None
) -> str:
    """A GitHub-flavoured Markdown table; numeric columns right-aligned, missing cells as '—'.

    ``formats`` maps a column to a formatter; other floats use ``float_format`` (e.g. ``".2f"``) or one decimal.
    A column ``v`` with ``v min`` and ``v max`` (or ``v 2.5%`` and ``v 97.5%``) beside it is shown as one cell,
    'v [lo, hi]'; a min–max equal to the value (one seed, or seeds that agree) shows the value alone.
    """
    formats = formats or {}
    bounds = {c: (c + lo, c + hi) for c in frame.columns for lo, hi in INTERVAL_SUFFIXES
              if c + lo in frame.columns and c + hi in frame.columns}  # fmt: skip
    hidden = {b for pair in bounds.values() for b in pair}
    columns = [c for c in frame.columns if c not in hidden]
    header = [str(c).replace("|", "\\|") for c in columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in columns]

    def cell(rec: dict, c: str) -> str:
        text = _cell(rec[c], formats.get(c), float_format)
        if c not in bounds or _missing(rec[c]):
            return text
        lo, hi = (rec[b] for b in bounds[c])
        if _missing(lo) or _missing(hi) or (bounds[c][0].endswith(" min") and lo == hi == rec[c]):
            return text
        return f"{text} [{_cell(lo, formats.get(c), float_format)}, {_cell(hi, formats.get(c), float_format)}]"

    rows = [[cell(rec, c) for c in columns] for rec in frame.to_dict("records")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(table: Table, out: Path, stem: str) -> list[Path]:
    """``out/stem.csv`` (unrounded) and ``out/stem.md`` (title, table, notes, source runs)."""
    out.mkdir(parents=True, exist_ok=True)
    csv, md = out / f"{stem}.csv", out / f"{stem}.md"
    table.frame.to_csv(csv, index=False)
    notes = "".join(f"\n{n}\n" for n in table.notes)
    notes += "".join(f"\nMissing control: {m}\n" for m in table.missing_controls)
    if table.left_out:
        notes += "\nLeft out: " + "; ".join(table.left_out) + "\n"
    body = to_markdown(table.frame, table.formats, table.float_format)
    md.write_text(f"## {table.title}\n\n{body}{notes}\n_{runs_footnote(table.runs)}_\n")
    return [csv, md]


def human_count(n: object) -> str:
    """74498 -> '74.5K', 22788866 -> '22.8M' (the paper's '0.3M' style)."""
    n = float(n)  # type: ignore[arg-type]
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"
