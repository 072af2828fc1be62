"""Parse module names (``bert.encoder.layer.3.attention.self.query``) into a layer index and a module kind.

Kinds follow the paper's notation: ``q``, ``k``, ``v``, ``o`` for W_q, W_k, W_v, W_o, and ``ffn_in`` / ``ffn_out``
for the MLP's two linears. BERT, RoBERTa, DeBERTa-v2, LLaMA-style and GPT-2 names are recognised: the table is lorakit's
(``lorakit.config.module_kinds``), the one the target presets use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lorakit.config import describe_targets, module_kinds

KINDS = ("q", "k", "v", "o", "qkv", "ffn_gate", "ffn_in", "ffn_out")  # ffn_gate: LLaMA's gated MLP; qkv: GPT-2's c_attn
KIND_LABELS = {"q": "Wq", "k": "Wk", "v": "Wv", "o": "Wo", "qkv": "Wqkv", "ffn_gate": "FFN gate", "ffn_in": "FFN in",
               "ffn_out": "FFN out"}
# lorakit's module-name table (the names its target presets know), most specific suffix first.
_SUFFIXES: tuple[tuple[str, str], ...] = module_kinds()
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
    return describe_targets(targets)
