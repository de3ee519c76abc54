"""Gradual unfreezing (callbacks=unfreeze): a frozen backbone's blocks are unfrozen from the top, a few
every so many epochs (ULMFiT's schedule); the blocks are models.structure's."""

from __future__ import annotations

import logging

import lightning as L

from classifier.errors import UserError
from classifier.models.structure import backbone_blocks, unfreeze_top_blocks

log = logging.getLogger(__name__)


class GradualUnfreeze(L.Callback):
    """Trains the head alone, then unfreezes the backbone from the top, a few blocks at a time
    (ULMFiT's gradual unfreezing; Lightning's BackboneFinetuning unfreezes the whole backbone at
    once). Blocks are timm's coarse layer groups: for a ResNet the stem and its four stages.

    At epoch e (0-based) the top `blocks_per_step * (1 + (e - start_epoch) // every_n_epochs)`
    blocks train, none before `start_epoch`. The state follows from the epoch alone, so a resumed run
    unfreezes what the uninterrupted one had. Frozen batch norms stay in eval mode.

    The optimizer already holds every parameter (frozen ones get no gradient, so it skips them),
    so unfrozen blocks learn at their scheduled rate at once; no param group is added mid-run.
    """

    def __init__(self, start_epoch: int = 1, every_n_epochs: int = 1, blocks_per_step: int = 1):
        if start_epoch < 0 or every_n_epochs < 1 or blocks_per_step < 1:
            raise UserError(
                "callbacks.unfreeze: start_epoch must be >= 0, every_n_epochs and blocks_per_step >= 1"
            )
        self.start_epoch, self.every_n_epochs, self.blocks_per_step = (
            start_epoch,
            every_n_epochs,
            blocks_per_step,
        )
        self.trainable: int | None = None

    def blocks_at(self, epoch: int) -> int:
        """How many backbone blocks train in `epoch`."""
        if epoch < self.start_epoch:
            return 0
        return self.blocks_per_step * (1 + (epoch - self.start_epoch) // self.every_n_epochs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.world_size > 1:
            # DDP registers the parameters that need gradients when it wraps the model; ones
            # unfrozen later would train on each process alone.
            raise UserError("callbacks.unfreeze does not work with DDP: train on one device")
        backbone_blocks(pl_module.net)  # a model without group_matcher fails here, before training

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wanted = self.blocks_at(trainer.current_epoch)
        if wanted == self.trainable:
            return
        total = len(backbone_blocks(pl_module.net))
        self.trainable = unfreeze_top_blocks(pl_module.net, wanted)
        pl_module.train()  # newly trainable batch norms back to training mode, frozen ones in eval
        log.info(
            "unfreeze: epoch %d trains the head and the top %d of %d backbone blocks",
            trainer.current_epoch + 1,
            self.trainable,
            total,
        )
