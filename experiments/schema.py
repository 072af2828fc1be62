"""Every key a user can set, with what it accepts: written once, and both the checks and their messages derive from it.

``check_config(cfg)`` runs at the boundary (before any job of a sweep, and again in each job for swept values) and
raises ``ConfigError`` with one line naming the key, the value and what is accepted. A method's own keys live in its
module (``Method.accepts``, experiments/methods/), checked here under ``method.<key>`` for the run's method only.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from experiments.accepts import FLAG, NATURAL, POSITIVE, POSITIVE_INT, Accepts, OneOf
from experiments.errors import ConfigError
from experiments.identity import known_options, method_keys


# Keys every run has. Method keys: experiments/methods/<name>.py. Task and model nodes are checked for presence.
KEYS: dict[str, Accepts] = {
    "seed": NATURAL,
    "save": FLAG,
    "save_delta.dtype": Accepts(str, choices=("fp32", "bf16")),  # experiments/disk.py
    "save_delta.modules": Accepts(str),  # all, or a regular expression (compiled by experiments/disk.check)
    # Each method's learning rate (train.lr, train.full_lr, ...): the keys the method configs read, not a list here.
    **{f"train.{key}": POSITIVE for key in sorted(method_keys(node="train"))},
    "train.batch_size": POSITIVE_INT,
    "train.epochs": NATURAL,  # 0: zero-shot, the prepared model evaluated once, nothing trained
    "train.max_length": Accepts(int, low=8),
    "train.max_train_samples": Accepts(int, low=1, nullable=True),
    "train.max_eval_samples": Accepts(int, low=1, nullable=True),
    "train.warmup_ratio": Accepts(float, low=0, high=1),
    "train.weight_decay": Accepts(float, low=0),
    "train.max_grad_norm": Accepts(float, low=0, low_open=True, nullable=True),
    "train.group_by_length": FLAG,
    "train.divergence_factor": Accepts(float, low=1, low_open=True),
    "data.subset_seed": NATURAL,
    "data.shuffle_labels": FLAG,
    "data.selection_examples": NATURAL,
    "train.select_on": Accepts(str, choices=("dev", "selection")),
    "probes.truncation": OneOf((FLAG, NATURAL)),  # true: every k (0, 1, 2, 4, ... below ΔW's rank); K: those ≤ K
    "probes.forgetting": Accepts(str, choices=("auto", True, False)),
    "probes.forgetting_pairs": Accepts(int, low=10, nullable=True),
    "method.lr": POSITIVE,
    "execution.threads": Accepts(int, low=1, nullable=True),
    "execution.device": Accepts(str, choices=("auto", "cpu", "cuda")),
    "execution.progress": Accepts(str, choices=("auto", True, False)),
    "execution.log_every": POSITIVE_INT,
    "execution.checkpoint_every": NATURAL,
    "execution.wandb.mode": Accepts(str, choices=("offline", "online", "disabled")),
    "execution.monitor.enabled": FLAG,
    "execution.monitor.every": POSITIVE_INT,
    "execution.monitor.modules": Accepts(str, nullable=True),  # a regular expression; compiled by experiments/monitor.py
    "execution.monitor.gradient_alignment": FLAG,
}


def _get(cfg: DictConfig, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError, one line, for any value a run could only fail on later."""
    from experiments import disk, families
    from experiments.methods import get_method

    task = cfg.task.name
    if task not in known_options("task"):
        raise ConfigError(f"unknown task {task!r}; known: {', '.join(known_options('task'))}")
    method = get_method(cfg.method.name)  # one line listing the known methods when unknown
    for key, accepts in KEYS.items():
        accepts.check(key, _get(cfg, key))
    disk.check(cfg.save_delta)  # save_delta.modules: a regular expression that compiles
    typed = method_keys(method.name)  # shown as the user types them: `rank`, not `method.rank`
    for key, accepts in method.accepts.items():
        accepts.check(key if key in typed else f"method.{key}", cfg.method[key])
    method.check(cfg)
    families.for_run(cfg).check(cfg)  # the task and model agree; the family's data is where it is looked for
