"""Which parameters of a backbone train: freezing it, unfreezing it block by block from the top, and
the layer index of each parameter that layer-wise learning-rate decay scales by.

Blocks and layers are the groups timm's `group_matcher` names (ScratchCNN has one too): the coarse
groups are the blocks gradual unfreezing steps through (stem, stages, final norm), the fine ones
the layers of layer-wise decay. The head (`get_classifier()`) is never frozen."""

from __future__ import annotations

import logging

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
