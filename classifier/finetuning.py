"""Which parameters of a backbone train: freezing it, unfreezing it block by block from the top, and
the layer index of each parameter that layer-wise learning-rate decay scales by.

Blocks and layers are the groups timm's `group_matcher` names (ScratchCNN has one too): the coarse
groups are the blocks gradual unfreezing steps through (stem, stages, final norm), the fine ones
the layers of layer-wise decay. The head (`get_classifier()`) is never frozen.
"""

from __future__ import annotations

import logging

import lightning as L
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from classifier.errors import UserError

log = logging.getLogger(__name__)


def head_parameter_ids(net: nn.Module) -> set[int]:
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    return {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()


def layer_ids(net: nn.Module, coarse: bool, purpose: str) -> dict[str, int]:
    """Parameter name -> index of its group in timm's `group_matcher` (0 = stem, the head last).

    Raises:
        UserError: the model has no group_matcher, naming `purpose` (the key that needs one).
    """
    if not hasattr(net, "group_matcher"):
        raise UserError(f"{purpose} needs a model with timm's group_matcher(); {type(net).__name__} has none")
    # timm.models.group_parameters: the same grouping timm's own layer-decay optimizer uses.
    from timm.models import group_parameters

    return group_parameters(net, net.group_matcher(coarse=coarse), reverse=True)


def backbone_blocks(net: nn.Module) -> list[list[nn.Parameter]]:
    """The backbone's parameters in blocks (timm's coarse groups), bottom to top, without the head."""
    ids = layer_ids(net, coarse=True, purpose="gradual unfreezing")
    head = head_parameter_ids(net)
    blocks: dict[int, list[nn.Parameter]] = {}
    top = max(ids.values(), default=0)
    for name, param in net.named_parameters():
        if id(param) not in head:
            blocks.setdefault(ids.get(name, top), []).append(param)
    return [blocks[index] for index in sorted(blocks)]


def freeze_backbone(net: nn.Module) -> None:
    """Every parameter but the head's stops taking gradients."""
    head = head_parameter_ids(net)
    if not head:
        raise UserError(
            f"model.freeze_backbone=true: {type(net).__name__} has no classification head to train"
        )
    for param in net.parameters():
        param.requires_grad_(id(param) in head)


def unfreeze_top_blocks(net: nn.Module, count: int) -> int:
    """Freezes the backbone but its top `count` blocks; returns how many blocks train now."""
    freeze_backbone(net)
    blocks = backbone_blocks(net)
    trainable = blocks[len(blocks) - min(count, len(blocks)) :] if count > 0 else []
    for block in trainable:
        for param in block:
            param.requires_grad_(True)
    return len(trainable)


def hold_frozen_norms(net: nn.Module) -> None:
    """Puts every batch norm whose weights are frozen in eval mode: it normalises with its running
    statistics and leaves them as they are, so a frozen backbone computes what it was trained to."""
    for module in net.modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


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
