"""The tensors behind a run folder, read one module at a time: LoRA factors, ΔW, the pretrained weights W₀.

Every reader returns a mapping whose values are read from disk when asked and never kept (``lazy.LazyTensors``):
an analysis walking modules holds one module's ΔW, A/B and W₀ at a time, so its peak memory is O(one module) — a
full fine-tune of a 7B model writes a ~27 GB ΔW file in fp32, which no analysis node could hold several of.

ΔW is read from ``delta_weights.safetensors`` (module name -> ΔW, out x in; fp32, or bf16 with
``save_delta.dtype=bf16``, returned as fp32 either way); a LoRA run written before every method saved that file gives
ΔW as scale·B·A from its ``adapter/``. W₀ is read from the checkpoint's safetensors files the same way; a checkpoint
without them (``pytorch_model.bin``, GGUF) is loaded whole through transformers, one model at a time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch

from experiments.records import FACTORS, FACTORS_INIT
from lorakit.peft_format import PREFIX as _PEFT_PREFIX

from .folders import RunError, read_config
from .lazy import Derived, LazyTensors, SafetensorsError, read_header, safetensors_keys

DELTAS = "delta_weights.safetensors"
_A, _B = ".lora_A.weight", ".lora_B.weight"
_verified: set[tuple[str, int, int]] = set()  # adapter files whose checksum held: (path, mtime, size)


def _strip(name: str) -> str:
    name = name[len(_PEFT_PREFIX) :] if name.startswith(_PEFT_PREFIX) else name
    return name[: -len(".weight")] if name.endswith(".weight") else name


def _adapter_files(run_dir: str, folder: str) -> tuple[dict, Path]:
    """(adapter_config.json, checked as lorakit checks it; the weights file, its checksum verified once per file
    version by streaming its tensors one at a time)."""
    from lorakit import LoRAError
    from lorakit.files import CHECKSUM_KEY, digest, read_json
    from lorakit.peft_format import CONFIG_NAME, WEIGHTS_NAME, check_config

    path = Path(run_dir) / folder
    if not path.is_dir():
        raise RunError(f"{run_dir}: no {folder}/ folder")
    weights = path / WEIGHTS_NAME
    try:
        config = check_config(read_json(path / CONFIG_NAME), path / CONFIG_NAME)
        stat = weights.stat()
        stamp = (str(weights.resolve()), stat.st_mtime_ns, stat.st_size)
        if stamp not in _verified:
            header, metadata, _ = read_header(weights)
            expected, keys = metadata.get(CHECKSUM_KEY), list(header)
            if expected is not None and digest(LazyTensors({k: (str(weights), k) for k in keys})) != expected:
                raise LoRAError(f"{weights} does not match its checksum ({CHECKSUM_KEY}): its tensor bytes were "
                                "altered after saving")
            _verified.add(stamp)
    except (LoRAError, OSError) as err:
        raise RunError(f"{run_dir}: unreadable {folder}/ ({err})") from err
    except SafetensorsError as err:
        raise RunError(f"{run_dir}: unreadable {folder}/ ({err})") from err
    return config, weights


def _factors(run_dir: str, folder: str) -> Mapping[str, tuple[torch.Tensor, torch.Tensor]]:
    _, weights = _adapter_files(run_dir, folder)
    keys = set(safetensors_keys(weights))
    order = safetensors_keys(weights)
    modules = {_strip(k[: -len(_A)]): k[: -len(_A)] for k in order if k.endswith(_A) and k[: -len(_A)] + _B in keys}
    tensors = LazyTensors({k: (str(weights), k) for k in keys})

    def read(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tensors[modules[name] + _A], tensors[modules[name] + _B]

    return Derived(list(modules), read)


def lora_factors(run_dir: str) -> Mapping[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A r x in, B out x r)} of a LoRA run, after training (``adapter/``), read per module."""
    return _factors(str(run_dir), FACTORS)


def init_factors(run_dir: str) -> Mapping[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A₀, B₀)}: the LoRA factors at step 0, from ``adapter_init/`` (written before training)."""
    return _factors(str(run_dir), FACTORS_INIT)


def run_deltas(run_dir: str) -> Mapping[str, torch.Tensor]:
    """{module name: ΔW (out x in), fp32} against the pretrained W, each read when asked: from
    ``delta_weights.safetensors`` (every method with a ΔW writes it), else, for a run written before that whose
    method has factors, scale·B·A from ``adapter/``: the folder's files say where ΔW is, not the method's name."""
    path = Path(run_dir) / DELTAS
    if path.exists():
        try:
            keys = safetensors_keys(path)
        except SafetensorsError as err:
            raise RunError(f"{run_dir}: unreadable {DELTAS} ({err})") from err
        return LazyTensors({_strip(k): (str(path), k) for k in keys}, lambda t: t.float())
    if (Path(run_dir) / FACTORS / "adapter_config.json").is_file():
        from lorakit import LoRAError, lora_scale, read_adapter

        config, _ = _adapter_files(str(run_dir), FACTORS)
        if config.get("use_dora") or config.get("init_lora_weights") == "pissa":  # ΔW needs more than B·A
            try:
                return read_adapter(Path(run_dir) / FACTORS).delta_weights()
            except LoRAError as err:
                raise RunError(f"{run_dir}: {err}") from err
        scale = lora_scale(int(config["r"]), float(config["lora_alpha"]), bool(config.get("use_rslora") or False))
        factors = lora_factors(run_dir)
        return Derived(list(factors), lambda n: (factors[n][1].float() @ factors[n][0].float()) * scale)
    raise RunError(f"{run_dir}: no ΔW (no {DELTAS} and no adapter/)")


def num_labels(run_dir: str) -> int:
    """The classifier's output size: from the adapter's saved head (its header), else config.yaml, else 2."""
    run = Path(run_dir)
    if (run / FACTORS).is_dir():
        _, weights = _adapter_files(str(run), FACTORS)
        for key, entry in read_header(weights)[0].items():
            if key.endswith(("classifier.weight", "classifier.out_proj.weight")) and len(entry["shape"]) == 2:
                return int(entry["shape"][0])
    cfg = read_config(run)
    for node in (cfg.get("task") or {}, cfg.get("model") or {}, cfg):
        if isinstance(node, dict) and isinstance(node.get("num_labels"), int):
            return node["num_labels"]
    return 2


def gguf_file(run_dir: str) -> str | None:
    """The GGUF file a decoder run loaded its weights from (config.yaml's ``model.gguf_file``), else None."""
    model = read_config(run_dir).get("model") or {}
    return model.get("gguf_file") if isinstance(model, dict) and model.get("family") == "causal_lm" else None


def run_base_weights(run: "pd.Series") -> Mapping[str, torch.Tensor]:
    """``base_weights`` of the model a run (a row of the run table) started from: an encoder with its head's size,
    or a causal LM (its GGUF file where it came from one)."""
    if run.get("family") == "causal_lm":
        return base_weights(run["model_path"], causal_lm=True, gguf=gguf_file(run["run_dir"]))
    return base_weights(run["model_path"], num_labels(run["run_dir"]))


def base_weights(model_path: str, labels: int = 2, causal_lm: bool = False,
                 gguf: str | None = None) -> Mapping[str, torch.Tensor]:
    """{module name: W₀ (out x in)} for every 2-D ``*.weight`` of the pretrained model a run started from.

    Names match the model the run trained (``AutoModelForSequenceClassification`` with ``labels`` outputs, or
    ``AutoModelForCausalLM``), the names ΔW files use. From the checkpoint's safetensors files each W₀ is read when
    asked (``checkpoint_weights``); a head the checkpoint lacks (a fresh classifier) is not in the mapping. A GGUF or
    pickled checkpoint is loaded whole (``loaded_weights``).
    """
    if not model_path:
        raise RunError("metrics.json has no run.model_path; cannot load the pretrained weights W₀")
    lazy = None if gguf else checkpoint_weights(model_path, labels, causal_lm)
    return lazy if lazy is not None else loaded_weights(model_path, labels, causal_lm, gguf)


def _skeleton(model_path: str, labels: int, causal_lm: bool):
    """The model's modules on the meta device (no memory, no weights read): its names, ties and Conv1D layers."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_path, **({} if causal_lm else {"num_labels": labels}))
    with torch.device("meta"):
        return (AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification).from_config(config)


def _checkpoint_files(model_path: str) -> dict[str, str] | None:
    """{checkpoint key: safetensors file} of a checkpoint folder (single file or sharded), None without one."""
    root = Path(model_path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return {k: str(root / f) for k, f in json.loads(index.read_text())["weight_map"].items()}
    single = root / "model.safetensors"
    return {k: str(single) for k in safetensors_keys(single)} if single.is_file() else None


@lru_cache(maxsize=16)  # file names and keys only: no tensor is held
def checkpoint_weights(model_path: str, labels: int = 2, causal_lm: bool = False) -> LazyTensors | None:
    """W₀ read per module from the checkpoint's safetensors files, keys matched to the task model's names the way
    transformers matches them (with or without the base model's prefix; a tied weight through its twin). None when
    the checkpoint has no safetensors file or no name matches."""
    import lorakit

    files = _checkpoint_files(model_path)
    if files is None:
        return None
    try:
        model = _skeleton(model_path, labels, causal_lm)
    except (OSError, ValueError) as err:
        raise RunError(f"cannot read the pretrained model's config at {model_path!r}: {err}") from err
    prefix = model.base_model_prefix + "."
    twins: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        twins.setdefault(id(param), []).append(name)
    transposed = {f"{name}.weight" for name in lorakit.fan_in_fan_out_modules(model)}  # Conv1D: W stored in × out
    sources, flip = {}, set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if not name.endswith(".weight") or param.ndim != 2:
            continue
        for alias in twins[id(param)]:
            key = next((k for k in (alias, alias.removeprefix(prefix), prefix + alias) if k in files), None)
            if key is not None:
                sources[_strip(name)] = (files[key], key)
                if name in transposed:
                    flip.add(files[key] + "\0" + key)
                break
    if not sources:
        return None
    return _Oriented(sources, flip)


class _Oriented(LazyTensors):
    """Checkpoint tensors with Conv1D weights (stored in × out) turned to out × in."""

    def __init__(self, sources, flip: set[str]) -> None:
        super().__init__(sources)
        self._flip = flip

    def __getitem__(self, name: str) -> torch.Tensor:
        file, key = self._sources[name]
        tensor = super().__getitem__(name)
        return tensor.t() if file + "\0" + key in self._flip else tensor


@lru_cache(maxsize=1)
def loaded_weights(model_path: str, labels: int = 2, causal_lm: bool = False,
                   gguf: str | None = None) -> dict[str, torch.Tensor]:
    """``base_weights`` through ``from_pretrained``: the whole model in memory (one kept), for the checkpoints
    safetensors cannot read per tensor (GGUF, pickled) and as the reference the lazy reader is tested against."""
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
