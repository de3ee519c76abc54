"""Mixup and CutMix of training batches, as a callback on timm's `Mixup`."""

from __future__ import annotations

import logging

import lightning as L
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from classifier.errors import UserError

log = logging.getLogger(__name__)


class MixupCutMix(L.Callback):
    """Mixes each training batch with timm's `Mixup` (DeiT's recipe) and appends the soft targets
    to it: the module trains on them with soft-target cross-entropy and counts `train/top1` against
    their larger share. Validation and test batches are never touched.

    Args:
        mixup_alpha: Beta(alpha, alpha) of Mixup's blend weight; 0 turns Mixup off.
        cutmix_alpha: Beta(alpha, alpha) of CutMix's box area; 0 turns CutMix off.
        prob: probability that a batch is mixed at all.
        switch_prob: probability of CutMix instead of Mixup when both are on.
        label_smoothing: folded into the soft targets (of mixed and unmixed batches alike).
        off_epochs: the last this many epochs train unmixed (still with smoothed soft targets), as
            timm's `--mixup-off-epoch`, so the model ends on images like those it will see.
        mode: 'batch' (one draw per batch), 'pair' or 'elem' (per image pair / image), as timm's.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        off_epochs: int = 0,
        mode: str = "batch",
    ):
        for key, value in {
            "prob": prob,
            "switch_prob": switch_prob,
            "label_smoothing": label_smoothing,
        }.items():
            if not 0 <= value <= 1:
                raise UserError(f"callbacks.mixup.{key}={value} must be in [0, 1]")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise UserError("callbacks.mixup.mixup_alpha and cutmix_alpha must be 0 (off) or more")
        if mode not in ("batch", "pair", "elem"):
            raise UserError(f"callbacks.mixup.mode={mode!r} is not one of batch, pair, elem")
        self.settings = {
            "mixup_alpha": mixup_alpha,
            "cutmix_alpha": cutmix_alpha,
            "prob": prob,
            "switch_prob": switch_prob,
            "mode": mode,
            "label_smoothing": label_smoothing,
        }
        self.off_epochs = int(off_epochs)
        self.mixup: Mixup | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.mixup = Mixup(num_classes=len(pl_module.class_names), **self.settings)

    def mixing(self, trainer: L.Trainer) -> bool:
        """Whether this epoch mixes: all but the last `off_epochs` of trainer.max_epochs."""
        max_epochs = trainer.max_epochs or 0
        return not (
            self.off_epochs > 0 and max_epochs > 0 and trainer.current_epoch >= max_epochs - self.off_epochs
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        enabled = self.mixing(trainer)
        if self.mixup.mixup_enabled and not enabled:
            log.info("mixup/cutmix: off for the last %d epoch(s)", self.off_epochs)
        self.mixup.mixup_enabled = enabled

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        images, targets = batch[0], batch[1]
        # timm pairs image i with image n-1-i, so it needs an even batch; an odd last image (a data
        # set smaller than one batch) keeps its own smoothed target.
        even = len(targets) - len(targets) % 2
        smoothing = self.mixup.label_smoothing
        if even:
            mixed, soft = self.mixup(images[:even], targets[:even])
        else:
            mixed, soft = images[:0], mixup_target(targets[:0], self.mixup.num_classes, smoothing=smoothing)
        if even < len(targets):
            tail = mixup_target(targets[even:], self.mixup.num_classes, smoothing=smoothing)
            mixed, soft = torch.cat([mixed, images[even:]]), torch.cat([soft, tail])
        batch[0] = mixed  # the loader's batch is a list: the training step receives these
        batch[2:] = [soft]
