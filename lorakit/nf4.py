"""QLoRA's frozen base: W₀ stored in 4-bit NormalFloat, the LoRA factors in full precision (Dettmers et al. 2023,
arXiv:2305.14314, §3).

NF4 cuts W₀ (flattened, row-major) into blocks of 64 weights, divides each block by its absolute maximum c, and rounds
every value to the nearest of 16 levels, the quantiles of N(0, 1) scaled to [−1, 1] with an exact zero: 4 bits an
element. Double quantization stores the 64-weight blocks' c − mean(c) as int8 in blocks of 256 with one fp32 factor
per 256 and one fp32 mean, 8/64 + 32/(64·256) more bits an element: ≈ 4.13 bits, 0.129 of fp32 (``weight_bytes``).
Both block sizes are QLoRA's and torchtune's, so a layer can be quantized when out·in is a multiple of 64·256.

The tensor is torchao's ``NF4Tensor`` (as torchtune uses it; it runs on CPU and GPU). ``F.linear`` on it is
torchao's ``linear_nf4``: W̃₀ = deq(W₀) is rebuilt for the product, forward and backward, and never kept, so a layer
computes h = W̃₀x + b + scale·B A x and only the 4-bit codes stay in memory. The gradient reaches x through W̃₀ᵀ, none
goes to W₀. ΔW = scale·B A is unchanged and is the update against W̃₀, the base the model actually runs.

Merging: ``merge()`` puts W̃₀ + ΔW in a full-precision ``weight`` (out·in·4 bytes again, for inference or for the
probes that edit the merged W) and keeps the NF4 tensor aside; ``unmerge()`` puts that same tensor back, so codes and
scalers are bit-identical. Re-quantizing W̃₀ + ΔW − ΔW instead would round twice.

torchao is an optional dependency: it is imported when a model is quantized, not with lorakit.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import LoRAError, resolve_targets
from .inject import _collapse_layer_indices, lora_modules, matches
from .layers import LoRALinear

BLOCK_SIZE = 64  # weights sharing one absmax scaler (QLoRA §3)
SCALER_BLOCK_SIZE = 256  # scalers sharing one fp32 factor in the double quantization (QLoRA §3)
BLOCK_ELEMENTS = BLOCK_SIZE * SCALER_BLOCK_SIZE


class NF4LoRALinear(LoRALinear):
    """A ``LoRALinear`` whose frozen ``weight`` is an NF4 tensor: made by ``quantize_base``, never built directly.

    The forward pass is ``LoRALinear``'s (torchao routes ``F.linear`` on an NF4 weight to ``linear_nf4``); only merging
    differs, as the 4-bit weight cannot take W̃₀ + ΔW in place.
    """

    @torch.no_grad()
    def merge(self) -> None:
        """Replace W₀ by the full-precision W̃₀ + scale·B A; a no-op when already merged."""
        if self.merged:
            return
        quantized = self.weight.detach()  # a new NF4 tensor on the same codes and scalers: no copy, no re-rounding
        dense = quantized.get_original_weight()
        dense += self.lora_weight().to(dense.dtype)
        self.weight = nn.Parameter(dense, requires_grad=False)
        self._unmerged_weight = quantized
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the NF4 W₀ back, bit for bit; a no-op when not merged."""
        if not self.merged:
            return
        self.weight = nn.Parameter(self._unmerged_weight, requires_grad=False)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return super().extra_repr() + ", base=nf4"


def quantize_base(model: nn.Module, names: str | Sequence[str] | None = None) -> list[str]:
    """Store the frozen W₀ of the model's LoRA layers in NF4, in place; returns the quantized layers' names.

    ``names``: every LoRA layer when None, else a target preset or module names, matched like ``LoRAConfig.targets``.
    The LoRA factors, the biases and the rest of the model keep their precision, and the state-dict keys are the
    same: ``load_state_dict`` of a full-precision checkpoint re-quantizes into the NF4 weights (the same codes as
    quantizing it here), and the model's own state dict loads back bit for bit. Already quantized layers are left as
    they are. Every selected layer is checked before any is converted, so a refusal leaves the model unchanged.
    """
    modules = lora_modules(model)
    if not modules:
        raise LoRAError("quantize_base: the model has no LoRA layers; call inject_lora first, then quantize its base")
    selected = _select(modules, names)
    for name, module in selected.items():
        check_quantizable(name, module)
    to_nf4 = _torchao_to_nf4()
    for module in selected.values():
        if isinstance(module, NF4LoRALinear):
            continue
        quantized = to_nf4(module.weight.detach().contiguous(), BLOCK_SIZE, SCALER_BLOCK_SIZE)
        module.weight = nn.Parameter(quantized, requires_grad=False)
        # The class changes in place (as torch.nn.utils.parametrize does) rather than the module being replaced, so
        # lora_A, lora_B and the bias stay the very Parameters an optimizer may already hold.
        module.__class__ = NF4LoRALinear
    return list(selected)


def _select(modules: dict[str, LoRALinear], names: str | Sequence[str] | None) -> dict[str, LoRALinear]:
    if names is None:
        return modules
    patterns = resolve_targets(names)
    selected = {name: m for name, m in modules.items() if matches(name, patterns)}
    if not selected:
        shown = ", ".join(_collapse_layer_indices(list(modules)))
        raise LoRAError(f"quantize_base: no LoRA layer matches {list(patterns)}; the model's LoRA layers are: {shown}")
    return selected


def check_quantizable(name: str, module: LoRALinear) -> None:
    """One-line refusal for a layer NF4 cannot hold, or whose merge or ΔW would not survive the quantization."""
    if isinstance(module, NF4LoRALinear):
        return
    if type(module) is not LoRALinear:
        raise LoRAError(
            f"quantize_base: {name} is a {type(module).__name__}; the NF4 base is implemented for plain LoRA layers "
            f"(DoRA reads W₀ densely for its norms; a PiSSA adapter is saved against the unquantized W)"
        )
    if module.merged:
        raise LoRAError(f"quantize_base: {name} is merged (its weight holds W₀ + ΔW); unmerge_lora first")
    if not module.weight.is_floating_point():
        raise LoRAError(f"quantize_base: {name} has a {module.weight.dtype} weight; NF4 quantizes a floating-point W₀")
    out_features, in_features = module.weight.shape
    if (out_features * in_features) % BLOCK_ELEMENTS:
        raise LoRAError(
            f"quantize_base: {name} is {out_features}x{in_features} ({out_features * in_features} weights); NF4 with "
            f"blocks of {BLOCK_SIZE} and scaler blocks of {SCALER_BLOCK_SIZE} takes out·in divisible by "
            f"{BLOCK_ELEMENTS} (e.g. 128x128, 384x384, 768x3072); leave this layer out with names=..."
        )


def is_quantized(weight: torch.Tensor) -> bool:
    """True for an NF4 weight (found without importing torchao, which is optional)."""
    return hasattr(weight, "quantized_data") and hasattr(weight, "get_original_weight")


def dequantize(weight: torch.Tensor) -> torch.Tensor:
    """W̃₀, the dense weight the layer computes with: deq(W₀) for an NF4 weight, the weight itself otherwise.

    Use this, not ``.float()``: on an fp32-typed NF4 tensor ``.float()`` is a no-op that returns the NF4 tensor.
    """
    return weight.get_original_weight() if is_quantized(weight) else weight


def weight_bytes(weight: torch.Tensor) -> int:
    """Bytes that hold ``weight``: numel·element size for a dense tensor; for NF4 the sum of its parts (4-bit codes,
    int8 scalers, fp32 scaler factors and mean, the 16-entry level table)."""
    if not is_quantized(weight):
        return weight.numel() * weight.element_size()
    parts, _ = weight.__tensor_flatten__()
    return sum(getattr(weight, part).numel() * getattr(weight, part).element_size() for part in parts)


def _torchao_to_nf4():
    try:
        from torchao.quantization import to_nf4
    except ImportError:
        try:  # where older torchao releases (and torchtune) import it from
            from torchao.dtypes.nf4tensor import to_nf4
        except ImportError:
            raise LoRAError("quantize=nf4 needs torchao (pip install torchao)") from None
    return to_nf4
