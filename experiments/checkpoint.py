"""Mid-run checkpoints: a run killed or preempted resumes from its last checkpoint, not from step 0, and ends with
the metrics an uninterrupted run gives.

Every ``execution.checkpoint_every`` optimizer steps the training state is written (atomically) to the run folder's
``.checkpoint/state.pt``: the trainable parameters, AdamW's and the schedule's state, the step, the epoch and how many
of its batches are done, the data order's generator at the epoch's start, every random generator (dropout), and the
metrics so far, beside the identity of the run's config. A rerun of the same folder (locally, or SLURM's requeue
through submitit's checkpointing: ``hydra.launcher.max_num_timeout``) resumes from it; a checkpoint made with another
config is set aside with one line and the run starts over. The folder goes once the run is COMPLETE.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

FOLDER, STATE, IDENTITY = ".checkpoint", "state.pt", "identity.json"


def save(folder: Path, model: nn.Module, optimizer, scheduler, progress: dict, generator: torch.Tensor) -> None:
    """Write the training state; ``progress`` holds the loop's counters and the metrics so far (plain Python)."""
    from experiments.store import atomic_path

    state = {
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress,
        "epoch_generator": generator,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    with atomic_path(Path(folder) / STATE) as tmp:
        torch.save(state, tmp)


def load(folder: Path) -> dict | None:
    path = Path(folder) / STATE
    return torch.load(path, weights_only=False) if path.is_file() else None  # our own file, written above


def restore(state: dict, model: nn.Module, optimizer, scheduler) -> None:
    """Put the trainable parameters, the optimizer and the schedule back (the random generators: ``restore_rng``)."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


def restore_rng(state: dict) -> None:
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def write_identity(folder: Path, identity: dict) -> None:
    from experiments.store import write_json

    write_json(Path(folder) / IDENTITY, identity)


def matches(folder: Path, identity: dict) -> bool:
    path = Path(folder) / IDENTITY
    return path.is_file() and json.loads(path.read_text()) == json.loads(json.dumps(identity, default=str))
