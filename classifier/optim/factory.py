"""The optimizer config group's factory: timm's `create_optimizer_v2` (every optimizer timm has, by
name: adamw, sgd, lion, lamb, muon, ...) over this project's parameter groups (param_groups.py)."""

from __future__ import annotations

import difflib
import inspect
from functools import partial
from typing import Any

import timm.optim
from torch import nn
from torch.optim import Optimizer

from classifier.errors import UserError, check_arguments
from classifier.optim.param_groups import apply_lr_scales, param_groups


def create_optimizer(
    model: nn.Module,
    opt: str = "adamw",
    lr: float = 1.0e-3,
    weight_decay: float = 0.0,
    layer_decay: float | None = None,
    norm_lr_scale: float | None = None,
    filter_bias_and_bn: bool = True,
    backbone_lr_scale: float = 1.0,
    **kwargs: Any,
) -> Optimizer:
    """timm's optimizer `opt` for `model`'s parameters, grouped by `param_groups`, with each group's
    learning-rate and weight-decay scales applied.

    Args:
        model: the network; its head is told apart from the backbone by timm's `get_classifier()`.
        opt: a name from `timm.optim.list_optimizers()`.
        lr: learning rate of the head (and of the backbone unless scaled).
        weight_decay: of weights; biases and norm parameters get none unless `filter_bias_and_bn`
            is false.
        layer_decay: layer-wise learning-rate decay from the head down, or None.
        norm_lr_scale: learning-rate multiplier of normalisation layers, or None.
        filter_bias_and_bn: no weight decay on biases and norm parameters (timm's switch).
        backbone_lr_scale: learning-rate multiplier of the backbone (the module's
            pretrained_backbone_lr_scale for pretrained weights).
        **kwargs: the optimizer's own arguments (betas, momentum, nesterov, eps, fused, ...).

    Raises:
        UserError: an unknown optimizer name, an argument the optimizer does not take, or a value
            out of range.
    """
    opt_class = _optimizer_class(opt)
    kwargs = {**_fused_kernel(opt_class, model, kwargs), **kwargs}
    check_arguments(opt_class, "optimizer", [], lr=lr, weight_decay=weight_decay, **_taken(opt, kwargs))
    groups = partial(
        param_groups,
        backbone_lr_scale=backbone_lr_scale,
        layer_decay=layer_decay,
        norm_lr_scale=norm_lr_scale,
        filter_bias_and_bn=filter_bias_and_bn,
    )
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=opt, lr=lr, weight_decay=weight_decay, param_group_fn=groups, **kwargs
    )
    apply_lr_scales(optimizer)
    return optimizer


def _optimizer_class(opt: str) -> type[Optimizer]:
    names = timm.optim.list_optimizers()
    if opt not in names:
        close = difflib.get_close_matches(str(opt), names, n=3)
        hint = (
            f"; did you mean {', '.join(close)}?" if close else " (timm.optim.list_optimizers() lists them)"
        )
        raise UserError(f"optimizer.opt={opt!r} is not one of timm's optimizers{hint}")
    return timm.optim.get_optimizer_class(opt, bind_defaults=False)


def _taken(opt: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` without the betas and eps that timm drops for optimizers that have none (so an
    adamw config switched to optimizer.opt=sgd keeps working, as with timm's train.py)."""
    info = timm.optim.get_optimizer_info(opt)
    dropped = {"betas"} if not info.has_betas else set()
    dropped |= {"eps"} if not info.has_eps else set()
    return {key: value for key, value in kwargs.items() if key not in dropped}


def _fused_kernel(opt_class: type[Optimizer], model: nn.Module, kwargs: dict[str, Any]) -> dict[str, bool]:
    """fused=True for a torch optimizer that has a fused CUDA kernel (AdamW, SGD, Adam) when the
    network is on a GPU and the config leaves `fused` unset: one kernel for all parameters
    instead of several per tensor. Elsewhere torch picks its foreach implementation itself."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cuda" or kwargs.get("fused") is not None:
        return {}
    try:
        takes_fused = "fused" in inspect.signature(opt_class).parameters
    except (TypeError, ValueError):
        return {}
    return {"fused": True} if takes_fused and opt_class.__module__.startswith("torch.") else {}
