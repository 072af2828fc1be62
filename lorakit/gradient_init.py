"""LoRA started from the first full fine-tuning gradient (LoRA-GA: Wang et al. 2024, arXiv:2407.05000, §3.2).

With G₀ = ∂L/∂W at the pretrained W (out × in, one backward pass over a fixed batch set; lorakit does not compute
it: the caller passes it, e.g. ``experiments.gradients``) and its SVD G₀ = U S Vᵀ,

    B₀ = ζ · U[:, :r],    A₀ = ζ · V[:, r:2r]ᵀ,    ζ = d_out^{1/4} / √γ,  γ = 16     (the paper's "stable" scale)

and the frozen W is replaced by the residual W − scale·B₀A₀, so the adapted model starts as the pretrained one (as
PiSSA does: ``PiSSALinear``, whose saving, ΔW and reset this layer shares). Why those columns: LoRA's first step
from (A₀, B₀) changes W by −η·scale²·(B₀B₀ᵀG₀ + G₀A₀ᵀA₀) = −η·scale²·ζ²·(U_r S_r V_rᵀ + U_{r:2r} S_{r:2r} V_{r:2r}ᵀ):
the best rank-2r approximation of full fine-tuning's first step −η·G₀, up to a constant.

PEFT's ``init_lora_weights="lora_ga"`` differs in two choices: its default ``direction="ArB2r"`` takes A from V[:, :r]
and B from U[:, r:2r] (the paper's split is PEFT's ``"A2rBr"``), and it multiplies B by the singular values S (and,
for ``scale="stable"``, by ζ), so its init's size follows the gradient's; PEFT also uses a randomised SVD
(``svd_lowrank``). lorakit takes the paper's split and unit singular vectors, with the exact SVD in fp32. The saved
adapter is the plain LoRA of rank 2r that applies the same update to the unmodified pretrained W, which PEFT loads
as it loads a converted LoRA-GA adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import LoRAError
from .linear import features, is_linear
from .pissa import PiSSALinear

STABLE_GAMMA = 16.0  # γ of LoRA-GA's stable scale (the paper's and PEFT's default)


class GradientLinear(PiSSALinear):
    """h = W_res x + b + scale · B A dropout(x), with A₀, B₀ from G₀'s SVD (module docstring) and
    W_res = W − scale·B₀A₀ frozen. ``gradient`` (out × in) is used once, at construction, and not kept."""

    INIT = "gradient"

    def __init__(self, base: nn.Module, r: int, alpha: float, gradient: torch.Tensor, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        object.__setattr__(self, "_gradient", gradient)  # read by initial_factors during LoRALinear.__init__
        try:
            super().__init__(base, r, alpha, dropout, rslora)
        finally:
            object.__delattr__(self, "_gradient")

    @staticmethod
    def check_gradient(base: nn.Module, gradient: torch.Tensor | None, module: str | None) -> None:
        """One line when ``gradient`` is missing, not a finite out × in matrix, or zero (it has no direction)."""
        where = f" for {module}" if module else ""
        if gradient is None:
            raise LoRAError(f"init='gradient' needs G₀ = dL/dW{where}: pass inject_lora(..., gradients={{name: G0}}) "
                            f"with one out x in gradient per adapted module")
        if not is_linear(base):
            return
        in_features, out_features = features(base)
        if tuple(gradient.shape) != (out_features, in_features):
            raise LoRAError(f"init='gradient': G₀{where} has shape {tuple(gradient.shape)}, the layer is "
                            f"{out_features}x{in_features} (out x in)")
        if not bool(torch.isfinite(gradient).all()) or not bool(gradient.abs().max() > 0):
            raise LoRAError(f"init='gradient': G₀{where} is zero or not finite; it has no direction to start from")

    def initial_factors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A₀, B₀) = (ζ·V[:, r:2r]ᵀ, ζ·U[:, :r]) from G₀ = U S Vᵀ (module docstring)."""
        gradient = self._gradient.detach().to(device=weight.device, dtype=torch.float32)
        U, _, Vh = torch.linalg.svd(gradient, full_matrices=False)
        zeta = self.out_features ** 0.25 / STABLE_GAMMA ** 0.5
        return zeta * Vh[self.r : 2 * self.r], zeta * U[:, : self.r]
