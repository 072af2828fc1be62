"""lorakit: LoRA (Hu et al. 2021, arXiv:2106.09685) in plain PyTorch.

Wrap frozen ``nn.Linear`` layers with trainable low-rank factors, merge and unmerge exactly, read ΔW, and save
adapters in HF PEFT's format.
"""

from .config import TARGET_PRESETS, LoRAConfig, LoRAError, lora_scale, resolve_targets
from .inject import (
    count_lora_parameters,
    count_parameters,
    delta_weights,
    freeze_except,
    inject_lora,
    linear_module_names,
    lora_modules,
    merge_lora,
    unmerge_lora,
    weight_deltas,
)
from .layers import LoRALinear
from .state import Adapter, load_adapter, read_adapter, save_adapter

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "LoRAConfig",
    "LoRAError",
    "LoRALinear",
    "TARGET_PRESETS",
    "count_lora_parameters",
    "count_parameters",
    "delta_weights",
    "freeze_except",
    "inject_lora",
    "linear_module_names",
    "load_adapter",
    "lora_modules",
    "lora_scale",
    "merge_lora",
    "read_adapter",
    "resolve_targets",
    "save_adapter",
    "unmerge_lora",
    "weight_deltas",
]
