"""DoRA: weight-decomposed low-rank adaptation (Liu et al. 2024, arXiv:2402.09353).

DoRA splits the adapted weight into a magnitude and a direction and lets LoRA move the direction only:

    W' = m ⊙ (W₀ + scale·B A) / ‖W₀ + scale·B A‖,

where the norm is the L2 norm of each output row (one value per output feature, the paper's "column norm" of W
stored in × out) and m (one per output feature) is trainable, initialised to ‖W₀‖ so that W' = W₀ at init. As in the
paper (§4.3) and HF PEFT, the norm is treated as a constant in backpropagation: it follows B A in the forward pass but
receives no gradient, which saves the memory of its graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LoRALinear
from .linear import linear_forward


class DoRALinear(LoRALinear):
    """h = g ⊙ (W₀x + scale·B A x) + b with g = m / ‖W₀ + scale·B A‖ (per output row), W₀ and b frozen.

    Adds one trainable Parameter to ``LoRALinear``: ``magnitude`` (out,). ``merge()`` folds W' into ``weight`` and
    ``unmerge()`` restores W₀ bit for bit; ``delta_weight()`` is W' − W₀, the update the adapted model applies, which
    unlike LoRA's is not of rank r (the rescaling of the rows touches all of W₀).
    """

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "gaussian") -> None:
        """A random, B = 0 and m = ‖W₀‖, so the adapted model starts as the pretrained one."""
        super().reset_lora_parameters(init)
        if "magnitude" in self._parameters:
            self.magnitude.copy_(self.weight_norm())
        else:  # the first call, from LoRALinear.__init__: the constructor is LoRALinear's, magnitude is made here
            self.magnitude = nn.Parameter(self.weight_norm())

    @torch.no_grad()
    def weight_norm(self, weight: torch.Tensor | None = None, slot: nn.Module | None = None) -> torch.Tensor:
        """‖W₀ + scale·B A‖ per output row (out,), without gradient (DoRA §4.3). ``weight`` defaults to W₀, ``slot``
        (whose A, B) to the adapter in front."""
        weight = self.base_weight() if weight is None else weight
        slot = self if slot is None else slot
        return torch.linalg.vector_norm(torch.addmm(weight, slot.lora_B, slot.lora_A, alpha=slot.scale), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        if self.merged or not self.active_adapters:  # DoRA layers serve one adapter at a time: the one in front
            return out
        g = self.magnitude / self.weight_norm()
        dropped = self.training and isinstance(self.dropout, nn.Dropout)
        h = self.dropout(x) if dropped else x
        lora = F.linear(F.linear(h, self.lora_A) * self.scale, self.lora_B)
        # W₀x is recovered from the base output instead of a second GEMM with W₀; with dropout active the LoRA path
        # sees dropout(x), and so must the W₀ term it rescales (PEFT's convention, so training matches PEFT's).
        if dropped:
            base = linear_forward(h, self.weight, None, self.fan_in_fan_out)
        else:
            base = out - self.bias if self.bias is not None else out
        # out + (g − 1)·W₀x + g·scale·BAx: at init g = 1 exactly and B = 0, so this is the base output bit for bit.
        return out + (g - 1) * base + g * lora

    def merged_weight(self, name: str | None = None) -> torch.Tensor:
        """W' = g ⊙ (W₀ + scale·B A) (out × in), detached, for the adapter in front or the adapter ``name``."""
        slot = self if name is None else self.slot(name)
        weight = self.base_weight()
        direction = torch.addmm(weight, slot.lora_B.detach(), slot.lora_A.detach(), alpha=slot.scale)
        return (slot.magnitude.detach() / self.weight_norm(weight, slot)).unsqueeze(1) * direction

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """ΔW = W' − W₀ (out × in), detached: what ``merge()`` adds to W₀ (zero with no adapter active), or the
        ΔW of the adapter ``name``."""
        if name is None and not self.active_adapters:
            return torch.zeros_like(self.base_weight())
        return self.merged_weight(name) - self.base_weight()

    def _fold_into_weight(self) -> None:
        """Replace W₀ by W' (``merge()`` calls this under no_grad, with W₀ kept aside and an adapter active)."""
        self.weight.copy_(self.stored(self.merged_weight().to(self.weight.dtype)))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", dora=True"
