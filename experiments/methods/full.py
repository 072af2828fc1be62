"""Full fine-tuning: every weight trains; ΔW = W_ft − W₀ of every attention and MLP linear layer of the encoder."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

import lorakit
from experiments.methods import Method, register


@register
class Full(Method):
    name = "full"
    title = "full FT"
    has_delta = True

    def prepare(self, model: nn.Module, cfg: DictConfig) -> list[str]:
        # The attention and MLP layers: the task head, the pooler and a causal LM's output layer are not analysed.
        adapted = lorakit.linear_module_names(model, head=(*cfg.model.head, "classifier", "pooler", "lm_head"))
        weights = {f"{n}.weight" for n in adapted}
        self.adapted = adapted
        self.transposed = lorakit.fan_in_fan_out_modules(model)  # GPT-2's Conv1D stores W in × out
        self.initial = {k: w.detach().clone() for k, w in model.state_dict().items() if k in weights}
        model.requires_grad_(True)
        return adapted

    def method_params(self, model: nn.Module, cfg: DictConfig) -> int:
        return lorakit.count_parameters(model)[0]  # the paper counts every weight of a full fine-tune

    def delta_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        tuned = {k: v.detach().cpu() for k, v in model.state_dict().items() if k in self.initial}
        return lorakit.weight_deltas(self.initial, tuned, self.adapted, self.transposed)
