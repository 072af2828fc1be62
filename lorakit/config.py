"""LoRA hyper-parameters and target-module presets.

The library takes this small frozen dataclass; Hydra (or any other front end) converts to it once, at the boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence


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
# The MLP's linear layers: BERT/RoBERTa/DeBERTa, LLaMA-style gated MLPs, GPT-2 (Conv1D).
_MLP: tuple[str, ...] = ("intermediate.dense", "output.dense", "gate_proj", "up_proj", "down_proj", "mlp.c_fc",
                         "mlp.c_proj")


def _projection_names(letters: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for letter in "qkvo" if letter in letters for name in _PROJECTIONS[letter]))


TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "qv": _projection_names("qv"),
    "qkvo": _projection_names("qkvo"),
    "all": _projection_names("qkvo") + _MLP,
}

INITS = ("gaussian", "kaiming", "pissa")


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
        if self.freeze_a and self.init == "pissa":
            raise LoRAError(
                "freeze_a=True does not combine with init='pissa' (PiSSA's A holds W's top singular directions "
                "and must train); accepted: freeze_a with init gaussian or kaiming"
            )
        if self.use_dora and self.init == "pissa":
            raise LoRAError(
                "use_dora=True does not combine with init='pissa' (a PiSSA adapter is saved as a plain LoRA of "
                "rank 2r, which DoRA's normalisation rules out); accepted: use_dora with init gaussian or kaiming"
            )
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


def lora_scale(r: int, alpha: float, rslora: bool = False) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r
