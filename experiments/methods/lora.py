"""LoRA (Hu et al. 2021) through lorakit, with the variants that change only how the factors start or learn:
``init=pissa`` (Meng et al. 2024), ``freeze_a=true`` (LoRA-FA, Zhu et al. 2024: only B trains) and
``loraplus_ratio=λ`` (LoRA+, Hayou et al. 2024: B learns at λ × A's rate), and ``quantize=nf4`` (QLoRA, Dettmers et al.
2023: the frozen W₀ in 4-bit NormalFloat). DoRA extends it (experiments/methods/dora.py).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import lorakit
from experiments.errors import ConfigError
from experiments.quiet import allow_optional
from experiments.methods import Method, register
from experiments.accepts import FLAG, POSITIVE, POSITIVE_INT, Accepts
from experiments import store
from lorakit.files import atomic_path
from lorakit.state import CONFIG_NAME

from experiments.records import FACTORS as ADAPTER, FACTORS_INIT as ADAPTER_INIT


@register
class LoRA(Method):
    name = "lora"
    title = "LoRA"
    accepts = {  # and targets, a preset or a list of module names: checked by lorakit in check()
        "rank": POSITIVE_INT,
        "alpha": POSITIVE,
        "init": Accepts(str, choices=("gaussian", "kaiming", "pissa", "gradient")),
        "rslora": FLAG,
        "dropout": Accepts(float, low=0, high=1, high_open=True),
        "loraplus_ratio": POSITIVE,
        "freeze_a": FLAG,
        "quantize": Accepts(str, choices=("none", "nf4")),
        "rank_pattern": Accepts(dict, nullable=True),  # {module-name regex: rank} (PEFT's): lorakit checks it
        "alpha_pattern": Accepts(dict, nullable=True),
    }
    has_delta = True
    has_factors = True
    files = (ADAPTER, ADAPTER_INIT)
    use_dora = False

    def check(self, cfg: DictConfig) -> None:
        try:
            config = self.config(cfg)
        except lorakit.LoRAError as err:
            raise ConfigError(str(err)) from None
        if cfg.method.quantize == "nf4" and (config.use_dora or config.init in ("pissa", "gradient")):
            raise ConfigError(f"quantize=nf4 keeps W₀ frozen in 4 bits; method={self.name} init={config.init} changes "
                              f"it (DoRA's norm, PiSSA's residual); accepted: quantize=nf4 with method=lora and init "
                              f"gaussian or kaiming")

    def config(self, cfg: DictConfig) -> lorakit.LoRAConfig:
        """The run's ``lorakit.LoRAConfig``: the one place the method's keys become library arguments."""
        m = cfg.method
        return lorakit.LoRAConfig(r=m.rank, alpha=float(m.alpha), dropout=float(m.dropout), targets=_targets(m.targets),
                                  init=m.init, rslora=m.rslora, trainable=tuple(cfg.model.head), use_dora=self.use_dora,
                                  freeze_a=m.freeze_a, rank_pattern=_mapping(m.get("rank_pattern")),
                                  alpha_pattern=_mapping(m.get("alpha_pattern")))

    def prepare(self, model: nn.Module, cfg: DictConfig) -> list[str]:
        gradients = None
        if cfg.method.init == "gradient":  # LoRA-GA: G₀ of the pretrained model with this seed's head
            from experiments.gradients import first_gradients

            gradients = first_gradients(model, cfg)
        adapted = lorakit.inject_lora(model, self.config(cfg), gradients=gradients)
        if cfg.method.quantize == "nf4":  # QLoRA: ΔW and merge are against the dequantized W₀
            allow_optional("torchao")  # hidden from transformers at the entry point (experiments/quiet.py)
            try:
                lorakit.quantize_base(model)
            except lorakit.LoRAError as err:
                raise ConfigError(str(err)) from None
        self.init_adapter = find_init_adapter(cfg.method.init_from, cfg.seed)
        if self.init_adapter is not None:  # the factors only: the head is new (another task, maybe another label count)
            lorakit.load_adapter(model, self.init_adapter, head=False)
        self.initial = {name: (m.lora_A.detach().clone(), m.lora_B.detach().clone())
                        for name, m in lorakit.lora_modules(model).items()}
        return adapted

    def parameter_groups(self, model: nn.Module, cfg: DictConfig) -> list[dict]:
        """B at ``loraplus_ratio`` × the learning rate (LoRA+), everything else (A, DoRA's magnitudes, the head) at
        the learning rate."""
        lr, ratio = cfg.method.lr, float(cfg.method.loraplus_ratio)
        groups = lorakit.lora_parameter_groups(model)
        rest = groups["A"] + groups["magnitude"] + groups["other"]
        return [{"params": rest, "lr": lr}, {"params": groups["B"], "lr": lr * ratio}]

    def delta_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: delta.float().cpu() for name, delta in lorakit.delta_weights(model).items()}

    def factors(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
        modules = lorakit.lora_modules(model)
        return {name: (modules[name].lora_A.detach().cpu(), modules[name].lora_B.detach().cpu(), a0.cpu(), b0.cpu())
                for name, (a0, b0) in self.initial.items()}

    def save(self, model: nn.Module, out_dir: Path, model_path: str) -> None:
        """``adapter/`` (PEFT's format) and ``adapter_init/``, the same adapter at step 0: how far A and B moved."""
        with atomic_path(out_dir / ADAPTER, is_dir=True) as tmp:
            lorakit.save_adapter(model, tmp, base_model_name_or_path=model_path)
        with factors_replaced(model, self.initial), atomic_path(out_dir / ADAPTER_INIT, is_dir=True) as tmp:
            lorakit.save_adapter(model, tmp, base_model_name_or_path=model_path)

    def display_title(self, method) -> str:
        return "QLoRA" if method.get("quantize") == "nf4" else self.title

    def describe(self, method) -> dict[str, str]:
        """r and the target set always; what differs from plain LoRA (the paper's Gaussian A, α/r, one rate, both
        factors trained, no dropout) when it does."""
        parts = {"rank": f"r={method.get('rank')}", "targets": lorakit.describe_targets(method.get("targets"))}
        if method.get("init", "gaussian") != "gaussian":
            parts["init"] = str(method["init"])
        if method.get("rslora"):
            parts["rslora"] = "rsLoRA"
        if float(method.get("loraplus_ratio", 1.0)) != 1.0:
            parts["loraplus_ratio"] = f"LoRA+ λ={float(method['loraplus_ratio']):g}"
        if method.get("freeze_a"):
            parts["freeze_a"] = "A frozen"
        if float(method.get("dropout", 0.0) or 0.0) != 0.0:
            parts["dropout"] = f"dropout={float(method['dropout']):g}"
        for key, what in (("rank_pattern", "r"), ("alpha_pattern", "α")):
            if method.get(key):  # several allocations share this label; config_id tells them apart
                parts[key] = f"{what} per module ({len(method[key])} patterns)"
        return parts

    def run_info(self, cfg: DictConfig) -> dict:
        info = super().run_info(cfg)
        targets = _targets(cfg.method.targets)
        info["targets"] = targets if isinstance(targets, str) else ",".join(targets)
        info["alpha"] = float(info["alpha"])
        info["use_dora"] = self.use_dora
        for key in ("rank_pattern", "alpha_pattern"):  # JSON text: one cell of the runs table
            info[key] = json.dumps(_mapping(cfg.method.get(key)))
        return info


@contextmanager
def factors_replaced(model: nn.Module, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """Temporarily give the model's LoRA layers other (A, B) values; the trained ones are back afterwards."""
    modules = lorakit.lora_modules(model)
    trained = {name: (m.lora_A.detach().clone(), m.lora_B.detach().clone()) for name, m in modules.items()}
    try:
        with torch.no_grad():
            for name, (a, b) in factors.items():
                modules[name].lora_A.copy_(a)
                modules[name].lora_B.copy_(b)
        yield model
    finally:
        with torch.no_grad():
            for name, (a, b) in trained.items():
                modules[name].lora_A.copy_(a)
                modules[name].lora_B.copy_(b)


def _mapping(node) -> dict:
    """A pattern node (absent in runs written before it existed) as a plain dict, in its order."""
    return dict(OmegaConf.to_container(node)) if node else {}


def _targets(targets):
    """A ``targets`` node as lorakit takes it: a preset string, or a tuple of module names."""
    return targets if isinstance(targets, str) else tuple(OmegaConf.to_container(targets))


def find_init_adapter(init_from: DictConfig, seed: int) -> Path | None:
    """The adapter a run's LoRA factors start from (``init_from`` in conf/sweep.yaml), or None for a fresh start.

    ``init_from.dir`` is an adapter folder, a run folder holding ``adapter/``, or a sweep folder; in a sweep folder
    ``init_from.task`` picks the source, the complete LoRA run of that task with this ``seed`` (Appendix D: MNLI for
    MRPC, RTE and STS-B), and ``task: null`` means no source (how the paper preset leaves its other tasks alone).
    A half-written or failed run is never a source.
    """
    if init_from.dir is None:
        return None
    root = Path(init_from.dir)
    if not root.is_dir():
        raise FileNotFoundError(f"init_from.dir={root} does not exist; give an adapter, run or sweep folder")
    if (root / CONFIG_NAME).is_file():  # an adapter folder
        return root
    if (root / store.CONFIG).is_file():  # a run folder
        if not store.is_complete(root) or not (root / ADAPTER).is_dir():
            raise FileNotFoundError(f"init_from.dir={root} is not a complete LoRA run (no {store.COMPLETE} or no {ADAPTER}/)")
        return root / ADAPTER
    if init_from.task is None:
        return None
    for run_dir in store.run_folders(root):
        if store.is_complete(run_dir) and (run_dir / ADAPTER).is_dir():
            run = json.loads((run_dir / store.METRICS).read_text())["run"]
            if run["task"] == init_from.task and run["seed"] == seed:
                return run_dir / ADAPTER
    raise FileNotFoundError(
        f"init_from: no complete LoRA run of task={init_from.task} with seed={seed} in {root}; "
        f"run it into that sweep folder first (task={init_from.task} seed={seed})"
    )
