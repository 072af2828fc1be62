"""Houlsby adapters (Houlsby et al. 2019): a bottleneck MLP h + up(gelu(down(h))) after the attention output and the
FFN output of every layer, the up-projection zero at init (lorakit.bottleneck). ``adapter_size`` is the bottleneck
width. No ΔW of the weights: the adapter adds a non-linear path, not a weight update."""

from pathlib import Path

from omegaconf import DictConfig
from torch import nn

import lorakit
from experiments.methods import Method, register
from experiments.accepts import POSITIVE_INT
from lorakit.files import atomic_path

BOTTLENECK = "bottleneck_adapters"


@register
class Adapter(Method):
    name = "adapter"
    title = "Adapter"
    accepts = {"adapter_size": POSITIVE_INT}
    files = (BOTTLENECK,)

    def describe(self, method) -> dict[str, str]:
        return {"adapter_size": f"size={method.get('adapter_size')}"}

    def prepare(self, model: nn.Module, cfg: DictConfig) -> list[str]:
        config = lorakit.AdapterConfig(size=cfg.method.adapter_size, trainable=tuple(cfg.model.head))
        return lorakit.inject_adapters(model, config)

    def save(self, model: nn.Module, out_dir: Path, model_path: str) -> None:
        with atomic_path(out_dir / BOTTLENECK, is_dir=True) as tmp:
            lorakit.save_bottleneck_adapters(model, tmp)
