"""Every key a user can set, with what it accepts: written once, and both the checks and their messages derive from it.

``check_config(cfg)`` runs at the boundary (before any job of a sweep, and again in each job for swept values) and
raises ``ConfigError`` with one line naming the key, the value and what is accepted. A method's own keys live in its
module (``Method.accepts``, experiments/methods/), checked here under ``method.<key>`` for the run's method only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from experiments.config import ConfigError, known_options, method_keys


@dataclass(frozen=True)
class Accepts:
    """The values of one key: a type, an optional closed or open range, choices, and whether null is allowed."""

    kind: type  # int, float, bool or str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nullable: bool = False

    def describe(self) -> str:
        if self.choices:
            text = " | ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        elif self.kind is bool:
            text = "true | false"
        else:
            noun = {int: "an integer", float: "a number", str: "a string"}[self.kind]
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '≤'} {self.high:g}")
            text = noun + (" " + " and ".join(bounds) if bounds else "")
        return text + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.choices:
            return value in self.choices and type(value) is type(next(c for c in self.choices if c == value))
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return False
        if self.kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
            return False
        if self.kind is str:
            return isinstance(value, str)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise ConfigError(f"{key}={_show(value)} is not accepted: {key} must be {self.describe()}")


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


POSITIVE_INT = Accepts(int, low=1)
NATURAL = Accepts(int, low=0)
POSITIVE = Accepts(float, low=0, low_open=True)
FLAG = Accepts(bool)

# Keys every run has. Method keys: experiments/methods/<name>.py. Task and model nodes are checked for presence.
KEYS: dict[str, Accepts] = {
    "seed": NATURAL,
    "save": FLAG,
    # Each method's learning rate (train.lr, train.full_lr, ...): the keys the method configs read, not a list here.
    **{f"train.{key}": POSITIVE for key in sorted(method_keys(node="train"))},
    "train.batch_size": POSITIVE_INT,
    "train.epochs": POSITIVE_INT,
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
    "probes.truncation": FLAG,
    "probes.forgetting": Accepts(str, choices=("auto", True, False)),
    "probes.forgetting_pairs": Accepts(int, low=10, nullable=True),
    "method.lr": POSITIVE,
    "execution.threads": Accepts(int, low=1, nullable=True),
    "execution.device": Accepts(str, choices=("auto", "cpu", "cuda")),
    "execution.progress": Accepts(str, choices=("auto", True, False)),
    "execution.log_every": POSITIVE_INT,
    "execution.checkpoint_every": NATURAL,
    "execution.wandb.mode": Accepts(str, choices=("offline", "online", "disabled")),
}


def _get(cfg: DictConfig, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError, one line, for any value a run could only fail on later."""
    from experiments import families
    from experiments.methods import get_method

    task = cfg.task.name
    if task not in known_options("task"):
        raise ConfigError(f"unknown task {task!r}; known: {', '.join(known_options('task'))}")
    method = get_method(cfg.method.name)  # one line listing the known methods when unknown
    for key, accepts in KEYS.items():
        accepts.check(key, _get(cfg, key))
    typed = method_keys(method.name)  # shown as the user types them: `rank`, not `method.rank`
    for key, accepts in method.accepts.items():
        accepts.check(key if key in typed else f"method.{key}", cfg.method[key])
    method.check(cfg)
    families.for_run(cfg).check(cfg)  # the task and model agree; the family's data is where it is looked for
