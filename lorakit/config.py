"""LoRA hyper-parameters and target-module presets.

The library takes this small frozen dataclass; Hydra (or any other front end) converts to it once, at the boundary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence


class LoRAError(ValueError):
    """A bad LoRA input: the message is one line saying what is wrong and what is accepted."""


# One letter per attention projection (the paper's W_q, W_k, W_v, W_o). Each letter lists the module-name aliases of
# the architectures we run: BERT/RoBERTa ("query"), DeBERTa-v2 ("query_proj"), LLaMA-style models ("q_proj") and GPT-2.
# A name matches a module whose full name equals it or ends with "." + it, so "attention.output.dense" picks W_o of
# BERT/RoBERTa/DeBERTa without catching the MLP's "output.dense", and "attn.c_proj" GPT-2's W_o without "mlp.c_proj".
# GPT-2 fuses W_q, W_k and W_v into one Conv1D, "c_attn" (d -> 3d): each of q, k, v names it, so "qv" on GPT-2 adapts
# all three (PEFT's GPT-2 default), with r·(d + 3d) parameters per layer, the count of the paper's separate W_q and
# W_v adapters, r·2·(d + d).
_FUSED_QKV = "c_attn"
_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "q": ("query", "query_proj", "q_proj", _FUSED_QKV),
    "k": ("key", "key_proj", "k_proj", _FUSED_QKV),
    "v": ("value", "value_proj", "v_proj", _FUSED_QKV),
    "o": ("attention.output.dense", "o_proj", "attn.c_proj"),
}
# The MLP's linear layers, each with its role: BERT/RoBERTa/DeBERTa, LLaMA-style gated MLPs, GPT-2 (Conv1D).
_MLP_KINDS: dict[str, str] = {"intermediate.dense": "ffn_in", "output.dense": "ffn_out", "gate_proj": "ffn_gate",
                              "up_proj": "ffn_in", "down_proj": "ffn_out", "mlp.c_fc": "ffn_in", "mlp.c_proj": "ffn_out"}
_MLP: tuple[str, ...] = tuple(_MLP_KINDS)


def _projection_names(letters: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for letter in "qkvo" if letter in letters for name in _PROJECTIONS[letter]))


def module_kinds() -> tuple[tuple[str, str], ...]:
    """(module-name suffix, kind) for every name the presets know, most specific suffix first (so
    "attention.output.dense" is W_o before "output.dense" is the MLP's): the one table from which the analyses read
    what a module is. Kinds: q, k, v, o, ``qkv`` (GPT-2's fused ``c_attn``), ffn_in, ffn_gate, ffn_out."""
    kinds = {name: letter for letter, names in _PROJECTIONS.items() for name in names if name != _FUSED_QKV}
    kinds |= {_FUSED_QKV: "qkv", **_MLP_KINDS}
    return tuple(sorted(kinds.items(), key=lambda item: -item[0].count(".")))


TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "qv": _projection_names("qv"),
    "qkvo": _projection_names("qkvo"),
    "all": _projection_names("qkvo") + _MLP,
}

_KIND_NAMES = {"q": "Wq", "k": "Wk", "v": "Wv", "o": "Wo"}


def describe_targets(targets: str | Sequence[str] | None) -> str:
    """A target preset as the paper writes it: ``"qv"`` → ``"Wq, Wv"``; ``"all"`` → ``"all (attn + MLP)"``; a list of
    names (or their comma-joined text) as given."""
    if targets is None or targets != targets:  # None, or NaN from a table
        return "—"
    if not isinstance(targets, str):
        return ",".join(targets)
    if targets == "all":
        return "all (attn + MLP)"
    if targets and set(targets) <= set(_PROJECTIONS):
        return ", ".join(_KIND_NAMES[c] for c in "qkvo" if c in targets)
    return targets


INITS = ("gaussian", "kaiming", "pissa", "gradient")
# Inits that replace the frozen W by a residual, so the adapter is saved as a plain LoRA of rank 2r (lorakit.pissa).
RESIDUAL_INITS = ("pissa", "gradient")


def resolve_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Turn a preset or a list of module names into module names.

    Presets: ``"all"`` (every linear layer of attention and MLP), or any string of the letters q, k, v, o (``"q"``,
    ``"qk"``, ``"qv"``, ``"qkvo"``, ...) naming attention projections, for BERT, RoBERTa, DeBERTa-v2, LLaMA-style and
    GPT-2 module names. A sequence of names is returned as given.
    """
    if isinstance(targets, str):
        if targets in TARGET_PRESETS:
            return TARGET_PRESETS[targets]
        letters = targets.lower()
        if letters and set(letters) <= set(_PROJECTIONS) and len(set(letters)) == len(letters):
            return _projection_names(letters)
        raise LoRAError(
            f"unknown target preset {targets!r}; accepted: 'all', any combination of the letters q, k, v, o "
            f"(e.g. 'qv', 'qkvo'), or a list of module names"
        )
    names = tuple(targets)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise LoRAError(f"targets must be a preset or a non-empty list of module names, got {targets!r}")
    return names


@dataclass(frozen=True)
class LoRAConfig:
    """How to adapt a model: ΔW = scale · B A with A (r × in) and B (out × r), scale = α / r (Hu et al. 2021, §4.1).

    Attributes:
        r: rank of the update.
        alpha: the constant α; the paper sets α to the first r it tries and does not tune it.
        dropout: dropout on the LoRA path's input.
        targets: module names, or a preset (see ``resolve_targets``).
        init: ``"gaussian"`` — A ~ N(0, 1/r²), B = 0 (the paper's random Gaussian A; PEFT's ``"gaussian"``),
            ``"kaiming"`` — Kaiming-uniform A, B = 0 (loralib and PEFT's default), or ``"pissa"`` — A, B from the top-r
            singular triplets of W and W replaced by the residual (Meng et al. 2024; ``PiSSALinear``).
        rslora: scale by α / √r instead of α / r (Kalajdzievski 2023), keeping the update's size stable across ranks.
        trainable: modules left trainable besides LoRA (the task head), matched like targets.
        use_dora: DoRA (Liu et al. 2024): W' = m ⊙ (W₀ + scale·B A) / ‖W₀ + scale·B A‖, with a trainable magnitude
            m per output row (``DoRALinear``).
        freeze_a: LoRA-FA (Zhu et al. 2024): A stays at its random init and only B trains.
        rank_pattern, alpha_pattern: a rank (α) per module, overriding ``r`` (``alpha``) where a pattern matches, with
            PEFT's semantics (``pattern_key``): patterns are regular expressions tried in order, and the first one
            matching the module's full name, or a dot-separated suffix of it, gives the value. Given as a mapping;
            held as a tuple of (pattern, value) pairs, in order, so the config stays frozen and hashable.
        init ``"gradient"``: LoRA-GA (Wang et al. 2024): A, B from the SVD of G₀ = ∂L/∂W at the pretrained W, W
            replaced by the residual so the model starts unchanged (``GradientLinear``; ``inject_lora(...,
            gradients=)`` takes G₀ per module).
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: str | tuple[str, ...] = "qv"
    init: str = "gaussian"
    rslora: bool = False
    trainable: tuple[str, ...] = field(default=("classifier",))
    use_dora: bool = False
    freeze_a: bool = False
    rank_pattern: Mapping[str, int] | tuple[tuple[str, int], ...] = ()
    alpha_pattern: Mapping[str, float] | tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise LoRAError(f"rank r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise LoRAError(f"alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            raise LoRAError(f"unknown init {self.init!r}; accepted: {', '.join(INITS)}")
        for flag in ("use_dora", "freeze_a", "rslora"):
            if not isinstance(getattr(self, flag), bool):
                raise LoRAError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.freeze_a and self.init in RESIDUAL_INITS:
            raise LoRAError(
                f"freeze_a=True does not combine with init={self.init!r} (its A holds W's or G₀'s top singular "
                f"directions and must train); accepted: freeze_a with init gaussian or kaiming"
            )
        if self.use_dora and self.init in RESIDUAL_INITS:
            raise LoRAError(
                f"use_dora=True does not combine with init={self.init!r} (the adapter is saved as a plain LoRA of "
                f"rank 2r, which DoRA's normalisation rules out); accepted: use_dora with init gaussian or kaiming"
            )
        object.__setattr__(self, "rank_pattern", pattern_pairs(self.rank_pattern, "rank_pattern", integer=True))
        object.__setattr__(self, "alpha_pattern", pattern_pairs(self.alpha_pattern, "alpha_pattern", integer=False))
        if not isinstance(self.targets, str):
            object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "trainable", tuple(self.trainable))
        resolve_targets(self.targets)

    @property
    def scale(self) -> float:
        return lora_scale(self.r, self.alpha, self.rslora)

    @property
    def target_names(self) -> tuple[str, ...]:
        return resolve_targets(self.targets)

    def rank_for(self, module: str) -> int:
        """The rank of the module named ``module``: its ``rank_pattern`` entry, else ``r``."""
        key = pattern_key([p for p, _ in self.rank_pattern], module)
        return dict(self.rank_pattern)[key] if key is not None else self.r

    def alpha_for(self, module: str) -> float:
        """The α of the module named ``module``: its ``alpha_pattern`` entry, else ``alpha``."""
        key = pattern_key([p for p, _ in self.alpha_pattern], module)
        return float(dict(self.alpha_pattern)[key]) if key is not None else float(self.alpha)

    def scale_for(self, module: str) -> float:
        return lora_scale(self.rank_for(module), self.alpha_for(module), self.rslora)


def pattern_key(patterns: Sequence[str], module: str) -> str | None:
    """The first of ``patterns`` matching the module name ``module``, or None: PEFT's ``get_pattern_key`` rule — a
    pattern is a regular expression that must match the whole name, or the part after some ".":
    ``re.match(rf"(.*\\.)?({pattern})$", module)``. So ``"query"`` picks every ``....query``, ``"layer.0.*query"`` one
    layer's, and ``"^bert.encoder.layer.0.attention.self.query"`` exactly that module."""
    for pattern in patterns:
        if re.match(rf"(.*\.)?({pattern})$", module):
            return pattern
    return None


def pattern_pairs(value, what: str, integer: bool) -> tuple[tuple[str, int | float], ...]:
    """A pattern mapping (or pairs) checked and frozen: keys compile as regular expressions, values are positive
    integers (ranks) or positive numbers (α)."""
    pairs = tuple(value.items()) if isinstance(value, Mapping) else tuple(tuple(p) for p in value or ())
    accepted = "positive integers" if integer else "positive numbers"
    for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str) or not pair[0]:
            raise LoRAError(f"{what} maps module-name patterns to {accepted}, got the entry {pair!r}")
        pattern, number = pair
        try:
            re.compile(pattern)
        except re.error as err:
            raise LoRAError(f"{what} key {pattern!r} is not a regular expression ({err}); keys are module-name "
                            f"patterns as in PEFT") from None
        bad = (isinstance(number, bool) or not isinstance(number, (int, float)) or not number > 0
               or (integer and not float(number).is_integer()) or not math.isfinite(number))
        if bad:
            raise LoRAError(f"{what}[{pattern!r}] = {number!r}; accepted: {accepted}")
    return tuple((p, int(n) if integer else float(n)) for p, n in pairs)


def lora_scale(r: int, alpha: float, rslora: bool = False) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r
