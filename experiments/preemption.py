"""Preemption: SLURM signals a job before it stops it (SIGTERM when it preempts or cancels it; SIGUSR1, or any signal,
``--signal=USR1@90`` seconds before its time limit). A run that gets one finishes the optimizer step it is in, writes
a checkpoint at that step and exits for requeue, so the rerun resumes from that step, not from the last periodic
checkpoint up to ``execution.checkpoint_every`` steps back.

A signal handler may run between any two bytecodes, so it only records the signal; the training loop asks
``requested`` after each step, where the state is whole. Where another handler was there first (submitit's, which
requeues its job), it is called after the checkpoint is written; then ``Preempted`` unwinds the run. ``Preempted`` is
not an ``Exception``: the job's failure handling does not record a preempted run as FAILED, and the entry point turns
it into one line and exit status 128 + the signal's number, requeueing the SLURM job where there is one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)


class Preempted(BaseException):
    """The run stopped at a step after a preemption signal; its checkpoint holds that step."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum


class Watch:
    """The signals a run listens for while it trains; ``requested`` is the first one received, or None."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.previous: dict[int, object] = {}

    def _record(self, signum: int, frame) -> None:
        if self.requested is None:
            self.requested = signum

    def stop(self, message: str) -> None:
        """Call the handler that was installed before ours (submitit's requeue), then unwind the run."""
        signum = int(self.requested)
        previous = self.previous.get(signum)
        if callable(previous):  # submitit's: it requeues and exits here, so the log keeps the line
            log.warning("%s", message)
            previous(signum, None)
        raise Preempted(signum, message)


def signals() -> list[int]:
    """SIGTERM and SIGUSR1; SIGUSR2 too where a Python handler already listens on it (submitit's time-limit signal)."""
    chosen = [signal.SIGTERM, signal.SIGUSR1]
    if callable(signal.getsignal(signal.SIGUSR2)):
        chosen.append(signal.SIGUSR2)
    return chosen


@contextmanager
def watch() -> Iterator[Watch]:
    """Listen for the preemption signals while the block runs (only a process's main thread can), then put the
    handlers that were there back."""
    state = Watch()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    for signum in signals():
        state.previous[signum] = signal.signal(signum, state._record)
    try:
        yield state
    finally:
        for signum, previous in state.previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


def name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(err: Preempted) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended; the SLURM job is requeued first
    where there is one (``scontrol requeue``), as Lightning's SLURM support does."""
    job = os.environ.get("SLURM_JOB_ID")
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        job = f"{array}_{task}"
    if job and shutil.which("scontrol"):
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        outcome = "requeued" if done.returncode == 0 else f"could not be requeued ({done.stderr.strip()})"
        print(f"[lorakit] SLURM job {job} {outcome}", flush=True)
    return 128 + err.signum
