"""Learning-rate schedules, stepped per optimizer step: `(optimizer, total_steps, steps_per_epoch) ->
LRScheduler` factories the scheduler config group names, completed in configure_optimizers once the
run's length is known."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from classifier.errors import UserError


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


def one_cycle(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1.0e4,
    anneal_strategy: str = "cos",
    cycle_momentum: bool = True,
) -> OneCycleLR:
    """Smith's one-cycle policy (torch's OneCycleLR) over the whole run, peaking at each group's lr;
    with `cycle_momentum`, momentum (AdamW's beta1) cycles inversely. `anneal_strategy` 'linear'
    makes it the triangle of the CIFAR speed runs (Page's ResNet-9, airbench)."""
    if anneal_strategy not in ("cos", "linear"):
        raise UserError(f"scheduler.anneal_strategy={anneal_strategy!r} is not one of cos, linear")
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    return OneCycleLR(
        optimizer,
        max_lr=max_lrs,
        total_steps=total_steps,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy=anneal_strategy,
        cycle_momentum=cycle_momentum,
    )


def step_decay_factor(step: int, warmup_steps: int, decay_steps: int, gamma: float) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return gamma ** (step // decay_steps)


def step_decay(
    optimizer: Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    step_epochs: float = 30.0,
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> LambdaLR:
    """The classic step schedule (torchvision's reference recipe: x0.1 every 30 epochs), with an
    optional linear warmup, stepped per batch."""
    if step_epochs <= 0:
        raise UserError(f"scheduler.step_epochs={step_epochs} must be positive")
    factor = partial(
        step_decay_factor,
        warmup_steps=round(warmup_epochs * steps_per_epoch),
        decay_steps=max(1, round(step_epochs * steps_per_epoch)),
        gamma=gamma,
    )
    return LambdaLR(optimizer, factor)
