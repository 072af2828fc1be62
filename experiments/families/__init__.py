"""What a run's task asks the model to produce: a label per input (GLUE: sequence classification on an encoder) or a
text (E2E NLG: a causal LM trained on the completion and scored on what it generates).

A family owns what differs between the two — the model class it loads, the data it reads and batches, and how an
epoch is evaluated — so ``train(cfg)`` runs either without asking which. The task file and the model file each name
their family (``family: causal_lm``); files without the key are ``sequence_classification``, the GLUE tasks and the
encoders, whose runs keep the identity they had before the key existed.
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig

from experiments.errors import ConfigError
from experiments.families.base import Evaluation, Family, RunData
from experiments.families.causal_lm import CausalLM
from experiments.families.classification import SequenceClassification

__all__ = ["DEFAULT", "Evaluation", "Family", "RunData", "family_of", "for_run"]
DEFAULT = "sequence_classification"


def family_of(node: DictConfig) -> str:
    """The family a task or model file names (``family:``); absent: sequence classification."""
    return node.get("family") or DEFAULT


def _families() -> dict[str, Callable[[], Family]]:
    return {f.name: f for f in (SequenceClassification, CausalLM)}


def for_run(cfg: DictConfig) -> Family:
    """The run's family; one line when the task and the model are of different families, or a family is unknown."""
    known = _families()
    task, model = family_of(cfg.task), family_of(cfg.model)
    for what, name in (("task", task), ("model", model)):
        if name not in known:
            raise ConfigError(f"{what}.family={name!r} is not known; known: {', '.join(known)}")
    if task != model:
        suggestion = "a decoder such as model=smollm2" if task == "causal_lm" else "an encoder such as model=minilm"
        raise ConfigError(f"task={cfg.task.name} is a {task} task but model={cfg.model.name} is a {model} model; "
                          f"use {suggestion}")
    return known[task]()
