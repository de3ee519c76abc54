"""Callbacks for what a person watches: training speed and start-up time, a compact progress bar,
and one summary line per epoch."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

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


class TrainSpeed(L.Callback):
    """Logs `train/images_per_sec` each epoch: steady-state speed from the end of the first training
    batch to the end of the last (loader start-up, which Lightning begins before the epoch starts,
    and validation are excluded). `make bench` compares it with a plain loop timed the same way.
    Also `train/startup_s`, once: seconds from the process's start to its first training step
    (imports, data, model, sanity check), in the log and in the first epoch's metrics."""

    def __init__(self) -> None:
        self.images = 0
        self.started: float | None = None
        self.last_batch_end = 0.0
        self.startup: float | None = None
        self._startup_logged = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.started = 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.startup is None and not self._startup_logged:
            self.startup = seconds_since_process_start()
            self._startup_logged = True  # once per process, resumed runs included
            if self.startup is not None:
                log.info("first training step %.1f s after the process started", self.startup)

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


class CompactProgressBar(TQDMProgressBar):
    """Lightning's bar with what fits in 80 columns: epoch n/N, train loss and top-1, val top-1.
    The full set of metrics is in the one log line per epoch that EpochSummary writes."""

    SHOWN = {"train/loss": "loss", "train/top1": "acc", "val/top1": "val_acc"}
    TRAIN_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"

    @property
    def is_disabled(self) -> bool:
        # Redrawn bars written to a file or a pipe (a batch job's log, `| tee`) are kilobytes of
        # carriage returns; there, the epoch lines tell the progress.
        return super().is_disabled or not sys.stdout.isatty()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        shown = trainer.progress_bar_metrics
        return {short: shown[key] for key, short in self.SHOWN.items() if key in shown}

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.bar_format = self.TRAIN_BAR_FORMAT
        return bar

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if trainer.max_epochs and trainer.max_epochs > 0:
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


class EpochSummary(L.Callback):
    """One log line per epoch with every epoch-level metric: what the progress bar leaves out, and a
    record in train.log."""

    SKIPPED = ("/class_acc/", "_best")  # per-class values (many) and the running best (in metrics.json)

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
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        seconds = time.perf_counter() - self._started
        log.info("epoch %d%s (%.1f s): %s", trainer.current_epoch + 1, epochs, seconds, "  ".join(parts))
