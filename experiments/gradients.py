"""G₀ = ∂L/∂W at the pretrained weights: the first full fine-tuning gradient of every linear layer, on a fixed batch
set (issue 23: where LoRA's directions come from; LoRA-GA's init, ``init=gradient``).

The fixed batch set is the first ``EXAMPLES`` examples of the run's training subset, in the subset's own order
(``data.subset_seed``), batched by ``train.batch_size`` and padded as training pads: the same for every seed and
method, so G₀ changes with the model, the task, the data and the head only. L is the mean over those examples of
the training loss (each batch's mean loss weighted by its number of examples), evaluated with the model in eval mode
(no dropout: one number, not a draw). The head is the one the run's seed draws (a new classifier's weights are
random), so G₀ is per seed: ``run_gradients`` rebuilds it as ``train`` does, seed first.

One door for the analyses that need a run at its start: ``run_config`` reads a run's resolved ``config.yaml`` (or
composes one from sweep overrides, for a configuration not yet run), ``run_gradients`` returns G₀ of every linear
layer outside the head, out × in (GPT-2's Conv1D transposed), fp32, cached once per (model, task, data, examples,
seed) under ``execution.cache_dir``'s parent, ``gradients/``, and ``model_at_init`` builds the model as the run's
method prepared it at step 0 (its trainable parameters at their init) with the fixed batch set, for λ_max.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Subset

import lorakit
from lorakit.files import load_tensors, save_tensors

EXAMPLES = 256  # the fixed batch set: LoRA-GA's 8 batches of 32 (Wang et al. 2024, §4)
CACHE_FORMAT = 1


def fixed_batches(cfg: DictConfig, tokenizer, examples: int = EXAMPLES) -> DataLoader:
    """The first ``examples`` training examples of the run's subset, in order, batched as training batches them."""
    from experiments.data import PadCollator, load_tokenized

    splits, _ = load_tokenized(cfg, tokenizer)
    split = splits[cfg.task.train_split]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    chosen = Subset(split, range(min(examples, len(split))))
    return DataLoader(chosen, batch_size=int(cfg.train.batch_size), shuffle=False, collate_fn=PadCollator(pad_id))


def gradients(model: nn.Module, batches, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """G₀ = ∂L/∂W (out × in, fp32) of the modules ``names`` (default: every linear layer outside the head) for L the
    example-weighted mean of the batches' losses, in eval mode; the model's modes, gradients and trainable flags are
    left as they were."""
    names = list(names) if names is not None else lorakit.linear_module_names(model)
    weights = {name: model.get_submodule(name).weight for name in names}
    transposed = set(lorakit.fan_in_fan_out_modules(model))
    flags = {id(p): p.requires_grad for p in model.parameters()}
    stored = {name: w.grad for name, w in weights.items()}
    was_training = model.training
    total = sum(len(batch["labels"]) for batch in batches)
    try:
        model.eval()
        model.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        with torch.enable_grad():
            for batch in batches:
                (model(**batch).loss * (len(batch["labels"]) / total)).backward()
        return {name: (w.grad.t() if name in transposed else w.grad).detach().float().clone()
                for name, w in weights.items()}
    finally:
        for name, w in weights.items():
            w.grad = stored[name]
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.train(was_training)


def first_gradients(model: nn.Module, cfg: DictConfig, examples: int = EXAMPLES) -> dict[str, torch.Tensor]:
    """G₀ of ``model`` (the pretrained one with the run's head, before any method touched it) on the run's fixed
    batch set, from the cache when this (model, task, data, examples, seed) was seen."""
    from experiments.families import for_run
    from experiments.models import resolve_model_path

    model_path = resolve_model_path(cfg.model)
    path = _cache_path(cfg, model_path, examples)
    if path.is_file():
        return load_tensors(path)[0]
    batches = list(fixed_batches(cfg, for_run(cfg).load_tokenizer(cfg, model_path), examples))
    found = gradients(model, batches)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, found, {"format": "pt", "examples": str(examples)})
    return found


def run_config(source: str | os.PathLike | list[str], data_dir: str | None = None,
               cache_dir: str | None = None) -> DictConfig:
    """A run's resolved config: ``source`` a run folder (its ``config.yaml``) or a list of sweep overrides (composed
    as ``python -m experiments.sweep`` composes them); ``data_dir``/``cache_dir`` override where data and cache are."""
    from experiments.errors import ConfigError

    if isinstance(source, (list, tuple)):
        from hydra import compose, initialize_config_dir

        from experiments.config import register_resolvers
        from experiments.identity import CONF_DIR

        register_resolvers()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("sweep", overrides=list(source))
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        cfg.pop("hydra", None)
    else:
        path = Path(source) / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"{source}: no config.yaml; the run is rebuilt from its resolved config")
        cfg = OmegaConf.load(path)
        lacking = [node for node in ("task", "model", "method", "train", "data", "execution") if node not in cfg]
        if lacking:
            raise ConfigError(f"{path} lacks {', '.join(lacking)}: it is not a resolved run config, so the run's "
                              f"model and data cannot be rebuilt")
    if data_dir is not None:
        cfg.execution.data_dir = str(data_dir)
    if cache_dir is not None:
        cfg.execution.cache_dir = str(cache_dir)
    return cfg


def model_at_init(cfg: DictConfig, examples: int = EXAMPLES):
    """(model, method, batches): the model as ``train`` builds it — seed, pretrained weights, the method's
    ``prepare`` — at step 0, in eval mode, and the fixed batch set. Its trainable parameters are the method's."""
    from experiments.families import for_run
    from experiments.methods import get_method
    from experiments.models import resolve_model_path
    from experiments.train import seed_everything

    family, method, model_path = for_run(cfg), get_method(cfg.method.name), resolve_model_path(cfg.model)
    seed_everything(int(cfg.seed))
    model = family.load_model(cfg, model_path)
    method.prepare(model, cfg)
    batches = list(fixed_batches(cfg, family.load_tokenizer(cfg, model_path), examples))
    return model.eval(), method, batches


def run_gradients(source: str | os.PathLike | list[str], examples: int = EXAMPLES, data_dir: str | None = None,
                  cache_dir: str | None = None) -> dict[str, torch.Tensor]:
    """G₀ of the run at ``source`` (``run_config``) — its pretrained model with its seed's head, its training data."""
    return config_gradients(run_config(source, data_dir, cache_dir), examples)


def config_gradients(cfg: DictConfig, examples: int = EXAMPLES) -> dict[str, torch.Tensor]:
    """G₀ of a resolved run config: its pretrained model with its seed's head, its training data; from the cache
    when there. The random state of the calling process (Python, NumPy, torch) is left as it was, so a run that
    measures G₀ while it trains (``execution.monitor.gradient_alignment``) draws what it would have drawn."""
    import random

    import numpy as np

    from experiments.families import for_run
    from experiments.models import resolve_model_path
    from experiments.train import seed_everything

    model_path = resolve_model_path(cfg.model)
    cached = _cache_path(cfg, model_path, examples)
    if cached.is_file():
        return load_tensors(cached)[0]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            seed_everything(int(cfg.seed))  # the head the run started from
            return first_gradients(for_run(cfg).load_model(cfg, model_path), cfg, examples)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _cache_path(cfg: DictConfig, model_path: str, examples: int) -> Path:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("hub", None)
    fields = {"format": CACHE_FORMAT, "model": model_path, "task": str(cfg.task.name), "data": data,
              "max_length": cfg.train.max_length, "max_train_samples": cfg.train.max_train_samples,
              "batch_size": int(cfg.train.batch_size), "examples": int(examples), "seed": int(cfg.seed)}
    key = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(str(cfg.execution.cache_dir)).parent / "gradients" / f"{cfg.task.name}-{key}.safetensors"
