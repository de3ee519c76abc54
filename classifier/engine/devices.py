"""The device an inference command runs on; and one GPU per job when a multirun's jobs run side by
side (the joblib or submitit_local launcher on a machine with several GPUs): each job claims a free GPU
with a lock file in the sweep folder and trains on it alone, so jobs never share a device unless the
config asks for more than one per job."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.accelerators import CPUAccelerator
from omegaconf import DictConfig, open_dict

from classifier.errors import UserError

log = logging.getLogger(__name__)

LOCK_FOLDER = ".gpu_locks"
WAIT_SECONDS = 5.0


def inference_device(name: str) -> torch.device:
    """The device of a `device=` key (predict.py, probe.py, zeroshot.py): auto is a GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but torch finds no GPU on this machine: use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"device={name!r} is not a torch device (cpu, cuda, cuda:1, auto)") from exc


def wants_one_gpu(cfg: DictConfig) -> bool:
    """Whether this job trains on one GPU that the sweep should choose: one_gpu_per_job is on, the
    trainer takes one device (trainer.devices=1) on a GPU or 'auto', and torch sees several GPUs."""
    trainer = cfg.get("trainer") or {}
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    return (
        bool(cfg.get("one_gpu_per_job", True))
        and accelerator in ("auto", "gpu", "cuda")
        and str(trainer.get("devices")) == "1"
        and torch.cuda.device_count() > 1
    )


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def warn_if_cpu_processes_exceed_cores(trainer: L.Trainer) -> None:
    """A WARNING line when a Trainer on the CPU starts more processes than there are cores: each one
    then waits for the others (`trainer.devices=4` on 2 cores is slower than 2), though it works,
    which is why it is not refused."""
    cores = usable_cores()
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)
    if on_cpu and trainer.num_devices > cores and trainer.is_global_zero:
        log.warning(
            "trainer.devices=%d starts %d CPU processes on %d cores: they share the cores and run slower"
            " than trainer.devices=%d would",
            trainer.num_devices,
            trainer.num_devices,
            cores,
            cores,
        )


@contextlib.contextmanager
def claim_gpu(lock_dir: Path, count: int, timeout: float | None = None) -> Iterator[int]:
    """Hold the lock of the first free GPU of `count` (waiting for one to be released) and yield its
    index; the lock goes with the process, so a killed job frees its GPU. filelock's FileLock: an flock
    on Unix, LockFileEx on Windows, so jobs side by side get a GPU each there too.

    Raises:
        TimeoutError: no GPU was free within `timeout` seconds (None: wait for ever).
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    started, announced = time.monotonic(), False
    while True:
        for index in range(count):
            lock = FileLock(lock_dir / f"gpu{index}.lock", preserve_lock_file=True)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                continue
            try:
                yield index
            finally:
                lock.release()
            return
        if timeout is not None and time.monotonic() - started > timeout:
            raise TimeoutError(f"no free GPU of {count} in {timeout:.0f} s")
        if not announced:
            log.info("all %d GPUs are taken by other jobs of this sweep: waiting for one", count)
            announced = True
        time.sleep(WAIT_SECONDS)


@contextlib.contextmanager
def sweep_job_device(cfg: DictConfig, sweep_dir: str | Path | None) -> Iterator[None]:
    """In a multirun job that wants_one_gpu, set trainer.devices to the GPU it claims for its whole run."""
    if sweep_dir is None or not wants_one_gpu(cfg):
        yield
        return
    with claim_gpu(Path(sweep_dir) / LOCK_FOLDER, torch.cuda.device_count()) as index:
        with open_dict(cfg):
            cfg.trainer.devices = [index]
        log.info("this job trains on GPU %d (one_gpu_per_job=true)", index)
        yield
