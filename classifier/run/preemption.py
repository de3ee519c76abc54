"""Preemption: SIGUSR1 (what SLURM sends before a time limit or a preemption, with `--signal`, and what
submitit asks for) stops training the way SIGTERM does, with last.ckpt saved where training stood,
and then has the job requeued, so the same command resumes it.

Lightning handles SIGTERM (stop at the next step; CheckpointOnInterrupt saves last.ckpt). SIGUSR1
is turned into that same stop. After it, the job is requeued: by the SIGUSR1 handler that was there
before (submitit's, which resubmits the Hydra job), else by `scontrol requeue $SLURM_JOB_ID` when
running under SLURM. Lightning's own SLURM auto-requeue is not used: it saves an hpc_ckpt that this
project's resume does not read, and requeues without stopping training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGUSR1_EXIT = 128 + 10  # as a shell reports a process ended by SIGUSR1


class Preemption:
    """Whether SIGUSR1 arrived during training, and what to call to requeue the job afterwards."""

    def __init__(self) -> None:
        self.received = False
        self.previous: Any = signal.SIG_DFL

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            return
        self.received = True
        log.info("SIGUSR1: stopping at the next step; last.ckpt is saved and the job requeued")
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's stop, and CheckpointOnInterrupt's save

    def requeue(self) -> str:
        """Requeue the job; returns what was done, for the log."""
        if callable(self.previous):  # submitit's handler: it resubmits the job and exits
            self.previous(signal.SIGUSR1, None)
            return "handed to the previous SIGUSR1 handler"
        job_id = slurm_job_id()
        if job_id is None:
            return "not under SLURM: not requeued"
        if os.environ.get("SLURM_PROCID", "0") != "0":
            return "requeued by the job's first task"
        try:
            result = subprocess.run(
                ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"scontrol requeue {job_id} failed: {exc}"
        if result.returncode != 0:
            return f"scontrol requeue {job_id} failed: {result.stderr.strip() or result.returncode}"
        return f"SLURM job {job_id} requeued"


def slurm_job_id() -> str | None:
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return os.environ.get("SLURM_JOB_ID")


@contextlib.contextmanager
def sigusr1_stops_training(preemption: Preemption) -> Iterator[Preemption]:
    """Handle SIGUSR1 with `preemption` while training; the previous handler comes back after."""
    # Windows has no SIGUSR1; and only the main thread may set handlers (a launcher's thread may not).
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        yield preemption
        return
    preemption.previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, preemption.handle)
    try:
        yield preemption
    finally:
        signal.signal(signal.SIGUSR1, preemption.previous)
