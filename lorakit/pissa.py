"""PiSSA: LoRA started from W's principal singular components (Meng et al. 2024, arXiv:2404.02948).

With W = U S Vᵀ, PiSSA sets A = √S_r V_rᵀ / √scale and B = U_r √S_r / √scale, so that scale·B A is W's best rank-r
approximation, and replaces W by the residual W_res = W − scale·B₀A₀ (B₀, A₀: the factors at init). The adapted model
W_res + scale·B A starts as the pretrained one, but training moves W's principal subspace instead of a random one.
This is HF PEFT's ``init_lora_weights="pissa"`` (the exact SVD, in fp32).

Because the frozen weight is no longer the pretrained W, the update against the pretrained model is
ΔW = W_res + scale·B A − W = scale·(B A − B₀A₀), of rank ≤ 2r. That is what ``delta_weight()`` returns, and what the
adapter on disk holds: the plain LoRA [B, −B₀] [A; A₀] of rank 2r with α chosen to keep the scale, which loads on the
unmodified pretrained model (PEFT's ``save_pretrained(path_initial_model_for_weight_conversion=...)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import LoRAError
from .layers import LoRALinear
from .linear import features, is_linear


class PiSSALinear(LoRALinear):
    """h = W_res x + b + scale · B A dropout(x), with W_res = W − scale·B₀A₀ frozen and A, B from W's top-r SVD.

    The forward pass is ``LoRALinear``'s. ``lora_A_init`` and ``lora_B_init`` keep A₀ and B₀ as non-persistent
    buffers: the SVD of the pretrained W gives them again, so a state dict holds the same keys as plain LoRA's.
    """

    INIT = "pissa"

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> None:
        super().__init__(base, r, alpha, dropout, self.INIT, rslora)

    @classmethod
    def check(cls, base: nn.Module, r: int) -> None:
        """LoRALinear's checks, and 2r <= min(in, out): the adapter is saved as a LoRA of rank 2r."""
        if is_linear(base) and 2 * r > min(features(base)):
            in_features, out_features = features(base)
            raise LoRAError(
                f"init={cls.INIT!r} needs 2r <= min(in, out) = {min(in_features, out_features)} for a "
                f"{out_features}x{in_features} linear layer (its adapter is saved as a LoRA of rank 2r), got r={r}"
            )
        super().check(base, r)

    def initial_factors(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A₀, B₀) from W (fp32, out × in): scale·B₀A₀ is W's best rank-r approximation."""
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
        root = torch.sqrt(S[: self.r] / self.scale)
        return root.unsqueeze(1) * Vh[: self.r], U[:, : self.r] * root

    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "pissa") -> None:
        """The first call (from ``__init__``) factors W and replaces it by the residual; later calls set A, B back to
        A₀, B₀, so the adapted model is the pretrained one again."""
        if init != self.INIT:
            raise LoRAError(f"{type(self).__name__} takes init {self.INIT!r}, got {init!r}")
        if "lora_A_init" in self._buffers:
            self.lora_A.copy_(self.lora_A_init)
            self.lora_B.copy_(self.lora_B_init)
            return
        weight = self.base_weight()  # a view: the residual below is written into the stored weight
        A, B = self.initial_factors(weight.float())
        self.lora_A.copy_(A)
        self.lora_B.copy_(B)
        self.register_buffer("lora_A_init", self.lora_A.detach().clone(), persistent=False)
        self.register_buffer("lora_B_init", self.lora_B.detach().clone(), persistent=False)
        weight.copy_(weight.float() - self.scale * B @ A)

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """ΔW = scale · (B A − B₀A₀) (out × in), detached: the update against the pretrained W, not against W_res.
        A PiSSA layer holds one adapter, whose name ``name`` may give."""
        return (self.lora_B.detach() @ self.lora_A.detach() - self.lora_B_init @ self.lora_A_init) * self.scale

    def as_plain_lora(self) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        """(A', B', r', α') of the plain LoRA that applies the same update to the pretrained W.

        A' = [A; A₀] (2r × in), B' = [B, −B₀] (out × 2r), so scale·B'A' = scale·(B A − B₀A₀); r' = 2r, and α' = 2α
        (α·√2 with rsLoRA) keeps α'/r' (α'/√r') equal to the scale — PEFT's conversion, config included.
        """
        A = torch.cat([self.lora_A.detach(), self.lora_A_init], dim=0)
        B = torch.cat([self.lora_B.detach(), -self.lora_B_init], dim=1)
        alpha = self.alpha * (math.sqrt(2) if self.rslora else 2)
        return A, B, 2 * self.r, alpha

    def extra_repr(self) -> str:
        return super().extra_repr() + f", init={self.INIT}"
