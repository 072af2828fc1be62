"""The LoRA layer: a frozen linear map plus a trainable low-rank update (Hu et al. 2021, §4.1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoRAError, lora_scale
from .linear import features, is_conv1d, is_linear, linear_forward


class LoRALinear(nn.Module):
    """h = W₀x + b + scale · B A dropout(x), with W₀ and b frozen.

    The module adopts the ``weight`` and ``bias`` Parameters of the ``nn.Linear`` it replaces, so the base model's
    state-dict keys are unchanged and a pretrained checkpoint still loads strictly; the update adds ``lora_A``
    (r × in) and ``lora_B`` (out × r). The low-rank path is computed as (x Aᵀ) Bᵀ: O(r·(in + out)) per token and no
    out × in matrix, except when ``merge()`` folds scale·B·A into W for inference. GPT-2's ``Conv1D`` (W stored
    in × out) is wrapped alike, with ``fan_in_fan_out`` set: A and B keep their shapes and ΔW stays out × in
    (``lorakit.linear``).

    A layer can hold several named adapters (``lorakit.adapters``). The one named ``adapter_name`` sits in the
    layer's own ``lora_A``/``lora_B``/``r``/``scale``/``dropout``, so a model with one adapter is exactly the layer
    above; the others wait in ``lora_stash`` (a ``ModuleDict`` of ``LoRASlot``, created when a second adapter
    arrives). The ``active_adapters`` (in front: ``adapter_name``) add their updates: h = W₀x + b + Σᵢ scaleᵢ·BᵢAᵢx.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        init: str = "gaussian",
        rslora: bool = False,
    ) -> None:
        super().__init__()
        self.check(base, r)
        self.in_features, self.out_features = features(base)
        self.fan_in_fan_out = is_conv1d(base)
        self.r, self.alpha, self.rslora = r, float(alpha), rslora
        self.scale = lora_scale(r, alpha, rslora)
        self.weight = base.weight
        self.bias = base.bias
        object.__setattr__(self, "base_layer", base)  # not a submodule: put back when its last adapter is deleted
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.adapter_name = "default"
        self.active_adapters: tuple[str, ...] = ("default",)
        self.merged = False
        # W₀ kept while merged, so unmerge() restores it bit for bit rather than up to rounding of W₀ + ΔW − ΔW.
        self._unmerged_weight: torch.Tensor | None = None
        self.reset_lora_parameters(init)

    @classmethod
    def check(cls, base: nn.Module, r: int) -> None:
        """Raise the one-line ``LoRAError`` this class's constructor would raise for ``base`` and ``r``, before any
        layer is built (so a refused injection leaves the model as it was)."""
        if not is_linear(base):
            raise LoRAError(f"{cls.__name__} wraps nn.Linear, got {type(base).__name__}; accepted: nn.Linear and "
                            f"GPT-2's Conv1D")
        in_features, out_features = features(base)
        if not 0 < r <= min(in_features, out_features):
            raise LoRAError(
                f"rank r={r} must be in [1, min(in, out)] = [1, {min(in_features, out_features)}] "
                f"for a {out_features}x{in_features} linear layer"
            )

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "gaussian") -> None:
        """A random, B = 0, so ΔW = 0 and the adapted model starts as the pretrained one."""
        if init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / self.r)
        elif init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        else:
            raise LoRAError(f"LoRALinear takes init gaussian or kaiming, got {init!r} (init 'pissa' is PiSSALinear)")
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        if self.merged or not self.active_adapters:
            return out
        # The scale multiplies the narrow (…, r) activation, and the GEMM with B accumulates into W₀x + b in place of
        # an add: no extra pass over the wide (…, out) output, forward or backward — on a CPU, where such passes are
        # memory-bound, they cost more than the rank-r matmuls themselves.
        if len(self.active_adapters) == 1:  # one adapter, the one in front: the layer's own factors
            h = F.linear(self.dropout(x), self.lora_A) * self.scale
            flat = torch.addmm(out.reshape(-1, self.out_features), h.reshape(-1, self.r), self.lora_B.t())
            return flat.view(out.shape)
        flat = out.reshape(-1, self.out_features)
        for slot in self.active_slots():
            h = F.linear(slot.dropout(x), slot.lora_A) * slot.scale
            flat = torch.addmm(flat, h.reshape(-1, slot.r), slot.lora_B.t())
        return flat.view(out.shape)

    def lora_weight(self) -> torch.Tensor:
        """Σ scale · B A over the active adapters (out × in), detached: the low-rank path as a matrix, what
        ``merge()`` adds to W."""
        slots = self.active_slots()
        if not slots:
            return torch.zeros_like(self.base_weight())
        total = (slots[0].lora_B.detach() @ slots[0].lora_A.detach()) * slots[0].scale
        for slot in slots[1:]:
            total = total + (slot.lora_B.detach() @ slot.lora_A.detach()) * slot.scale
        return total

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """ΔW = scale · B A (out × in), detached: the update against the pretrained W, of the active adapters (their
        sum), or of the adapter ``name``."""
        if name is None:
            return self.lora_weight()
        slot = self.slot(name)
        return (slot.lora_B.detach() @ slot.lora_A.detach()) * slot.scale

    def base_weight(self) -> torch.Tensor:
        """W₀ (out × in), detached, also while merged: a view of the stored weight (transposed for ``Conv1D``)."""
        return self.stored((self._unmerged_weight if self.merged else self.weight).detach())

    def stored(self, matrix: torch.Tensor) -> torch.Tensor:
        """An out × in matrix in the layout of ``weight`` (in × out for ``Conv1D``), and back: a view, no copy."""
        return matrix.t() if self.fan_in_fan_out else matrix

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the active adapters' Σ scale · B A into W for inference; a no-op when already merged."""
        if self.merged:
            return
        self._unmerged_weight = self.weight.detach().clone()
        if self.active_adapters:
            self._fold_into_weight()
        self.merged = True

    def _fold_into_weight(self) -> None:
        """Add Σ scale · B A to W (``merge()`` calls this under no_grad, with W₀ kept aside and an adapter active);
        DoRA replaces it."""
        self.weight.add_(self.stored(self.lora_weight()).to(self.weight.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W₀ exactly; a no-op when not merged."""
        if not self.merged:
            return
        self.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    # --- named adapters (lorakit.adapters drives these; every name here has been checked there) ------------------

    @property
    def adapter_names(self) -> list[str]:
        """The adapters this layer holds, the one in front first."""
        return [self.adapter_name, *(self.lora_stash if "lora_stash" in self._modules else ())]

    def slot(self, name: str) -> nn.Module:
        """The adapter ``name``'s factors: the layer itself for the one in front, else its ``LoRASlot``."""
        return self if name == self.adapter_name else self.lora_stash[name]

    def active_slots(self) -> list[nn.Module]:
        return [self.slot(name) for name in self.active_adapters]

    @torch.no_grad()
    def add_adapter(self, name: str, A: torch.Tensor, B: torch.Tensor, alpha: float, rslora: bool = False,
                    dropout: float = 0.0, magnitude: torch.Tensor | None = None) -> None:
        """Hold another adapter (A: r × in, B: out × r), inactive and frozen until ``set_active`` names it."""
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        A, B, magnitude = (None if t is None else nn.Parameter(t.detach().to(**factory).clone(), requires_grad=False)
                           for t in (A, B, magnitude))
        if "lora_stash" not in self._modules:
            self.lora_stash = nn.ModuleDict()
        self.lora_stash[name] = LoRASlot(A, B, alpha, rslora, dropout, magnitude)

    def set_active(self, names: tuple[str, ...]) -> None:
        """Make ``names`` (those this layer holds) the active adapters, the first brought in front; unmerges first."""
        self.unmerge()
        names = tuple(name for name in names if name in self.adapter_names)
        if names and names[0] != self.adapter_name:
            self._bring_to_front(names[0])
        self.active_adapters = names

    def remove_adapter(self, name: str) -> bool:
        """Drop the adapter ``name``; False when the layer then holds none (its owner puts the base layer back)."""
        self.unmerge()
        self.active_adapters = tuple(n for n in self.active_adapters if n != name)
        if name == self.adapter_name:
            others = [n for n in self.adapter_names if n != name]
            if not others:
                return False
            self._bring_to_front((self.active_adapters or others)[0])
        del self.lora_stash[name]
        if not len(self.lora_stash):
            del self.lora_stash
        return True

    def _bring_to_front(self, name: str) -> None:
        """Swap the adapter ``name`` with the one in front: the Parameters move (an optimizer keeps its state)."""
        incoming = self.lora_stash[name]
        front = {key: self._parameters[key] for key in ("lora_A", "lora_B", "magnitude") if key in self._parameters}
        outgoing = LoRASlot(front["lora_A"], front["lora_B"], self.alpha, self.rslora, 0.0, front.get("magnitude"))
        outgoing.dropout = self.dropout
        for key in front:
            setattr(self, key, incoming._parameters[key])
        self.dropout = incoming.dropout
        self.r, self.alpha, self.rslora, self.scale = incoming.r, incoming.alpha, incoming.rslora, incoming.scale
        del self.lora_stash[name]
        self.lora_stash[self.adapter_name] = outgoing
        self.adapter_name = name

    def extra_repr(self) -> str:
        names = self.adapter_names
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha:g}, "
            f"scale={self.scale:g}, merged={self.merged}" + (", fan_in_fan_out=True" if self.fan_in_fan_out else "")
            + (f", adapters={names}, active={list(self.active_adapters)}" if len(names) > 1 else "")
        )


class LoRASlot(nn.Module):
    """One named adapter of a ``LoRALinear``, kept aside while another sits in front: ``lora_A`` (r × in),
    ``lora_B`` (out × r), DoRA's ``magnitude`` if any, its own dropout, r, α and scale."""

    def __init__(self, lora_A: nn.Parameter, lora_B: nn.Parameter, alpha: float, rslora: bool = False,
                 dropout: float = 0.0, magnitude: nn.Parameter | None = None) -> None:
        super().__init__()
        self.lora_A, self.lora_B = lora_A, lora_B
        if magnitude is not None:
            self.magnitude = magnitude
        self.r, self.alpha, self.rslora = lora_A.shape[0], float(alpha), rslora
        self.scale = lora_scale(self.r, alpha, rslora)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scale={self.scale:g}"
