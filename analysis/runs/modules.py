"""Parse module names (``bert.encoder.layer.3.attention.self.query``) into a layer index and a module kind.

Kinds follow the paper's notation: ``q``, ``k``, ``v``, ``o`` for W_q, W_k, W_v, W_o, and ``ffn_in`` / ``ffn_out``
for the MLP's two linears. BERT, RoBERTa, DeBERTa-v2 and LLaMA-style names are recognised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")  # ffn_gate: LLaMA's gated MLP has two input linears
KIND_LABELS = {"q": "Wq", "k": "Wk", "v": "Wv", "o": "Wo", "ffn_gate": "FFN gate", "ffn_in": "FFN in",
               "ffn_out": "FFN out"}

# Most specific suffix first: "attention.output.dense" must win over the MLP's "output.dense".
_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("attention.output.dense", "o"),
    ("intermediate.dense", "ffn_in"),
    ("output.dense", "ffn_out"),
    ("query", "q"),
    ("query_proj", "q"),
    ("q_proj", "q"),
    ("key", "k"),
    ("key_proj", "k"),
    ("k_proj", "k"),
    ("value", "v"),
    ("value_proj", "v"),
    ("v_proj", "v"),
    ("o_proj", "o"),
    ("up_proj", "ffn_in"),
    ("gate_proj", "ffn_gate"),
    ("down_proj", "ffn_out"),
)
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)(?:\.|$)")


@dataclass(frozen=True, order=True)
class ModuleId:
    """Where a linear layer sits: ``layer`` (None when the name has no index) and ``kind`` (one of KINDS or the
    last name component when unrecognised)."""

    layer: int | None
    kind: str

    @property
    def label(self) -> str:
        where = f"L{self.layer} " if self.layer is not None else ""
        return where + KIND_LABELS.get(self.kind, self.kind)


def parse_module(name: str) -> ModuleId:
    """``"roberta.encoder.layer.11.attention.self.value"`` -> ModuleId(layer=11, kind="v")."""
    match = _LAYER.search(name)
    layer = int(match.group(1)) if match else None
    for suffix, kind in _SUFFIXES:
        if name == suffix or name.endswith("." + suffix):
            return ModuleId(layer, kind)
    return ModuleId(layer, name.rsplit(".", 1)[-1])


def kind_order(kind: str) -> int:
    return KINDS.index(kind) if kind in KINDS else len(KINDS)


def sort_modules(names: list[str]) -> list[str]:
    """Module names ordered by layer, then q, k, v, o, ffn_in, ffn_out."""

    def key(name: str) -> tuple[int, int, str]:
        mid = parse_module(name)
        return (-1 if mid.layer is None else mid.layer, kind_order(mid.kind), name)

    return sorted(names, key=key)


def find_module(names: list[str], layer: int, kind: str) -> str | None:
    """The one name among ``names`` at ``layer`` of ``kind``, or None."""
    hits = [n for n in names if parse_module(n) == ModuleId(layer, kind)]
    return hits[0] if hits else None


def targets_label(targets: str | None) -> str:
    """A target preset as the paper writes it: ``"qv"`` -> ``"Wq, Wv"``; ``"all"`` -> ``"all (attn + MLP)"``."""
    if targets is None or targets != targets:  # None or NaN from pandas
        return "—"
    t = str(targets)
    if t == "all":
        return "all (attn + MLP)"
    if t and set(t) <= set("qkvo"):
        return ", ".join(KIND_LABELS[c] for c in "qkvo" if c in t)
    return t
