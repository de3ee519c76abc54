"""Parameter groups and learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from classifier.errors import UserError


def param_groups(net: nn.Module, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Groups by (head or backbone) x (decayed or not). Biases, norm weights and the tokens a timm
    model lists in `no_weight_decay()` get no weight decay; `lr_scale` is applied by `apply_lr_scales`.
    """
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    skip_decay = set(net.no_weight_decay()) if hasattr(net, "no_weight_decay") else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim > 1 and name not in skip_decay
        groups.setdefault((id(param) in head_ids, decay), []).append(param)
    return [
        {
            "params": params,
            "lr_scale": 1.0 if is_head else backbone_lr_scale,
            **({} if decay else {"weight_decay": 0.0}),
        }
        for (is_head, decay), params in groups.items()
    ]


def apply_lr_scales(optimizer: Optimizer) -> None:
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    max_warmup_fraction: float = 0.1,
    min_lr_ratio: float = 0.01,
) -> LambdaLR:
    """Linear warmup over `warmup_epochs`, but at most `max_warmup_fraction` of the run, then cosine
    decay to `min_lr_ratio` x lr, stepped per batch. The bound keeps short runs from spending
    themselves on the ramp: one epoch with warmup_epochs=1 would never reach the decay.

    The factor is a partial rather than an object so the schedule comes from the current config
    on resume (a longer max_epochs stretches it); only the step count is restored.
    """
    if not 0 <= max_warmup_fraction <= 1:
        raise UserError(f"scheduler.max_warmup_fraction={max_warmup_fraction} must be in [0, 1]")
    warmup_steps = min(round(warmup_epochs * steps_per_epoch), math.floor(max_warmup_fraction * total_steps))
    factor: Callable[[int], float] = partial(
        warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
    )
    return LambdaLR(optimizer, factor)
