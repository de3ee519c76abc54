"""Callbacks for what a person watches: training speed and start-up time, a compact progress bar,
and one summary line per epoch."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

log = logging.getLogger(__name__)


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux: /proc), imports included; None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            # the fields after the command name, which may hold spaces; starttime is field 22
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


class JobClock:
    """How long the current job has been starting. The first job of a process counts from the
    process's start, since the imports are part of what its user waits for; a later job (Hydra's
    basic launcher runs a sweep's jobs one after another in one process) from its own start."""

    def __init__(self) -> None:
        self.jobs = 0
        self.started: float | None = None  # perf_counter at the current job's start, from the second on

    def start_job(self) -> None:
        self.jobs += 1
        self.started = time.perf_counter() if self.jobs > 1 else None

    @property
    def counts_from_process_start(self) -> bool:
        return self.started is None

    def seconds(self) -> float | None:
        if self.started is None:
            return seconds_since_process_start()
        return time.perf_counter() - self.started


# The one clock of this process: tasks.train starts a job on it, TrainSpeed reads it.
JOB_CLOCK = JobClock()


class TrainSpeed(L.Callback):
    """Logs `train/images_per_sec` each epoch: steady-state speed from the end of the first training
    batch to the end of the last (loader start-up, which Lightning begins before the epoch starts,
    and validation are excluded). `make bench` compares it with a plain loop timed the same way.
    Not Lightning's ThroughputMonitor: its rolling window of steps spans epochs (loader restarts included)
    and goes only to the loggers, not to callback_metrics, which the model card (and sweeps) read.
    Also `train/startup_s`, once per job: seconds from the job's start (JobClock) to its first
    training step (imports, data, model, sanity check), in the log and in the first epoch's metrics."""

    def __init__(self, clock: JobClock | None = None) -> None:
        self.images = 0
        self.started: float | None = None
        self.last_batch_end = 0.0
        self.startup: float | None = None
        self._startup_logged = False
        self.clock = clock or JOB_CLOCK

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.started = 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._startup_logged:
            return
        self._startup_logged = True  # once per job (a Trainer's callbacks are built per job)
        self.startup = self.clock.seconds()
        if self.startup is not None and trainer.is_global_zero:
            since = "the process started" if self.clock.counts_from_process_start else "the job started"
            log.info("first training step %.1f s after %s", self.startup, since)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        else:
            self.images += len(batch[1])
        self.last_batch_end = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.startup is not None:
            pl_module.log("train/startup_s", self.startup)
            self.startup = None
        if not self.images or self.started is None or self.last_batch_end <= self.started:
            return
        # Images on this device times devices: every rank trains on its own shard.
        rate = self.images * trainer.world_size / (self.last_batch_end - self.started)
        pl_module.log("train/images_per_sec", rate)


def epoch_of(trainer: L.Trainer) -> str:
    """The epoch in progress as a person counts it: "4/10" (1-based, of max_epochs), "4" without an
    epoch limit."""
    epoch = trainer.current_epoch + 1
    return f"{epoch}/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else str(epoch)


def step_loss(outputs: Any, trainer: L.Trainer) -> torch.Tensor | None:
    """The training loss of one batch as training_step returned it, left on its device. Lightning
    hands callbacks the loss divided by accumulate_grad_batches (what backward got); this undoes that."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return None
    return loss.detach().reshape(()) * trainer.accumulate_grad_batches


class CompactProgressBar(TQDMProgressBar):
    """Lightning's bar with what fits in 80 columns: epoch n/N, the running mean of this epoch's
    training loss so far, and the top-1 of the last validation. The full set of metrics is in the
    one log line per epoch that EpochSummary writes."""

    TRAIN_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss_sum: torch.Tensor | float = 0.0
        self._loss_images = 0
        self._bar_epoch: int | None = None  # the epoch the train bar was set up for

    @property
    def is_disabled(self) -> bool:
        # Redrawn bars written to a file or a pipe (a batch job's log, `| tee`, eval.py > log.txt)
        # are kilobytes of carriage returns; there, the log lines tell the progress. Lightning's
        # bars write to stdout.
        return super().is_disabled or not sys.stdout.isatty()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        # train/loss is logged per epoch: in trainer.progress_bar_metrics it is the previous epoch's
        shown = {}
        if self._loss_images:
            shown["loss"] = float(self._loss_sum) / self._loss_images  # a GPU sync, once per redraw
        val_top1 = trainer.progress_bar_metrics.get("val/top1")
        if val_top1 is not None:
            shown["val_acc"] = float(val_top1)
        return shown

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.bar_format = self.TRAIN_BAR_FORMAT
        return bar

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._set_up_epoch(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        # Lightning calls no on_train_epoch_start for the epoch a run resumes in the middle of
        if self._bar_epoch != trainer.current_epoch:
            bar = self.train_progress_bar
            bar.reset(total=convert_inf(self.total_train_batches))
            bar.initial = bar.n = batch_idx  # tqdm's rate and time left count from `initial`
            self._set_up_epoch(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = step_loss(outputs, trainer) if not self.is_disabled else None
        if loss is not None:
            images = len(batch[0]) if isinstance(batch, list | tuple) else 1
            self._loss_sum = self._loss_sum + loss * images  # a tensor: no GPU sync per batch
            self._loss_images += images
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _set_up_epoch(self, trainer: L.Trainer) -> None:
        self._bar_epoch = trainer.current_epoch
        self._loss_sum, self._loss_images = 0.0, 0
        self.train_progress_bar.set_description(f"Epoch {epoch_of(trainer)}")
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, None), refresh=False)


class EpochSummary(L.Callback):
    """One log line per epoch with every epoch-level metric: what the progress bar leaves out, and a
    record in train.log."""

    # per-class values (many), the running best (in metrics.json), and the start-up time, which
    # has a line of its own and stays in callback_metrics after the first epoch
    SKIPPED = ("/class_acc/", "_best", "train/startup_s")

    def __init__(self) -> None:
        self._started = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()  # a run resumed mid-epoch does not start that epoch again

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.split("/")[0] in ("train", "val") and not any(part in key for part in self.SKIPPED)
        }
        speed = metrics.pop("train/images_per_sec", None)
        # A learning rate of 3e-5 would read 0.0000 with four decimals.
        parts = [
            f"{key}={value:.4g}" if "/lr" in key else f"{key}={value:.4f}"
            for key, value in sorted(metrics.items())
        ]
        if speed is not None:
            parts.append(f"{speed:.0f} images/s")
        seconds = time.perf_counter() - self._started
        log.info("epoch %s (%.1f s): %s", epoch_of(trainer), seconds, "  ".join(parts))
