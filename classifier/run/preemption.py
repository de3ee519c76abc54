"""Preemption: the signal SLURM sends before a time limit or a preemption (`--signal`) stops training
the way SIGTERM does, with last.ckpt saved where training stood, and then has the job requeued, so
the same command resumes it.

Two signals are taken for it: SIGUSR1, the usual choice with plain sbatch (`--signal=USR1@120`), and
the one submitit asks SLURM for under hydra/launcher=slurm (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL
says otherwise; submitit avoids SIGUSR1, which NCCL may take).

Lightning handles SIGTERM (stop at the next step; CheckpointOnInterrupt saves last.ckpt). The
preemption signal is turned into that same stop. After it, the job is requeued: by the handler that
was there before (submitit's, which requeues the Hydra job and exits), else by
`scontrol requeue $SLURM_JOB_ID` when running under SLURM. Lightning's own SLURM auto-requeue is not
used: it saves an hpc_ckpt that this project's resume does not read, and requeues without stopping
training.
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


def preemption_signals() -> list[signal.Signals]:
    """SIGUSR1 and submitit's preemption signal (SUBMITIT_PREEMPT_SIGNAL, by default USR2)."""
    submitit = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    found = [signal.SIGUSR1, getattr(signal, f"SIG{submitit}", signal.SIGUSR2)]
    return list(dict.fromkeys(found))


class Preemption:
    """Whether a preemption signal arrived during training, and what to call afterwards to requeue
    the job."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    @property
    def received(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGUSR1)  # as a shell reports a process ended by it

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:
            return
        self.signum = signum
        log.info("%s: stopping at the next step; last.ckpt is saved and the job requeued", self.name)
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's stop, and CheckpointOnInterrupt's save

    @property
    def requeues(self) -> bool:
        """Whether requeue() will requeue: a handler was there before, or the job runs under SLURM."""
        return callable(self.previous.get(self.signum)) or slurm_job_id() is not None

    def requeue(self) -> str:
        """Requeue the job; returns what was done, for the log."""
        previous = self.previous.get(self.signum)
        if callable(previous):  # submitit's handler: it requeues the job and exits
            log.info("handing %s to the handler that was there before training (submitit's)", self.name)
            previous(self.signum, None)
            return f"handed to the previous {self.name} handler"
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
def preemption_stops_training(preemption: Preemption) -> Iterator[Preemption]:
    """Handle the preemption signals with `preemption` while training; the previous handlers come
    back after."""
    # Windows has no SIGUSR1; and only the main thread may set handlers (a launcher's thread may not).
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        yield preemption
        return
    for signum in preemption_signals():
        preemption.previous[signum] = signal.signal(signum, preemption.handle)
    try:
        yield preemption
    finally:
        for signum, handler in preemption.previous.items():
            signal.signal(signum, handler)
