"""The tensors behind a run folder, loaded lazily: LoRA factors, ΔW, the pretrained weights W₀.

ΔW is read from ``delta_weights.safetensors`` (module name -> ΔW, out x in, fp32); a LoRA run written before every
method saved that file gives ΔW as scale·B·A from its ``adapter/``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from .folders import RunError, read_config

_PEFT_PREFIX = "base_model.model."


def _strip(name: str) -> str:
    name = name[len(_PEFT_PREFIX) :] if name.startswith(_PEFT_PREFIX) else name
    return name[: -len(".weight")] if name.endswith(".weight") else name


@lru_cache(maxsize=8)
def _adapter(run_dir: str, folder: str = "adapter"):
    from lorakit import LoRAError, read_adapter

    path = Path(run_dir) / folder
    if not path.is_dir():
        raise RunError(f"{run_dir}: no {folder}/ folder")
    try:
        return read_adapter(path)
    except LoRAError as err:
        raise RunError(f"{run_dir}: unreadable {folder}/ ({err})") from err


def lora_factors(run_dir: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A r x in, B out x r)} of a LoRA run, after training (``adapter/``)."""
    return {_strip(n): ab for n, ab in _adapter(str(run_dir)).factors.items()}


def init_factors(run_dir: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A₀, B₀)}: the LoRA factors at step 0, from ``adapter_init/`` (written before training)."""
    return {_strip(n): ab for n, ab in _adapter(str(run_dir), "adapter_init").factors.items()}


@lru_cache(maxsize=4)
def run_deltas(run_dir: str, method: str) -> dict[str, torch.Tensor]:
    """{module name: ΔW (out x in)} against the pretrained W: from ``delta_weights.safetensors`` (every method with
    a ΔW writes it), else, for a LoRA run written before that, scale·B·A from ``adapter/``."""
    path = Path(run_dir) / "delta_weights.safetensors"
    if path.exists():
        from safetensors.torch import load_file

        return {_strip(n): d for n, d in load_file(str(path)).items()}
    if method == "lora":
        return {_strip(n): d for n, d in _adapter(str(run_dir)).delta_weights().items()}
    raise RunError(f"{run_dir}: no ΔW (method={method}: no delta_weights.safetensors)")


def num_labels(run_dir: str) -> int:
    """The classifier's output size: from the adapter's saved head, else config.yaml, else 2."""
    run = Path(run_dir)
    if (run / "adapter").is_dir():
        for name, t in _adapter(str(run)).extra.items():
            if name.endswith(("classifier.weight", "classifier.out_proj.weight")) and t.ndim == 2:
                return int(t.shape[0])
    cfg = read_config(run)
    for node in (cfg.get("task") or {}, cfg.get("model") or {}, cfg):
        if isinstance(node, dict) and isinstance(node.get("num_labels"), int):
            return node["num_labels"]
    return 2


def gguf_file(run_dir: str) -> str | None:
    """The GGUF file a decoder run loaded its weights from (config.yaml's ``model.gguf_file``), else None."""
    model = read_config(run_dir).get("model") or {}
    return model.get("gguf_file") if isinstance(model, dict) and model.get("family") == "causal_lm" else None


def run_base_weights(run: "pd.Series") -> dict[str, torch.Tensor]:
    """``base_weights`` of the model a run (a row of the run table) started from: an encoder with its head's size,
    or a causal LM (its GGUF file where it came from one)."""
    if run.get("family") == "causal_lm":
        return base_weights(run["model_path"], causal_lm=True, gguf=gguf_file(run["run_dir"]))
    return base_weights(run["model_path"], num_labels(run["run_dir"]))


@lru_cache(maxsize=2)
def base_weights(model_path: str, labels: int = 2, causal_lm: bool = False, gguf: str | None = None) -> dict[str, torch.Tensor]:
    """{module name: W₀} for every 2-D ``*.weight`` of the pretrained model a run started from.

    Names match the model the run trained (``AutoModelForSequenceClassification`` with ``labels`` outputs, or
    ``AutoModelForCausalLM``, from ``gguf`` in ``model_path`` when given), the names ΔW files use.
    """
    if not model_path:
        raise RunError("metrics.json has no run.model_path; cannot load the pretrained weights W₀")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the fresh head's "newly initialized" notice is expected here
    hf_logging.disable_progress_bar()
    try:
        if causal_lm:
            model = AutoModelForCausalLM.from_pretrained(model_path, **({"gguf_file": gguf} if gguf else {}))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=labels)
    except (OSError, ValueError) as err:
        raise RunError(f"cannot load the pretrained model at {model_path!r}: {err}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    import lorakit

    transposed = {f"{name}.weight" for name in lorakit.fan_in_fan_out_modules(model)}  # Conv1D: W stored in × out
    state = model.state_dict()
    return {_strip(n): (t.t() if n in transposed else t).detach().clone()
            for n, t in state.items() if n.endswith(".weight") and t.ndim == 2}


