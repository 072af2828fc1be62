"""One run on several processes (DDP): ``torchrun --nproc_per_node=N -m experiments.sweep <overrides>``.

Every process trains the same run on its share of each global batch (``train.batch_size`` stays the global batch;
each process takes every N-th example of it), DDP averages the gradients, and every process evaluates the same model,
so the metrics are computed once in effect; only process 0 writes the run folder, W&B and COMPLETE. NCCL on GPUs
(process i on GPU ``LOCAL_RANK``), gloo on CPUs. On SLURM the submitit launcher runs it with ``tasks_per_node=N``
(``hydra.launcher.tasks_per_node``, ``gpus_per_node``): submitit sets the same variables torchrun does.
"""

from __future__ import annotations

import os
import secrets
import time

import torch
import torch.distributed as dist

from experiments.config import split_overrides
from experiments.errors import ConfigError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def setup(argv: list[str]) -> list[str]:
    """Join the process group (from torchrun's environment) and give every process the same sweep folder: process
    0's choice, broadcast, unless the command line names one. A swept override is refused: one run per launch."""
    if world_size() == 1:
        return argv
    swept = [a for a in argv if "=" in a and not a.startswith("hydra") and len(split_overrides(a.split("=", 1)[1])) > 1]
    if swept:
        raise ConfigError(f"torchrun runs one run on {world_size()} processes; {swept[0]} sweeps several: give one "
                          f"value per key, or sweep with a launcher (hydra/launcher=slurm hydra.launcher.tasks_per_node=N)")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if any(a.startswith("hydra.sweep.dir=") for a in argv):
        return argv
    chosen = [time.strftime("multirun/%Y-%m-%d/%H-%M-%S-") + secrets.token_hex(3) + f"-ddp{world_size()}"]
    dist.broadcast_object_list(chosen, src=0)
    return [*argv, f"hydra.sweep.dir={chosen[0]}"]


def device(requested: torch.device) -> torch.device:
    """Process i's GPU under DDP; the CPU as asked otherwise."""
    if active() and requested.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return requested


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model DDP trains (gradients averaged over processes); the same model unwrapped when alone."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_batch(batch_size: int) -> None:
    if active() and batch_size % world_size():
        raise ConfigError(f"train.batch_size={batch_size} does not split over {world_size()} processes; give a global "
                          f"batch size divisible by {world_size()}")


def shard(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """This process's share of a global batch (every N-th example), or None for a final batch smaller than N, which
    every process then skips alike."""
    if not active():
        return batch
    n = len(batch["labels"])
    if n < world_size():
        return None
    return {k: v[rank() :: world_size()] for k, v in batch.items()}


def barrier() -> None:
    if active():
        dist.barrier()
