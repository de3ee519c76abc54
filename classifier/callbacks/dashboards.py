"""What a run shows while it trains: TensorBoard images each validation epoch (confusion matrix,
reliability diagram, the worst misclassified val images), the augmented training images the model
sees at the start, curves.png (loss and top-1, train vs val) in the run directory, and the learning
rate as one `train/lr` chart per schedule."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from matplotlib.figure import Figure

from classifier.errors import UserError
from classifier.evaluation.fonts import use_fonts_for
from classifier.evaluation.metrics import ECE_BINS
from classifier.evaluation.reports import (
    CURVE_METRICS,
    CURVES_FILE,
    confusion_figure,
    curves_figure,
    reliability_bins,
    reliability_figure,
    save_figure,
)

log = logging.getLogger(__name__)

FIRST_DRAWING_GUESS = 0.3  # seconds: a drawing of 10 classes at 32 px on one CPU core


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (N, 3, H, W) tensors back to (N, H, W, 3) floats in [0, 1], for display."""
    images = images.detach().float().cpu()
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def image_grid_figure(images: np.ndarray, titles: Sequence[str], suptitle: str) -> Figure:
    """Images in a near-square grid, each with its title (class names): one mosaic in one axes,
    which renders several times faster than an axes per image."""
    n, height, width = images.shape[:3]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    lines = max(str(title).count("\n") + 1 for title in titles)
    gap, caption = max(2, width // 16), int(height * 0.22 * lines) + 4  # pixels between and above images
    cell_h, cell_w = height + caption, width + gap
    mosaic = np.ones((rows * cell_h, columns * cell_w, 3))
    for i, image in enumerate(images):
        top, left = (i // columns) * cell_h + caption, (i % columns) * cell_w
        mosaic[top : top + height, left : left + width] = image
    scale = 2.0 / max(width, 48)  # inches per pixel: about 2 inches a cell
    use_fonts_for(titles)
    # As wide as the title at least (about 0.11 inch a character at 12 pt): one to three mistakes
    # make a narrower grid than "most confident val mistakes, epoch 12".
    fig_width = max(columns * cell_w * scale, 0.11 * len(suptitle) + 0.3)
    fig = Figure(figsize=(fig_width, rows * cell_h * scale + 0.4), layout="constrained")
    fig.suptitle(suptitle)
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest" if height <= 64 else "antialiased")
    ax.axis("off")
    for i, title in enumerate(titles):
        x = (i % columns) * cell_w + width / 2
        y = (i // columns) * cell_h + caption - 2
        ax.text(x, y, str(title), ha="center", va="bottom", fontsize=8)
    return fig


def _mix_title(soft: torch.Tensor, class_names: Sequence[str]) -> str:
    """'cat 0.60 / dog 0.40': the two largest shares of a mixed (Mixup/CutMix) target."""
    shares, classes = soft.float().topk(min(2, len(soft)))
    return " / ".join(
        f"{class_names[c]} {s:.2f}" for s, c in zip(shares.tolist(), classes.tolist(), strict=True)
    )


class Dashboards(L.Callback):
    """TensorBoard images and curves.png, on the first process only.

    Args:
        output_dir: the run directory, where curves.png goes (None: no curves.png).
        worst_images: how many misclassified val images to show each validation epoch, those the
            model was most confident about (0: none).
        train_samples: how many training images, as augmented (and mixed), to show once at the
            start (0: none).
        every_n_epochs: log the per-epoch images every this many validation epochs.
        max_overhead: the largest share of the run's time the drawing may take (None: no limit):
            an epoch whose images would exceed it is skipped. Drawing takes about a second an
            epoch, which is most of an epoch of the default digits run and nothing in a real one.

    The images go to the run's TensorBoard logger (none without one); curves.png is written after
    every training epoch whatever the logger, and its history is kept in the checkpoints, so a
    resumed run draws its whole history.
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        worst_images: int = 16,
        train_samples: int = 16,
        every_n_epochs: int = 1,
        max_overhead: float | None = 0.1,
    ):
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.worst_images = int(worst_images)
        self.train_samples = int(train_samples)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.max_overhead = None if max_overhead is None else float(max_overhead)
        self._started = time.perf_counter()
        self._drawing = 0.0  # seconds spent drawing since the run started
        # What each kind of drawing will cost, from its last one (a guess before any): a drawing is
        # skipped when it would take the total over max_overhead of the time so far.
        self._next_cost: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._worst: list[tuple[float, int, np.ndarray, int, int]] = []  # a min-heap on confidence
        self._seen = itertools.count()  # tie-breaker, so the heap never compares images
        self._samples_shown = False

    # -- state kept in checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state_dict.get("history", [])]

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _writer(trainer: L.Trainer):
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    @staticmethod
    def _fitting(trainer: L.Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking

    def _logs_images_this_epoch(self, trainer: L.Trainer) -> bool:
        # The same answer on every process: the epoch end's gathering is collective.
        has_tensorboard = any(isinstance(logger, TensorBoardLogger) for logger in trainer.loggers)
        every = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return has_tensorboard and self._fitting(trainer) and every and not trainer.fast_dev_run

    def _may_draw(self, draw) -> bool:
        if self.max_overhead is None:
            return True
        elapsed = time.perf_counter() - self._started
        cost = self._next_cost.get(draw.__name__, FIRST_DRAWING_GUESS)
        return self._drawing + cost <= self.max_overhead * elapsed

    def _draw(self, draw, *args) -> None:
        """Call draw(*args), counting its time against max_overhead."""
        started = time.perf_counter()
        try:
            draw(*args)
        finally:
            self._next_cost[draw.__name__] = time.perf_counter() - started
            self._drawing += self._next_cost[draw.__name__]

    def on_train_start(self, trainer, pl_module) -> None:
        self._started, self._drawing = time.perf_counter(), 0.0

    @staticmethod
    def _spec(trainer: L.Trainer):
        datamodule = getattr(trainer, "datamodule", None)
        return getattr(datamodule, "input_spec", None)

    # -- training samples ---------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # At the batch's end: Mixup/CutMix replace the batch's images in place at its start.
        if self._samples_shown or not self.train_samples or not trainer.is_global_zero:
            return
        writer, spec = self._writer(trainer), self._spec(trainer)
        if writer is None or spec is None or trainer.fast_dev_run:
            self._samples_shown = True
            return
        if self._may_draw(self._log_train_samples):  # else at a later step, once the run took long enough
            self._samples_shown = True
            self._draw(self._log_train_samples, trainer, pl_module, batch, writer, spec)

    def _log_train_samples(self, trainer, pl_module, batch, writer, spec) -> None:
        images, targets, *soft = batch
        n = min(self.train_samples, len(targets))
        names = pl_module.class_names
        titles = [_mix_title(s, names) for s in soft[0][:n]] if soft else [names[int(t)] for t in targets[:n]]
        figure = image_grid_figure(
            denormalize(images[:n], spec.mean, spec.std), titles, "training images as the model sees them"
        )
        writer.add_figure("train/augmented_samples", figure, global_step=trainer.global_step)

    # -- worst misclassified val images ---------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._worst = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not (self.worst_images and trainer.is_global_zero and self._logs_images_this_epoch(trainer)):
            return
        if not isinstance(outputs, torch.Tensor):
            return
        images, targets = batch[0], batch[1]
        confidence, predicted = outputs.detach().max(dim=1)
        wrong = (predicted != targets).nonzero().flatten()
        if not len(wrong):
            return
        threshold = self._worst[0][0] if len(self._worst) >= self.worst_images else -1.0
        for i in wrong[confidence[wrong] > threshold].tolist():
            entry = (
                float(confidence[i]),
                next(self._seen),
                images[i].detach().cpu(),
                int(targets[i]),
                int(predicted[i]),
            )
            if len(self._worst) < self.worst_images:
                heapq.heappush(self._worst, entry)
            else:
                heapq.heappushpop(self._worst, entry)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._logs_images_this_epoch(trainer):
            return
        # Collective: every process takes part in gathering the val epoch's metric states (the
        # drawing below may be skipped on the first process only).
        confusion = pl_module.epoch_results("val")["confusion"].cpu().numpy()
        confidences, correct = pl_module.calibration_data("val")
        worst, self._worst = sorted(self._worst, reverse=True), []
        if trainer.is_global_zero and self._may_draw(self._log_val_images):
            self._draw(self._log_val_images, trainer, pl_module, confusion, confidences, correct, worst)

    def _log_val_images(self, trainer, pl_module, confusion, confidences, correct, worst) -> None:
        writer = self._writer(trainer)
        step, epoch, names = trainer.global_step, trainer.current_epoch + 1, pl_module.class_names
        images = int(confusion.sum())
        title = f"val confusion matrix, epoch {epoch} ({images} images)"
        writer.add_figure("val/confusion_matrix", confusion_figure(confusion, names, title), step)
        bins = reliability_bins(confidences, correct, ECE_BINS)
        title = f"val reliability, epoch {epoch}"
        writer.add_figure("val/reliability_diagram", reliability_figure(bins, title), step)
        spec = self._spec(trainer)
        if worst and spec is not None:
            titles = [f"true {names[t]}\npred {names[p]} {c:.2f}" for c, _, _, t, p in worst]
            pictures = denormalize(torch.stack([image for _, _, image, _, _ in worst]), spec.mean, spec.std)
            title = f"most confident val mistakes, epoch {epoch}"
            writer.add_figure("val/worst_misclassified", image_grid_figure(pictures, titles, title), step)

    # -- curves -------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        metrics = trainer.callback_metrics
        entry = {"epoch": float(trainer.current_epoch + 1)}
        entry.update({key: float(metrics[key]) for key in CURVE_METRICS if key in metrics})
        self.history = [e for e in self.history if e["epoch"] != entry["epoch"]] + [entry]
        if self._may_draw(self._write_curves):
            self._draw(self._write_curves)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.fast_dev_run:
            self._write_curves()

    def _write_curves(self) -> None:
        if self.output_dir is not None and self.history:
            save_figure(curves_figure(self.history), self.output_dir / CURVES_FILE)


# -- learning rate ----------------------------------------------------------------------------------
LR_TAG = "train/lr"
SAME_FACTOR = 1e-6  # relative tolerance: schedules whose factors differ by less are one schedule


def schedule_factor(group: dict[str, Any]) -> float | None:
    """How far a parameter group's schedule has moved its rate: lr / the rate it started from
    (torch's schedulers keep it as `initial_lr`; without a scheduler the rate stays where it began).
    None for a group that starts at 0."""
    initial = group.get("initial_lr", group["lr"])
    return group["lr"] / initial if initial else None


def same_schedule(a: float | None, b: float | None) -> bool:
    return a is None or b is None or math.isclose(a, b, rel_tol=SAME_FACTOR)


def learning_rate_charts(param_groups: Sequence[dict[str, Any]], separate: set[int]) -> dict[str, float]:
    """TensorBoard tag -> learning rate, for `param_groups` (of every optimizer, in order).

    Groups share a schedule when their rates keep the same ratio: the same factor over their initial
    rate. Layer-wise decay, a backbone's lower rate and norm_lr_scale only scale one schedule, so a
    run's groups are one chart, `train/lr`, drawn at the largest rate among them (the configured
    optimizer.lr through its schedule). A group that has ever followed another schedule than the
    first group's gets a chart of its own, `train/lr_pg<N>` (N counting from 1, as Lightning names
    groups); `separate` holds the indices of those groups and grows as they are found.
    """
    factors = [schedule_factor(group) for group in param_groups]
    separate.update(i for i, factor in enumerate(factors) if not same_schedule(factor, factors[0]))
    shared = [group["lr"] for i, group in enumerate(param_groups) if i not in separate]
    charts = {LR_TAG: max(shared)} if shared else {}
    charts.update({f"{LR_TAG}_pg{i + 1}": param_groups[i]["lr"] for i in sorted(separate)})
    return charts


class LearningRates(L.Callback):
    """The learning rate in every logger (TensorBoard, CSV, ...) under `train/lr`, beside the training
    loss: one chart for parameter groups that share a schedule, one per schedule otherwise
    (learning_rate_charts). Lightning's LearningRateMonitor draws a chart per parameter group
    (`lr-AdamW/pg1` .. `pg4`, identical but for a factor) and files them before every other chart.

    Args:
        logging_interval: "step" (the rate each optimizer step uses, as often as the trainer logs
            steps: trainer.log_every_n_steps) or "epoch" (the rate at each epoch's start).
    """

    def __init__(self, logging_interval: str = "step"):
        if logging_interval not in ("step", "epoch"):
            raise UserError(
                f"callbacks.lr_monitor.logging_interval={logging_interval!r} is not one of step, epoch"
            )
        self.logging_interval = logging_interval
        self._separate: set[int] = set()

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, on_step: bool) -> None:
        groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
        for tag, rate in learning_rate_charts(groups, self._separate).items():
            # Per epoch: one value, so the epoch's mean is that rate; Lightning wants epoch values
            # synced across DDP processes (their rates are the same).
            pl_module.log(
                tag, rate, on_step=on_step, on_epoch=not on_step, batch_size=1, sync_dist=not on_step
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.logging_interval == "step":
            self._log(trainer, pl_module, on_step=True)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.logging_interval == "epoch":
            self._log(trainer, pl_module, on_step=False)
