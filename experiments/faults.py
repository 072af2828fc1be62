"""What ran out, and where, in one line: a full disk or quota, GPU memory, host memory.

A cluster job meets these without any fault of its config; the traceback says nothing a user can act on, the one
line does (what ran out, where, what to change). ``describe`` gives the line for an exception, or None for anything
else. A process the kernel kills for memory (the OOM killer's SIGKILL) cannot say anything: its run folder is left
without COMPLETE or FAILED, listed as ``incomplete``, and a rerun resumes it from its checkpoint.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

DISK = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded"}


class ResourceExhausted(RuntimeError):
    """A disk, GPU memory or host memory ran out; the message is the one line to act on."""


def describe(err: BaseException, where: Path | str) -> str | None:
    """The one line for a resource ``err`` met while working in ``where`` (a run or sweep folder), else None."""
    if isinstance(err, OSError) and err.errno in DISK:
        path = err.filename or where
        return (f"{DISK[err.errno]} ({errno.errorcode[err.errno]}) writing {path} (free: {_free(path)}); free space "
                f"there or write elsewhere (hydra.sweep.dir=..., execution.cache_dir=...)")
    if _is_cuda_oom(err):
        detail = ". ".join(str(err).splitlines()[0].split(". ")[:2]).strip().rstrip(".")  # what, and how much
        return (f"out of GPU memory ({detail}) in {where}; lower train.batch_size or train.max_length, or use a "
                f"GPU with more memory")
    if isinstance(err, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(err):
        detail = str(err).splitlines()[0] if str(err) else "MemoryError"
        return (f"out of host memory ({detail}) in {where}; lower train.batch_size or train.max_length, run fewer "
                f"jobs at once (hydra.launcher.n_jobs) or give the job more memory (hydra.launcher.mem_gb)")
    return None


def _is_cuda_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "CUDA out of memory" in str(err)


def _free(path: Path | str) -> str:
    """The free space of the file system holding ``path`` (its nearest existing folder)."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except OSError:
        return "unknown"
    return f"{stats.f_bavail * stats.f_frsize / 2**20:.0f} MiB"


def wrapped(err: BaseException, where: Path | str) -> BaseException:
    """``err`` as a ``ResourceExhausted`` with the one line (chained to it, traceback kept) when it is one."""
    line = describe(err, where)
    if line is None:
        return err
    try:
        raise ResourceExhausted(line) from err
    except ResourceExhausted as outer:
        return outer
