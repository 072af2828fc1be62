"""The linear layers lorakit adapts: ``nn.Linear`` (W stored out × in) and GPT-2's ``Conv1D`` (W stored in × out).

GPT-2 (and GPT-1) compute h = x W + b with W of shape in × out, in ``transformers.pytorch_utils.Conv1D``; HF PEFT
calls this storage ``fan_in_fan_out``. It is the same linear map as ``nn.Linear`` with Wᵀ, so lorakit treats both
alike: A is r × in and B is out × r for either (PEFT's shapes too), every ΔW lorakit returns is out × in (the
analyses' convention), and only ``merge()`` writes ΔWᵀ into a ``Conv1D``'s weight. lorakit does not import
transformers: a model holding a ``Conv1D`` has imported its module already, so the type is looked up there.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn


def conv1d_type() -> type | None:
    """transformers' ``Conv1D`` class, or None when transformers is not loaded (then no model can hold one)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def is_conv1d(module: nn.Module) -> bool:
    """True for GPT-2's ``Conv1D``: a linear layer whose weight is stored in × out (PEFT's ``fan_in_fan_out``)."""
    kind = conv1d_type()
    return kind is not None and isinstance(module, kind)


def is_linear(module: nn.Module) -> bool:
    """True for the layers LoRA can wrap: ``nn.Linear`` and GPT-2's ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a linear layer, whichever way it stores W."""
    if is_conv1d(module):
        return tuple(module.weight.shape)
    return module.in_features, module.out_features


def linear_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, fan_in_fan_out: bool
) -> torch.Tensor:
    """W x + b with W stored out × in (``nn.Linear``) or in × out (``Conv1D``), computed as the original layer does,
    so a wrapper with a zero update returns the base model's outputs bit for bit."""
    if not fan_in_fan_out:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    out = torch.addmm(bias, flat, weight) if bias is not None else flat @ weight
    return out.view(*x.shape[:-1], weight.shape[1])
