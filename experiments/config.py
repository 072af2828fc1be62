"""The boundary between the Hydra config and the code: resolvers, run identity and validation.

A run's config has four kinds of keys (conf/sweep.yaml):
- what it is: ``task``, ``model``, ``method``, ``train``, ``data``, ``probes``, ``seed``, ``save``;
- the method keys a user types at the top level (``rank=4,8,16,64``), each read by the methods whose
  ``conf/method/<name>.yaml`` interpolates it into the ``method`` node;
- ``execution``: how it runs and where it logs (threads, device, progress, W&B, data and cache paths);
- Hydra's own node (launcher, sweeper), never part of a job's config.

A run's identity (its folder name, and "skip a complete run with the same config") is its resolved config minus the
``execution`` block and minus the top-level method keys, whose values its own method carries in ``method``: one rule,
so ``method=lora,full rank=4,64`` trains the full fine-tune once. Likewise ``train``'s per-method learning rates: the
one a run trains at is ``method.lr``.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from omegaconf import DictConfig, OmegaConf

from experiments.errors import ConfigError
from experiments.identity import (  # noqa: F401  (the boundary's names, re-exported)
    CONF_DIR, EXECUTION, canonical, config_id, identity, known_options, method_keys, same_identity,
)

REPO_ROOT = CONF_DIR.parent


# Keys that moved into the execution block (issue 10), still accepted as typed before.
MOVED = {"threads": "threads", "device": "device", "progress": "progress", "log_every": "log_every",
         "wandb": "wandb", "data.dir": "data_dir", "data.cache_dir": "cache_dir"}


def moved_keys(argv: list[str]) -> list[str]:
    """``device=cpu`` → ``execution.device=cpu``, ``wandb.mode=disabled`` → ``execution.wandb.mode=disabled``."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        for old, new in MOVED.items():
            if eq and (key == old or key.startswith(old + ".")):
                arg = f"{EXECUTION}.{new}{key[len(old):]}={value}"
                break
        out.append(arg)
    return out


def _default_data_dir(name: str) -> str | None:
    """``<repo>/../shared/<name>`` when it exists: the layout of a fresh clone next to the shared data."""
    candidate = REPO_ROOT.parent / "shared" / name
    return str(candidate) if candidate.is_dir() else None


def _sweep_id() -> str:
    """A random suffix that keeps two sweeps started in the same second apart. Cached in the config, and Hydra
    hands the cache to each job (its launchers pickle it), so every job of a sweep resolves the same folder."""
    return secrets.token_hex(3)


def run_name(override_dirname: str | None, method: str) -> str:
    """A run folder's name: the overrides that are part of its identity (``rank=8,seed=1``), "/" made "_".

    Left out: ``execution.*``, the top-level method keys and the learning rates (``train.full_lr``) that ``method``
    does not read, so a full fine-tune swept over ranks gets one folder (its second job finds the first one's folder
    complete and skips it). A value longer than ``LONG_VALUE`` characters (a ``rank_pattern`` of twenty modules)
    is named by a hash of itself, so the folder name stays within the file system's 255 bytes and still differs
    between two such values; the value itself is in the run's config.yaml and identity.
    """
    items = split_overrides(override_dirname) if override_dirname else []
    ignored = method_keys() - method_keys(method)
    unread_train = {f"train.{k}" for k in method_keys(node="train") - method_keys(method, "train")}

    def kept(item: str) -> bool:
        key = item.split("=", 1)[0].lstrip("+~")
        root = key.split(".")[0]
        return root not in ignored and key not in unread_train and root not in (EXECUTION, "experiment")

    return ",".join(_short(item) for item in items if kept(item)).replace("/", "_") or "default"


LONG_VALUE = 40


def _short(item: str) -> str:
    """``key=value``, or ``key=#<hash>`` when the value is longer than ``LONG_VALUE`` characters."""
    key, eq, value = item.partition("=")
    if len(value) <= LONG_VALUE:
        return item
    return f"{key}{eq}#{hashlib.sha256(value.encode()).hexdigest()[:10]}"


def split_overrides(joined: str) -> list[str]:
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
    OmegaConf.register_new_resolver("lorakit.default_data_dir", _default_data_dir, replace=True)
    OmegaConf.register_new_resolver("lorakit.unique", _sweep_id, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("lorakit.run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("lorakit.rank_at_budget", _rank_at_budget, replace=True)


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
