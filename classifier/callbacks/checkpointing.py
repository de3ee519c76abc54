"""Callbacks that keep a run resumable: the run state every checkpoint carries (written by
run.checkpoints.add_run_state), checkpoints that survive a moved run dir, and last.ckpt on Ctrl-C /
SIGTERM."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from classifier.callbacks.progress import epoch_of
from classifier.run.checkpoints import (
    DISTILLATION_KEY,
    RNG_KEY,
    RUN_KEY,
    TRACKERS_KEY,
    TRAIN_SECONDS_KEY,
    add_run_state,
    collect_rng_states,
    restore_rng_states,
    run_metadata,
)
from classifier.run.trackers import tracker_references

log = logging.getLogger(__name__)


class RunMetadata(L.Callback):
    """Writes the resolved run config, class names and input spec into every checkpoint (what
    eval.py and predict.py rebuild the run from), plus RNG states. On resume the RNG states are
    restored as the checkpoint is loaded, before any loader draws its shuffle or worker seeds, and
    the sanity check's draws are undone, so the resumed epoch draws what it would have drawn."""

    def __init__(
        self,
        config: dict[str, Any],
        class_names: list[str],
        input_spec: dict[str, Any],
        teacher: dict[str, Any] | None = None,
    ):
        self.metadata = run_metadata(config, class_names, input_spec)
        if teacher is not None:  # a distilled run: its teacher's spec and sha256 (Distillation.identity)
            self.metadata[DISTILLATION_KEY] = teacher
        self._resumed = False
        self._before_sanity_check: dict[str, Any] | None = None
        # Training time over every run of this run directory (resumes add to it), for the model card.
        self._seconds_before = 0.0
        self._training_since: float | None = None

    @property
    def train_seconds(self) -> float:
        """Seconds spent training (fit, validation epochs included), resumed runs included."""
        running = time.perf_counter() - self._training_since if self._training_since is not None else 0.0
        return self._seconds_before + running

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        metadata = {**self.metadata, TRAIN_SECONDS_KEY: self.train_seconds}
        if trackers := tracker_references(trainer.loggers):  # eval.py and predict.py attach to them
            metadata[TRACKERS_KEY] = trackers
        add_run_state(checkpoint, metadata)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:  # validate/test of a checkpoint: nothing resumes
            return
        self._resumed = True
        seconds = (checkpoint.get(RUN_KEY) or {}).get(TRAIN_SECONDS_KEY, 0.0)
        self._seconds_before = float(seconds) if isinstance(seconds, int | float) and seconds >= 0 else 0.0
        if checkpoint.get(RNG_KEY):
            restore_rng_states(checkpoint[RNG_KEY])

    def on_sanity_check_start(self, trainer, pl_module) -> None:
        # An uninterrupted run goes from the checkpoint's moment straight to the next epoch; the
        # resumed one validates a few batches first (a loader with workers draws their seeds).
        self._before_sanity_check = collect_rng_states()

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        if self._before_sanity_check is not None:
            restore_rng_states(self._before_sanity_check)
            self._before_sanity_check = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._seconds_before, self._training_since = self.train_seconds, None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        self._training_since = time.perf_counter()
        if not self._resumed:
            return
        self._resumed = False
        batches = trainer.num_training_batches  # inf for a loader without a length: no epochs to be in
        mid_epoch = (
            math.isfinite(batches)
            and trainer.global_step % max(1, math.ceil(batches / trainer.accumulate_grad_batches)) != 0
        )
        if mid_epoch:
            log.info(
                "resuming at %s (global step %d); its remaining batches come from a new shuffle",
                position_in_epoch(trainer),
                trainer.global_step,
            )
        else:
            log.info("resuming at epoch %s (global step %d)", epoch_of(trainer), trainer.global_step)


def position_in_epoch(trainer: L.Trainer) -> str:
    """Where training stands within its epoch, as the Ctrl-C message and the resume line both say it:
    "epoch 2/3, 3 of its 4 batches done" (1-based epoch), or "epoch 2/3 done" between two epochs."""
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    batches = trainer.num_training_batches
    epochs = trainer.fit_loop.epoch_progress.current
    if math.isfinite(batches) and done >= batches and epochs.completed == epochs.processed > 0:
        # between epochs: the finished one counted as completed, its batch counts not yet reset
        limit = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {epochs.completed}{limit} done"
    of = f" of its {batches}" if math.isfinite(batches) else ""
    return f"epoch {epoch_of(trainer)}, {done}{of} batches done"


def _relocated(path: str, old_dir: str, new_dir: str) -> str:
    old_dir = old_dir.rstrip(os.sep) + os.sep
    return os.path.join(new_dir, path[len(old_dir) :]) if path and path.startswith(old_dir) else path


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint whose record of the best checkpoint survives a resume anywhere.

    Lightning drops the best score when the checkpoint folder's path changed (a run dir moved or
    copied), so the next epoch, however worse, overwrites best.ckpt; here the paths are moved to
    the new folder and the score is kept. If the best checkpoint itself is gone, the record restarts
    with a warning, so best.ckpt and metrics.json come from the resumed epochs rather than from
    whatever weights training ends with.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir, new_dir = state_dict.get("dirpath"), self.dirpath
        if old_dir and new_dir and os.path.abspath(old_dir) != os.path.abspath(new_dir):
            state_dict = {**state_dict, "dirpath": new_dir}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                state_dict[key] = _relocated(state_dict.get(key, ""), old_dir, new_dir)
            state_dict["best_k_models"] = {
                _relocated(path, old_dir, new_dir): score
                for path, score in state_dict.get("best_k_models", {}).items()
            }
            log.info("the checkpoints moved from %s to %s: their record is kept", old_dir, new_dir)
        initial_kth_value = self.kth_value
        super().load_state_dict(state_dict)
        if self.monitor and self.best_model_path and not Path(self.best_model_path).is_file():
            log.warning(
                "%s (%s=%.4f) is missing: best.ckpt and metrics.json will come from the resumed epochs",
                self.best_model_path,
                self.monitor,
                float(self.best_model_score) if self.best_model_score is not None else float("nan"),
            )
            self.best_model_path, self.best_model_score = "", None
            self.best_k_models, self.kth_best_model_path, self.kth_value = {}, "", initial_kth_value


class CheckpointOnInterrupt(L.Callback):
    """On Ctrl-C or SIGTERM during training, writes `path` (last.ckpt) with the progress made so far,
    mid-epoch included, so the same command resumes from there.

    Lightning's OnExceptionCheckpoint saves on every exception, including one raised while a
    checkpoint is being restored: it would replace a good last.ckpt with untrained weights. Here
    only an interrupt after training has started writes, and `saved` tells the caller what was saved.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.saved: str | None = None  # where training stood, once written
        self._training = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt | SIGTERMException):
            return
        # Only between training batches: Lightning resumes a checkpoint written during validation
        # as if that validation had run, so there the end-of-epoch last.ckpt is the better one.
        if not (self._training and trainer.training):
            return
        trainer.save_checkpoint(self.path, weights_only=False)
        self.saved = f"{position_in_epoch(trainer)}, global step {trainer.global_step}"
