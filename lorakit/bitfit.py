"""BitFit: train the bias terms alone (Ben Zaken et al. 2022, arXiv:2106.10199).

Every bias vector of the model trains — attention's query/key/value/output, the FFN's two projections and the layer
norms' β (the paper's b^{m,ℓ}_{·} and b^ℓ_{LN}) — and so does the task head; every weight stays frozen. On
RoBERTa-base that is 0.1M parameters outside the head (Hu et al. 2021, Table 2's BitFit row).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from .inject import freeze_except, matches_any_prefix


def apply_bitfit(model: nn.Module, head: Iterable[str] = ("classifier",)) -> list[str]:
    """Freeze every parameter but the biases and those of the ``head`` modules (matched like LoRA targets); returns
    the names of the parameters left trainable, in model order."""
    freeze_except(model, head)
    for _, module in _bias_modules(model):
        module.bias.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def count_bitfit_parameters(model: nn.Module, head: Iterable[str] = ("classifier",)) -> int:
    """Bias parameters outside the ``head`` modules: what BitFit trains, as the paper counts it (head excluded)."""
    head = tuple(head)
    return sum(module.bias.numel() for name, module in _bias_modules(model) if not matches_any_prefix(name, head))


def _bias_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with a bias Parameter of their own, the parameter found by the attribute's role, not a substring."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m._parameters.get("bias"), nn.Parameter)]
