"""BitFit (Ben Zaken et al. 2022): only the biases of the encoder train, with the task head. No ΔW of the weights.

The worked example of docs/ADDING_A_METHOD.md: a config file (conf/method/bitfit.yaml) and this module.
"""

from omegaconf import DictConfig
from torch import nn

import lorakit
from experiments.methods import Method, register


@register
class BitFit(Method):
    name = "bitfit"
    title = "BitFit"

    def prepare(self, model: nn.Module, cfg: DictConfig) -> list[str]:
        return lorakit.apply_bitfit(model, head=tuple(cfg.model.head))
