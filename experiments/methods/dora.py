"""DoRA (Liu et al. 2024): W' = m ⊙ (W₀ + sBA) / ‖W₀ + sBA‖ (per output row), m trainable from ‖W₀‖. LoRA's keys,
and lorakit's DoRALinear; ΔW for the analyses is the merged W − W₀."""

from experiments.methods import register
from experiments.methods.lora import LoRA


@register
class DoRA(LoRA):
    name = "dora"
    title = "DoRA"
    use_dora = True
