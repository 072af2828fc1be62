"""What runs write to disk: which ΔW a run keeps (``save_delta``), and a sweep's bytes estimated before it starts.

A full fine-tune's ΔW is every attention and MLP weight in fp32: 425 MB per run for SmolLM2, ~3 GB for GPT-2 large,
~27 GB for a 7B model. ``save_delta`` chooses what is kept:
- ``dtype``: ``fp32`` (the default, what runs always wrote) or ``bf16`` (half the bytes; its 8-bit mantissa bounds the
  relative error of each entry by 2⁻⁹, well below the singular values the spectra count as signal);
- ``modules``: ``all`` (every module the method has a ΔW for: the modules it adapts) or a regular expression searched
  in module names (``'attention\\.self\\.(query|value)$'``: a full fine-tune keeps only the Wq, Wv that the LoRA arms
  adapt, a third of its ΔW on BERT-like models).
What was kept is written into metrics.json (``save_delta``), so an analysis knows which modules it can read.

The estimate builds each distinct run's model on the meta device (shapes, no memory, no weights read), lets its
method adapt it, and counts ΔW's bytes (the kept modules × the dtype's size) and the method's own files (its
trainable parameters in fp32, once per file it writes: LoRA's ``adapter/`` and ``adapter_init/``). Metrics, logs and
predictions are small beside these and not counted.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from experiments.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ALL = "all"


def check(node: DictConfig) -> None:
    """One line for a ``save_delta`` the runs could only fail on: an unknown dtype, a pattern that does not compile."""
    if node.dtype not in DTYPES:
        raise ConfigError(f"save_delta.dtype={node.dtype!r} is not accepted; accepted: {', '.join(DTYPES)}")
    if not isinstance(node.modules, str) or not node.modules:
        raise ConfigError(f"save_delta.modules={node.modules!r} is not accepted; accepted: all, or a regular "
                          f"expression searched in module names")
    if node.modules != ALL:
        try:
            re.compile(node.modules)
        except re.error as err:
            raise ConfigError(f"save_delta.modules={node.modules!r} is not a regular expression ({err}); accepted: "
                              f"all, or a regular expression searched in module names") from None


def kept_names(names, modules: str) -> list[str]:
    """The module names whose ΔW a run keeps under ``save_delta.modules``."""
    return list(names) if modules == ALL else [n for n in names if re.search(modules, n)]


def kept(deltas: dict[str, torch.Tensor], node: DictConfig) -> dict[str, torch.Tensor]:
    """The ΔW a run writes: the kept modules, in the chosen dtype, contiguous."""
    dtype = DTYPES[node.dtype]
    return {n: deltas[n].detach().to(dtype).contiguous() for n in kept_names(deltas, node.modules)}


def record(deltas: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], node: DictConfig) -> dict:
    """metrics.json's ``save_delta``: the choice, and which modules of the method's ΔW the file holds."""
    return {"dtype": node.dtype, "modules": node.modules, "saved": len(saved), "of": len(deltas),
            "missing": [n for n in deltas if n not in saved]}


@dataclass
class RunBytes:
    """Estimated bytes one run writes: ΔW and the method's own files."""

    delta: int
    method_files: int

    @property
    def total(self) -> int:
        return self.delta + self.method_files


def _skeleton(cfg: DictConfig, path: str) -> torch.nn.Module:
    """The run's model with its task head, on the meta device: shapes without memory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from experiments import families

    causal = families.family_of(cfg.task) == "causal_lm"
    gguf = cfg.model.get("gguf_file")
    extra = {"gguf_file": gguf} if gguf else {}
    config = AutoConfig.from_pretrained(path, **extra, **({} if causal else {"num_labels": cfg.task.num_labels}))
    with torch.device("meta"):
        return (AutoModelForCausalLM if causal else AutoModelForSequenceClassification).from_config(config)


def run_bytes(cfg: DictConfig) -> RunBytes:
    """What one run of ``cfg`` writes into its folder (module docstring); 0 with ``save: false``."""
    import lorakit
    from experiments.methods import get_method
    from experiments.models import resolve_model_path

    if not cfg.save:
        return RunBytes(0, 0)
    method = get_method(cfg.method.name)
    model = _skeleton(cfg, resolve_model_path(cfg.model))
    with torch.device("meta"):
        adapted = method.prepare(model, cfg)
    delta = 0
    if method.has_delta:
        node = cfg.get("save_delta") or {"dtype": "fp32", "modules": ALL}
        size = torch.empty((), dtype=DTYPES[node["dtype"]]).element_size()
        modules = dict(model.named_modules())
        for name in kept_names(adapted, node["modules"]):
            delta += modules[name].weight.numel() * size
    trainable = lorakit.count_parameters(model)[0]
    return RunBytes(delta, trainable * 4 * len(getattr(method, "files", ())))


def sweep_jobs(config: DictConfig) -> tuple[list[list[str]], str]:
    """The override lists of a sweep's jobs, as Hydra's basic sweeper expands them: ``hydra.sweeper.params`` (an
    experiment's sweep) then the command line, a key given twice taking its last value; and how they were counted.
    Optuna: ``n_trials`` runs of the base config (its learning rate does not change the bytes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(config.hydra.overrides.task)
    sweeper = config.hydra.sweeper
    if "optuna" in str(sweeper.get("_target_", "")):
        fixed = [o for o in task if "," not in o.split("=", 1)[-1]]
        return [fixed] * int(sweeper.get("n_trials") or 1), f"{sweeper.get('n_trials')} Optuna trials"
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + task)
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    return jobs, f"{len(jobs)} runs"


def sweep_bytes(config: DictConfig) -> tuple[int, int, list[str]]:
    """(bytes the sweep's runs will write, runs, the configurations that could not be estimated and why)."""
    from hydra import compose

    jobs, _ = sweep_jobs(config)
    name = config.hydra.job.config_name
    cache: dict[str, int] = {}
    total, failed = 0, []
    for overrides in jobs:
        cfg = compose(name, overrides=list(overrides))
        resolved = OmegaConf.to_container(cfg, resolve=True)
        key = repr([resolved.get(k) for k in ("model", "task", "method", "save", "save_delta")])  # what sizes depend on
        if key not in cache:
            try:
                cache[key] = run_bytes(cfg).total
            except Exception as err:  # an estimate never stops a sweep; the run itself reports a real fault
                cache[key] = 0
                failed.append(f"{','.join(overrides) or 'default'}: {str(err).splitlines()[0][:120]}")
        total += cache[key]
    return total, len(jobs), failed


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def free_bytes(folder: Path) -> int:
    """Free space of the disk a folder is (or will be) on: its nearest existing parent's."""
    folder = Path(folder).resolve()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def plan_line(total: int, runs: int, folder: Path) -> tuple[str, bool]:
    """(the sweep's one-line estimate, whether it exceeds the free space of ``folder``'s disk)."""
    free = free_bytes(folder)
    line = (f"[lorakit] this sweep will write about {human(total)} ({runs} runs: ΔW and the methods' files) into "
            f"{folder}; {human(free)} free there")
    if total > free:
        return (f"[lorakit] WARNING: this sweep will write about {human(total)} ({runs} runs) but the disk of "
                f"{folder} has {human(free)} free; keep less ΔW (save_delta.dtype=bf16, save_delta.modules=<regex>) "
                f"or choose hydra.sweep.dir on a larger disk"), True
    return line, False
