"""An exponential moving average of the weights, on Lightning's EMAWeightAveraging.

Why Lightning's rather than timm's ModelEmaV3: it already does what the run needs around the
average. Validation during fit runs on the averaged weights (it swaps them in and back), every
checkpoint's `state_dict` holds the averaged weights (so best.ckpt is chosen by, and eval.py,
export and `model.weights` load, the EMA model without knowing about it), and the live weights,
the average and its update count are saved beside them and restored on resume. What it lacks is
timm's warmup of the decay, which short runs need: at a fixed 0.9998 a 2,000-step run would
validate weights still 67% of their random initialisation.
"""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from classifier.errors import UserError


def warmup_decay(updates: int, decay: float, warmup_power: float) -> float:
    """timm ModelEmaV3's decay after `updates` updates: 1 - (1 + t) ** -power, capped at `decay`
    (0 at the first update, 0.9 after ~30, 0.99 after ~1,000 at power 2/3)."""
    return min(decay, 1.0 - (1.0 + max(0, updates - 1)) ** -warmup_power)


def ema_update(
    average: torch.Tensor,
    current: torch.Tensor,
    num_averaged: torch.Tensor,
    decay: float,
    warmup_power: float | None,
) -> torch.Tensor:
    """AveragedModel's `avg_fn`: the new average of one tensor."""
    step_decay = decay if warmup_power is None else warmup_decay(int(num_averaged), decay, warmup_power)
    return average + (current - average) * (1.0 - step_decay)


class EMA(EMAWeightAveraging):
    """EMA of the module's parameters and buffers, updated after every optimizer step.

    Args:
        decay: the average's decay per update (timm's default 0.9998).
        warmup: ramp the decay up from 0 as timm's ModelEmaV3 does (`warmup_power` 2/3), so the
            average of a short run is not dominated by its initial weights.
        update_every_n_steps: update after every n-th optimizer step.
        device: where the average lives (None: with the model; 'cpu' saves GPU memory).
    """

    def __init__(
        self,
        decay: float = 0.9998,
        warmup: bool = True,
        warmup_power: float = 2 / 3,
        update_every_n_steps: int = 1,
        device: str | None = None,
    ):
        if not 0 <= decay < 1:
            raise UserError(f"callbacks.ema.decay={decay} must be in [0, 1)")
        super().__init__(device=device, decay=decay, update_every_n_steps=update_every_n_steps)
        self._kwargs["avg_fn"] = partial(
            ema_update, decay=decay, warmup_power=warmup_power if warmup else None
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._device is None:
            # Callbacks set up before the strategy moves the module to its device: the average goes
            # where the module is going (on the CPU, every update and swap would cross the bus).
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    # Only validation inside fit swaps the average in: eval.py and the run's final evaluation load
    # a checkpoint whose state_dict already is the average, which a swap would replace.
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)
