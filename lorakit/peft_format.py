"""HF PEFT's on-disk LoRA format, read without a model: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are ``base_model.model.<module>.lora_A.weight`` (r × in) / ``.lora_B.weight`` (out × r), DoRA adds
``.lora_magnitude_vector`` (out,) and ``"use_dora": true`` in the config; a trained head is saved the way PEFT saves
``modules_to_save`` (``base_model.model.<module>.<param>``). Reading checks everything a file can get wrong — the
config's keys and types, the tensors' dtypes, shapes and checksum (``lorakit.files``) — and says which file is
wrong in one ``LoRAError``. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .config import LoRAError, lora_scale, pattern_pairs, pattern_key
from .files import load_tensors, read_json

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
A_KEY, B_KEY, MAGNITUDE_KEY = ".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"
# PEFT inits that change the base weights when PEFT builds the adapter: such an adapter only reproduces its model on
# that changed base. lorakit rebuilds the one it implements ("pissa"), and refuses the others.
_MUTATING_INITS = ("pissa_niter_", "olora", "corda", "loftq", "lora_ga")
_FLAGS = ("use_rslora", "use_dora", "fan_in_fan_out", "inference_mode")


@dataclass
class Adapter:
    """An adapter read from disk without a model: its PEFT config, LoRA factors, DoRA magnitudes and extra (head)
    tensors."""

    config: dict
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A: r x in, B: out x r)
    scale: float  # of the modules rank_pattern and alpha_pattern leave at r and lora_alpha
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # "<module>.<param>" -> tensor (modules_to_save)
    magnitudes: dict[str, torch.Tensor] = field(default_factory=dict)  # module name -> m (out,), DoRA only
    scales: dict[str, float] = field(default_factory=dict)  # module name -> its scale, where patterns change it

    def scale_of(self, name: str) -> float:
        return self.scales.get(name, self.scale)

    @property
    def r(self) -> int:
        return int(self.config["r"])

    @property
    def kind(self) -> str:
        """"DoRA", "PiSSA" (PEFT's unconverted PiSSA adapter, for a residual base) or "plain LoRA"."""
        if self.config.get("use_dora"):
            return "DoRA"
        return "PiSSA" if self.config.get("init_lora_weights") == "pissa" else "plain LoRA"

    def delta_weights(self, base_weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Module name → ΔW (out × in), fp32: scale · B A, or for DoRA m ⊙ (W₀ + scale·B A)/‖W₀ + scale·B A‖ − W₀,
        which needs ``base_weights`` (module name → W₀)."""
        if self.kind == "PiSSA":
            raise LoRAError(
                "this adapter was saved by PEFT with init 'pissa' unconverted: its ΔW against the pretrained W needs "
                "the initial factors; load_adapter it into the model and use delta_weights(model)"
            )
        deltas = {name: (B.float() @ A.float()) * self.scale_of(name) for name, (A, B) in self.factors.items()}
        if self.kind == "plain LoRA":
            return deltas
        missing = [name for name in deltas if base_weights is None or name not in base_weights]
        if missing:
            raise LoRAError(f"a DoRA adapter's ΔW depends on W₀: pass base_weights with {missing[0]!r} (and the rest)")
        for name, delta in deltas.items():
            base = base_weights[name].detach().float()
            direction = base + delta
            norm = torch.linalg.vector_norm(direction, dim=1, keepdim=True)
            deltas[name] = self.magnitudes[name].float().unsqueeze(1) * direction / norm - base
        return deltas


def read_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter folder (lorakit's or PEFT's) into tensors, checking it is a LoRA or DoRA adapter lorakit can
    rebuild and that its files are whole: every fault is one ``LoRAError`` naming the file."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_file.is_file():
        raise LoRAError(f"no adapter at {path}: expected {CONFIG_NAME} and {WEIGHTS_NAME} in that folder")
    if not weights_file.is_file():
        pickled = (path / "adapter_model.bin").is_file()
        hint = " (found adapter_model.bin: pickled weights are refused; re-save it with safetensors)" if pickled else ""
        raise LoRAError(f"no {WEIGHTS_NAME} in {path}{hint}")
    config = check_config(read_json(config_file), config_file)
    tensors, _ = load_tensors(weights_file)

    factors: dict[str, list] = {}
    extra, magnitudes = {}, {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        if not tensor.dtype.is_floating_point:
            raise LoRAError(f"{weights_file}: {key} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                            f"accepted: floating point (float32, float16, bfloat16, float64)")
        if name.endswith((A_KEY, B_KEY)):
            module, which = name[: -len(A_KEY)], 0 if name.endswith(A_KEY) else 1
            if tensor.dim() != 2:
                raise LoRAError(f"{weights_file}: {key} has shape {tuple(tensor.shape)}; LoRA factors are matrices")
            factors.setdefault(module, [None, None])[which] = tensor
        elif name.endswith(MAGNITUDE_KEY):
            if tensor.dim() != 1:
                raise LoRAError(f"{weights_file}: {key} has shape {tuple(tensor.shape)}; a DoRA magnitude is a vector")
            magnitudes[name[: -len(MAGNITUDE_KEY)]] = tensor
        else:
            extra[name] = tensor
    incomplete = [name for name, (A, B) in factors.items() if A is None or B is None]
    if config.get("use_dora"):
        incomplete += [f"{name} (no {MAGNITUDE_KEY[1:]})" for name in factors if name not in magnitudes]
    elif magnitudes:
        raise LoRAError(f"adapter at {path} holds {MAGNITUDE_KEY[1:]} tensors but its config does not set use_dora: "
                        f"true")
    if incomplete or not factors:
        raise LoRAError(f"adapter at {path} is incomplete: {'no LoRA tensors' if not factors else incomplete}")
    r, alpha, rslora = config["r"], float(config["lora_alpha"]), bool(config.get("use_rslora") or False)
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    scales = {}
    for name, (A, B) in factors.items():
        r_key, alpha_key = pattern_key(list(ranks), name), pattern_key(list(alphas), name)
        expected = ranks[r_key] if r_key is not None else r
        if A.shape[0] != expected or B.shape[1] != expected:
            rank = A.shape[0] if A.shape[0] != expected else B.shape[1]
            says = f"rank_pattern[{r_key!r}]={expected}" if r_key is not None else f"r={r}"
            raise LoRAError(f"adapter at {path}: {name} has rank {rank}, config says {says}")
        if r_key is not None or alpha_key is not None:
            scales[name] = lora_scale(expected, float(alphas[alpha_key]) if alpha_key is not None else alpha, rslora)
    return Adapter(config, {n: (A, B) for n, (A, B) in factors.items()}, lora_scale(r, alpha, rslora), extra,
                   magnitudes, scales)


def check_config(config: dict, file: Path) -> dict:
    """The PEFT LoRA config, with every key lorakit reads checked for presence, type and range."""
    if config.get("peft_type") != "LORA":
        raise LoRAError(f"adapter at {file.parent} is peft_type={config.get('peft_type')!r}; only LORA adapters are "
                        f"supported")
    missing = [key for key in ("r", "lora_alpha") if key not in config]
    if missing:
        raise LoRAError(f"{file} has no {' and no '.join(repr(k) for k in missing)}: a LoRA config needs r (a positive "
                        f"integer) and lora_alpha (a positive number)")
    r, alpha, dropout = config["r"], config["lora_alpha"], config.get("lora_dropout")
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise LoRAError(f"{file}: r must be a positive integer, got {r!r}")
    if not _is_number(alpha) or not math.isfinite(alpha) or alpha <= 0:
        raise LoRAError(f"{file}: lora_alpha must be a positive number, got {alpha!r}")
    if dropout is not None and (not _is_number(dropout) or not 0 <= dropout < 1):
        raise LoRAError(f"{file}: lora_dropout must be a number in [0, 1), got {dropout!r}")
    for flag in _FLAGS:
        if config.get(flag) is not None and not isinstance(config[flag], bool):
            raise LoRAError(f"{file}: {flag} must be true or false, got {config[flag]!r}")
    modules_to_save = config.get("modules_to_save")
    if modules_to_save is not None and (
            not isinstance(modules_to_save, list) or not all(isinstance(m, str) and m for m in modules_to_save)):
        raise LoRAError(f"{file}: modules_to_save must be a list of module names or null, got {modules_to_save!r}")
    for key, what in (("rank_pattern", "positive integers"), ("alpha_pattern", "positive numbers")):
        if not isinstance(config.get(key) or {}, dict):
            raise LoRAError(f"{file}: {key} must map module-name patterns to {what}, got {config[key]!r}")
        try:  # PEFT's per-module ranks and α: checked as LoRAConfig checks them
            pattern_pairs(config.get(key) or {}, key, integer=key == "rank_pattern")
        except LoRAError as err:
            raise LoRAError(f"{file}: {err}") from None
    unsupported = [k for k in ("layers_to_transform",) if config.get(k)]
    if config.get("bias", "none") != "none":
        unsupported += ["bias"]
    if unsupported:
        raise LoRAError(f"adapter at {file.parent} uses {', '.join(unsupported)}, which lorakit does not support")
    init = config.get("init_lora_weights", True)
    if not isinstance(init, (bool, str)):
        raise LoRAError(f"{file}: init_lora_weights must be true, false or a PEFT init name, got {init!r}")
    if isinstance(init, str) and init.startswith(_MUTATING_INITS):
        raise LoRAError(
            f"adapter at {file.parent} has init_lora_weights={init!r}, which needs the base weights PEFT changed at "
            f"init; accepted: True, False, 'gaussian', 'pissa' (or re-save it with "
            f"path_initial_model_for_weight_conversion)"
        )
    return config


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
