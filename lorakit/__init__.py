"""lorakit: LoRA (Hu et al. 2021, arXiv:2106.09685) in plain PyTorch.

Wrap frozen linear layers (``nn.Linear``, GPT-2's ``Conv1D``) with trainable low-rank factors, merge and unmerge
exactly, read ΔW, and save adapters in HF PEFT's format; hold several named adapters on one model, switch between
them and combine them (``adapters``). The variants a LoRA study compares against live beside it: DoRA (``dora``),
PiSSA (``pissa``), LoRA-FA (``LoRAConfig.freeze_a``), Houlsby adapters (``bottleneck``) and BitFit (``bitfit``).
"""

from .adapters import active_adapters, adapter_names, combine_adapters, delete_adapter, set_adapter
from .bitfit import apply_bitfit, count_bitfit_parameters
from .bottleneck import (
    ADAPTER_TARGETS,
    AdapterConfig,
    AdapterLinear,
    adapter_modules,
    count_adapter_parameters,
    inject_adapters,
    load_bottleneck_adapters,
    save_bottleneck_adapters,
)
from .config import TARGET_PRESETS, LoRAConfig, LoRAError, describe_targets, lora_scale, resolve_targets
from .dora import DoRALinear
from .inject import (
    count_lora_parameters,
    count_method_parameters,
    count_parameters,
    delta_weights,
    fan_in_fan_out_modules,
    freeze_except,
    inject_lora,
    linear_module_names,
    lora_modules,
    lora_parameter_groups,
    merge_lora,
    unmerge_lora,
    weight_deltas,
)
from .layers import LoRALinear, LoRASlot
from .nf4 import NF4LoRALinear, dequantize, quantize_base, weight_bytes
from .pissa import PiSSALinear
from .gradient_init import GradientLinear
from .peft_format import Adapter, read_adapter
from .state import load_adapter, save_adapter

__version__ = "0.1.0"

__all__ = [
    "ADAPTER_TARGETS",
    "Adapter",
    "AdapterConfig",
    "AdapterLinear",
    "DoRALinear",
    "GradientLinear",
    "LoRAConfig",
    "LoRAError",
    "LoRALinear",
    "LoRASlot",
    "NF4LoRALinear",
    "PiSSALinear",
    "TARGET_PRESETS",
    "describe_targets",
    "active_adapters",
    "adapter_modules",
    "adapter_names",
    "apply_bitfit",
    "combine_adapters",
    "count_adapter_parameters",
    "count_bitfit_parameters",
    "count_lora_parameters",
    "count_method_parameters",
    "count_parameters",
    "delete_adapter",
    "delta_weights",
    "dequantize",
    "fan_in_fan_out_modules",
    "freeze_except",
    "inject_adapters",
    "inject_lora",
    "linear_module_names",
    "load_adapter",
    "load_bottleneck_adapters",
    "lora_modules",
    "lora_parameter_groups",
    "lora_scale",
    "merge_lora",
    "quantize_base",
    "read_adapter",
    "resolve_targets",
    "save_adapter",
    "save_bottleneck_adapters",
    "set_adapter",
    "unmerge_lora",
    "weight_bytes",
    "weight_deltas",
]
