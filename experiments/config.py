"""The boundary between the Hydra config and the code: resolvers, validation, and conversion to lorakit's dataclass."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
METHODS = ("lora", "full", "head")


class ConfigError(CompactHydraException, ValueError):
    """A bad input. Hydra prints a CompactHydraException as its message alone: one line, no traceback."""


def known_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _default_glue_dir() -> str | None:
    """``<repo>/../shared/glue`` when it exists: the layout of a fresh clone next to the shared data."""
    candidate = REPO_ROOT.parent / "shared" / "glue"
    return str(candidate) if candidate.is_dir() else None


def _sweep_id() -> str:
    """A random suffix that keeps two sweeps started in the same second apart. Cached in the config, and Hydra
    hands the cache to each job (its launchers pickle it), so every job of a sweep resolves the same folder."""
    return secrets.token_hex(3)


# Keys that configure LoRA alone; a full fine-tune ignores them (and records them as null).
LORA_KEYS = ("rank", "alpha", "targets", "init", "rslora", "dropout", "init_from")


def _run_name(override_dirname: str | None) -> str:
    """A run folder's name: its overrides (``rank=8,seed=1``), "/" in a value made "_" so it stays one folder.

    A run of any method but LoRA (the default) leaves the LoRA keys out of its name, as ``job._results_config``
    leaves them out of what its results depend on: ``method=lora,full rank=4,64`` trains the full fine-tune once, its
    second job finding the first one's folder complete and skipping it (experiments/job.py).
    """
    items = _split_overrides(override_dirname) if override_dirname else []
    method = next((i.split("=", 1)[1] for i in items if i.split("=", 1)[0].lstrip("+~") == "method"), "lora")
    if method != "lora":
        items = [i for i in items if i.split("=", 1)[0].lstrip("+~").split(".")[0] not in LORA_KEYS]
    return ",".join(items).replace("/", "_") or "default"


def _split_overrides(joined: str) -> list[str]:
    """Hydra's ``override_dirname`` back into its overrides: split on the commas outside brackets and quotes, so
    ``model.head=[pooler,classifier],seed=0`` gives two items, not three."""
    items, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(joined):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(joined[start:i])
            start = i + 1
    return items + [joined[start:]]


def _rank_at_budget(targets, rank_one_type: int) -> int:
    """The rank that spends the budget of one weight type at ``rank_one_type`` over all the types in ``targets``
    (Table 5: r=8 for Wq alone, 4 for {Wq, Wv}, 2 for all four), for d×d attention projections."""
    if isinstance(targets, str) and targets and set(targets) <= set("qkvo"):
        types = len(set(targets))
    elif not isinstance(targets, str):
        types = len(targets)
    else:
        raise ConfigError(f"a fixed-budget rank needs targets made of the letters q, k, v, o or a list, got {targets!r}")
    if rank_one_type % types:
        raise ConfigError(f"a budget of rank {rank_one_type} on one weight type does not split over {types} types")
    return rank_one_type // types


def register_resolvers() -> None:
    """Register the ``lorakit.*`` resolvers the configs use; call before composing (idempotent)."""
    OmegaConf.register_new_resolver("lorakit.default_glue_dir", _default_glue_dir, replace=True)
    OmegaConf.register_new_resolver("lorakit.unique", _sweep_id, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("lorakit.run_name", _run_name, replace=True)
    OmegaConf.register_new_resolver("lorakit.rank_at_budget", _rank_at_budget, replace=True)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError, one line, for any input a run could only fail on later."""
    from lorakit import LoRAError, resolve_targets

    task, method = cfg.task.name, cfg.method.name
    if task not in known_options("task"):
        raise ConfigError(f"unknown task {task!r}; known: {', '.join(known_options('task'))}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if method == "lora":
        if isinstance(cfg.rank, bool) or not isinstance(cfg.rank, int) or cfg.rank <= 0:
            raise ConfigError(f"rank must be a positive integer, got {cfg.rank!r}")
        if not cfg.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {cfg.alpha!r}")
        try:
            resolve_targets(_targets(cfg.targets))
        except LoRAError as err:
            raise ConfigError(str(err)) from None
    train = cfg.train
    for key in ("batch_size", "epochs", "max_length"):
        if not (isinstance(train[key], int) and train[key] > 0):
            raise ConfigError(f"train.{key} must be a positive integer, got {train[key]!r}")
    if not cfg.method.lr > 0:
        raise ConfigError(f"learning rate must be > 0, got {cfg.method.lr!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.wandb.mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"wandb.mode must be offline, online or disabled, got {cfg.wandb.mode!r}")
    if cfg.data.dir is not None and not Path(cfg.data.dir).is_dir():
        raise ConfigError(
            f"data folder {cfg.data.dir} does not exist; expected <dir>/<task>/train.parquet and validation.parquet "
            f"(the layout of ../shared/glue); set it with data.dir=... or the GLUE_DIR environment variable"
        )


def _targets(targets):
    return targets if isinstance(targets, str) else tuple(OmegaConf.to_container(targets))


def lora_config(cfg: DictConfig):
    """The run's ``lorakit.LoRAConfig``: the one place Hydra keys become library arguments."""
    from lorakit import LoRAConfig

    return LoRAConfig(
        r=int(cfg.rank),
        alpha=float(cfg.alpha),
        dropout=float(cfg.dropout),
        targets=_targets(cfg.targets),
        init=cfg.init,
        rslora=bool(cfg.rslora),
        trainable=tuple(cfg.model.head),
    )


def run_info(cfg: DictConfig, name: str, model_path: str) -> dict:
    """The ``run`` block of metrics.json: what distinguishes this run. LoRA keys are null for full fine-tuning."""
    lora = cfg.method.name == "lora"
    targets = _targets(cfg.targets)
    return {
        "name": name,
        "task": cfg.task.name,
        "method": cfg.method.name,
        "model": cfg.model.name,
        "model_path": model_path,
        "rank": int(cfg.rank) if lora else None,
        "alpha": float(cfg.alpha) if lora else None,
        "targets": (targets if isinstance(targets, str) else ",".join(targets)) if lora else None,
        "seed": int(cfg.seed),
        "init": cfg.init if lora else None,
        "rslora": bool(cfg.rslora) if lora else None,
    }


def launcher_threads(launcher: DictConfig | None, cpu_count: int | None = None) -> int | None:
    """Threads per job so a launcher's parallel jobs share the cores instead of oversubscribing them.

    joblib runs ``n_jobs`` processes at once (negative: cpu_count + 1 + n_jobs, joblib's rule); submitit gives each
    job ``cpus_per_task`` or, run locally without it, one core per job. None: the in-process launcher, torch's default.
    """
    cpus = cpu_count or os.cpu_count() or 1
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    if "n_jobs" in launcher:
        n_jobs = int(launcher.n_jobs)
        parallel = n_jobs if n_jobs > 0 else max(1, cpus + 1 + n_jobs)
        return max(1, cpus // parallel)
    if "submitit" in target:
        return int(launcher.cpus_per_task) if launcher.get("cpus_per_task") else 1
    return None
