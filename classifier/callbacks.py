"""Callbacks: training speed, and what every checkpoint carries besides weights (config, classes, RNG)."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)


class TrainSpeed(L.Callback):
    """Logs `train/images_per_sec` each epoch: steady-state speed from the end of the first training
    batch to the end of the last (loader start-up, which Lightning begins before the epoch starts,
    and validation are excluded). `make bench` compares it with a plain loop timed the same way."""

    def __init__(self) -> None:
        self.images = 0
        self.started: float | None = None
        self.last_batch_end = 0.0
        self.history: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.started = 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        else:
            self.images += len(batch[1])
        self.last_batch_end = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.images or self.started is None or self.last_batch_end <= self.started:
            return
        # Images on this device times devices: every rank trains on its own shard.
        rate = self.images * trainer.world_size / (self.last_batch_end - self.started)
        self.history.append(rate)
        pl_module.log("train/images_per_sec", rate)


def collect_rng_states() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and tuples, loadable with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


class RunMetadata(L.Callback):
    """Writes the resolved run config, class names and input spec into every checkpoint (what
    eval.py and predict.py rebuild the run from), plus RNG states; on resume, restores the RNG
    states once the sanity check has run, so the next epoch draws what it would have drawn."""

    CHECKPOINT_KEY = "classifier"

    def __init__(self, config: dict[str, Any], class_names: list[str], input_spec: dict[str, Any]):
        self.metadata = {"config": config, "class_names": list(class_names), "input": input_spec}
        self._rng_to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.CHECKPOINT_KEY] = self.metadata
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # validate/test of a checkpoint: nothing resumes
            return
        self._rng_to_restore = checkpoint.get("rng_states", {})

    def on_train_start(self, trainer, pl_module) -> None:
        if self._rng_to_restore is None:
            return
        if self._rng_to_restore:
            restore_rng_states(self._rng_to_restore)
        self._rng_to_restore = None
        log.info("resuming at epoch %d (global step %d)", trainer.current_epoch, trainer.global_step)
