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
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
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
        if self.merged:
            return out
        # The scale multiplies the narrow (…, r) activation, and the GEMM with B accumulates into W₀x + b in place of
        # an add: no extra pass over the wide (…, out) output, forward or backward — on a CPU, where such passes are
        # memory-bound, they cost more than the rank-r matmuls themselves.
        h = F.linear(self.dropout(x), self.lora_A) * self.scale
        return torch.addmm(out.reshape(-1, self.out_features), h.reshape(-1, self.r), self.lora_B.t()).view(out.shape)

    def lora_weight(self) -> torch.Tensor:
        """scale · B A (out × in), detached: the low-rank path as a matrix, what ``merge()`` adds to W."""
        return (self.lora_B.detach() @ self.lora_A.detach()) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """ΔW = scale · B A (out × in), detached: the update against the pretrained W."""
        return self.lora_weight()

    def base_weight(self) -> torch.Tensor:
        """W₀ (out × in), detached, also while merged: a view of the stored weight (transposed for ``Conv1D``)."""
        return self.stored((self._unmerged_weight if self.merged else self.weight).detach())

    def stored(self, matrix: torch.Tensor) -> torch.Tensor:
        """An out × in matrix in the layout of ``weight`` (in × out for ``Conv1D``), and back: a view, no copy."""
        return matrix.t() if self.fan_in_fan_out else matrix

    @torch.no_grad()
    def merge(self) -> None:
        """Fold scale · B A into W for inference; a no-op when already merged."""
        if self.merged:
            return
        self._unmerged_weight = self.weight.detach().clone()
        self.weight.add_(self.stored(self.lora_weight()).to(self.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W₀ exactly; a no-op when not merged."""
        if not self.merged:
            return
        self.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, alpha={self.alpha:g}, "
            f"scale={self.scale:g}, merged={self.merged}" + (", fan_in_fan_out=True" if self.fan_in_fan_out else "")
        )
