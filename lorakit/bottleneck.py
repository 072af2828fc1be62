"""Houlsby adapters (Houlsby et al. 2019, arXiv:1902.00751, §2.1): a bottleneck MLP after each sublayer's projection.

Each adapted projection's output h becomes h + W_up act(W_down h + b_down) + b_up, with W_down (size × d) and
W_up (d × size): 2·size·d + size + d parameters per adapted d-wide projection, two per Transformer layer (after the
attention output projection and after the FFN output projection), as the paper's AdapterH baseline. W_up and b_up start
at zero, so the adapted model starts as the pretrained one (the paper's near-identity init with the up-projection
exactly zero); W_down is drawn from N(0, 10⁻³) truncated at two standard deviations, b_down = 0, and the nonlinearity
is GELU, as in the authors' adapter-bert code. Houlsby et al. also train the layer norms: add their names (e.g.
"LayerNorm") to ``AdapterConfig.trainable`` to do so. The adapter acts on the projection's output, before the dropout
that BERT applies next (adapter-bert: after it); at inference the two coincide.

HF PEFT has no Houlsby adapter, so these are saved in lorakit's own format: ``bottleneck_config.json`` and
``bottleneck_model.safetensors``, whose keys are the adapted model's own state-dict keys (adapters and head).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoRAError
from .files import load_tensors, read_json, save_tensors, write_json
from .inject import matches, wrap_linears
from .linear import features, is_conv1d, is_linear, linear_forward

CONFIG_NAME = "bottleneck_config.json"
WEIGHTS_NAME = "bottleneck_model.safetensors"

# The output projections of attention and FFN: BERT/RoBERTa/DeBERTa ("attention.output.dense" and "output.dense";
# the second also matches the first), LLaMA-style models ("o_proj", "down_proj") and GPT-2 ("attn.c_proj",
# "mlp.c_proj", Conv1D layers).
ADAPTER_TARGETS: tuple[str, ...] = ("attention.output.dense", "output.dense", "o_proj", "down_proj", "attn.c_proj",
                                    "mlp.c_proj")
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh, "silu": F.silu}


@dataclass(frozen=True)
class AdapterConfig:
    """Houlsby adapters: ``size`` is the bottleneck width m; ``targets`` the projections adapted (matched like LoRA's
    targets); ``trainable`` the modules left trainable besides the adapters (the task head)."""

    size: int = 64
    activation: str = "gelu"
    targets: tuple[str, ...] = ADAPTER_TARGETS
    trainable: tuple[str, ...] = field(default=("classifier",))

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise LoRAError(f"adapter size must be a positive integer, got {self.size!r}")
        if self.activation not in ACTIVATIONS:
            raise LoRAError(f"unknown adapter activation {self.activation!r}; accepted: {', '.join(ACTIVATIONS)}")
        if isinstance(self.targets, str) or not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise LoRAError(f"adapter targets must be a non-empty list of module names, got {self.targets!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "trainable", tuple(self.trainable))


class AdapterLinear(nn.Module):
    """y = h + W_up act(W_down h + b_down) + b_up with h = W x + b, W and b frozen.

    Adopts the ``weight`` and ``bias`` of the ``nn.Linear`` it replaces, so the base model's state-dict keys are
    unchanged; adds ``adapter_down`` (size × out), ``adapter_down_bias``, ``adapter_up`` (out × size) and
    ``adapter_up_bias`` as plain Parameters (no nn.Linear inside, so the model's Linear modules stay its own).
    """

    def __init__(self, base: nn.Module, size: int, activation: str = "gelu") -> None:
        super().__init__()
        if not is_linear(base):
            raise LoRAError(f"AdapterLinear wraps nn.Linear, got {type(base).__name__}; accepted: nn.Linear and "
                            f"GPT-2's Conv1D")
        (self.in_features, self.out_features), self.size, self.activation = features(base), size, activation
        self.fan_in_fan_out = is_conv1d(base)
        self.act = ACTIVATIONS[activation]
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.adapter_down = nn.Parameter(torch.empty(size, self.out_features, **factory))
        self.adapter_down_bias = nn.Parameter(torch.zeros(size, **factory))
        self.adapter_up = nn.Parameter(torch.zeros(self.out_features, size, **factory))
        self.adapter_up_bias = nn.Parameter(torch.zeros(self.out_features, **factory))
        with torch.no_grad():
            nn.init.trunc_normal_(self.adapter_down, std=1e-3, a=-2e-3, b=2e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = linear_forward(x, self.weight, self.bias, self.fan_in_fan_out)
        return h + F.linear(self.act(F.linear(h, self.adapter_down, self.adapter_down_bias)), self.adapter_up,
                            self.adapter_up_bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, size={self.size}, {self.activation}"


def adapter_modules(model: nn.Module) -> dict[str, AdapterLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def inject_adapters(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Wrap every ``nn.Linear`` matching ``config.targets`` (outside the head) in an ``AdapterLinear``, in place,
    and freeze all but the adapters and ``config.trainable``. Returns the wrapped module names, in model order."""
    if adapter_modules(model):
        raise LoRAError("model already has adapters; inject into a fresh model, or load_bottleneck_adapters into it")
    names = wrap_linears(model, config.targets, config.trainable,
                         lambda base, _: AdapterLinear(base, config.size, config.activation))
    model.adapter_config = config
    return names


def count_adapter_parameters(model: nn.Module) -> int:
    """Parameters in the adapters alone, 2·size·d + size + d per adapted projection (the head not counted)."""
    return sum(p.numel() for m in adapter_modules(model).values() for p in _adapter_parameters(m).values())


def save_bottleneck_adapters(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the adapters and the trainable head to ``path`` (a folder) in lorakit's own format (PEFT has none)."""
    modules = adapter_modules(model)
    if not modules:
        raise LoRAError("save_bottleneck_adapters: the model has no adapters; call inject_adapters first")
    config: AdapterConfig = model.adapter_config
    tensors = {f"{name}.{key}": p for name, m in modules.items() for key, p in _adapter_parameters(m).items()}
    for name, module in model.named_modules():
        if matches(name, config.trainable):
            tensors.update({f"{name}.{key}": p for key, p in module.named_parameters()})
    saved = {"adapter_type": "houlsby", "size": config.size, "activation": config.activation,
             "targets": sorted(modules), "modules_to_save": list(config.trainable)}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / WEIGHTS_NAME, tensors, {"format": "pt"})
    write_json(path / CONFIG_NAME, saved)
    return path


def load_bottleneck_adapters(model: nn.Module, path: str | os.PathLike, head: bool = True) -> list[str]:
    """Load adapters saved by ``save_bottleneck_adapters``, injecting them first when the model has none; returns the
    adapted names. ``head=False`` leaves the model's head as it is. Nothing is changed when the adapters do not fit;
    a malformed or altered file is one ``LoRAError`` naming it (``lorakit.files``)."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
        lora = (path / "adapter_config.json").is_file()
        hint = " (found adapter_config.json: a LoRA adapter, for lorakit.load_adapter)" if lora else ""
        raise LoRAError(f"no Houlsby adapter at {path}: expected {CONFIG_NAME} and {WEIGHTS_NAME}{hint}")
    config = _saved_config(read_json(path / CONFIG_NAME), path / CONFIG_NAME)
    adapted = set(config.targets)
    tensors, _ = load_tensors(path / WEIGHTS_NAME, keep=lambda key: head or key.rpartition(".")[0] in adapted)
    _check_tensors(tensors, config, path / WEIGHTS_NAME)

    existing = adapter_modules(model)
    if existing and (set(existing) != adapted or any(
            (m.size, m.activation) != (config.size, config.activation) for m in existing.values())):
        raise LoRAError(f"adapters at {path} (size {config.size}, {len(adapted)} modules) differ from the model's "
                        f"({len(existing)} modules); load them into a model without adapters")
    modules, parameters = dict(model.named_modules()), dict(model.named_parameters())
    for key, tensor in tensors.items():
        module_name, _, param = key.rpartition(".")
        if module_name in adapted and not existing:  # the Parameter appears once injected: check the projection
            module = modules.get(module_name)
            fits = module is not None and is_linear(module) and features(module)[1] == saved_width(tensors, module_name)
            shape = "absent" if module is None else f"{features(module)[1]} wide" if is_linear(module) else "not linear"
        else:
            fits = key in parameters and parameters[key].shape == tensor.shape
            shape = f"{tuple(parameters[key].shape)}" if key in parameters else "absent"
        if not fits:
            raise LoRAError(f"adapters at {path} were saved for another model: {key} is {tuple(tensor.shape)} there, "
                            f"{shape} here")
    if not existing:
        inject_adapters(model, config)
        parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in tensors.items():
            parameters[key].copy_(tensor)
    return sorted(adapted)


def _saved_config(saved: dict, file: Path) -> AdapterConfig:
    """The ``AdapterConfig`` a saved ``bottleneck_config.json`` describes; a missing or mistyped key names the file."""
    if saved.get("adapter_type") != "houlsby":
        raise LoRAError(f"{file}: adapter_type is {saved.get('adapter_type')!r}; accepted: 'houlsby'")
    missing = [key for key in ("size", "activation", "targets", "modules_to_save") if key not in saved]
    if missing:
        raise LoRAError(f"{file} has no {', '.join(map(repr, missing))}; a Houlsby adapter config needs size, "
                        f"activation, targets and modules_to_save")
    for key in ("targets", "modules_to_save"):
        if not isinstance(saved[key], list):
            raise LoRAError(f"{file}: {key} must be a list of module names, got {saved[key]!r}")
    try:
        return AdapterConfig(size=saved["size"], activation=saved["activation"], targets=tuple(saved["targets"]),
                             trainable=tuple(saved["modules_to_save"]))
    except LoRAError as err:
        raise LoRAError(f"{file}: {err}") from None


def _check_tensors(tensors: dict[str, torch.Tensor], config: AdapterConfig, file: Path) -> None:
    """Every adapted module has its four floating-point tensors, shaped for one width d and ``config.size``."""
    for key, tensor in tensors.items():
        if not tensor.dtype.is_floating_point:
            raise LoRAError(f"{file}: {key} has dtype {str(tensor.dtype).removeprefix('torch.')}; accepted: floating "
                            f"point")
    for name in config.targets:
        up = tensors.get(f"{name}.adapter_up")
        if up is None or up.dim() != 2:
            found = "missing" if up is None else f"{tuple(up.shape)}"
            raise LoRAError(f"{file}: {name}.adapter_up is {found}, expected (d, {config.size}) for size {config.size}")
        width = up.shape[0]
        shapes = {"adapter_down": (config.size, width), "adapter_down_bias": (config.size,),
                  "adapter_up": (width, config.size), "adapter_up_bias": (width,)}
        for param, shape in shapes.items():
            tensor = tensors.get(f"{name}.{param}")
            if tensor is None or tuple(tensor.shape) != shape:
                found = "missing" if tensor is None else f"{tuple(tensor.shape)}"
                raise LoRAError(f"{file}: {name}.{param} is {found}, expected {shape} for size {config.size}")


def saved_width(tensors: dict[str, torch.Tensor], module_name: str) -> int:
    """The output width d of the projection a saved adapter belongs to (its up-projection is d × size)."""
    return tensors[f"{module_name}.adapter_up"].shape[0]


def _adapter_parameters(module: AdapterLinear) -> dict[str, nn.Parameter]:
    return {key: p for key, p in module.named_parameters(recurse=False) if key.startswith("adapter_")}
