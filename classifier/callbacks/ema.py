"""Averages of the weights: an exponential moving average on Lightning's EMAWeightAveraging, and
airbench's lookahead.

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


class Lookahead(L.Callback):
    """airbench's lookahead (after Zhang et al. 2019): every `every_n_steps` optimizer steps the
    average of the weights (parameters and batch-norm statistics) moves towards the live weights
    and the live weights are set to it. Its decay ramps up as decay ** every_n_steps x
    (step / total steps) ** power, from 0 (no averaging) to 0.95**5 = 0.77 at the end, so early
    training runs as usual and the last steps are smoothed; after the last step the network is the
    average, which validation, best.ckpt and every later use see. The average is saved in
    checkpoints and restored on resume.

    Args:
        decay: decay per step at the end of the run (airbench: 0.95).
        every_n_steps: optimizer steps between updates (airbench: 5).
        power: how the decay ramps up over the run (airbench: 3, cubic).
    """

    def __init__(self, decay: float = 0.95, every_n_steps: int = 5, power: float = 3.0):
        if not 0 <= decay < 1:
            raise UserError(f"callbacks.lookahead.decay={decay} must be in [0, 1)")
        if every_n_steps < 1:
            raise UserError(f"callbacks.lookahead.every_n_steps={every_n_steps} must be 1 or more")
        self.decay, self.every_n_steps, self.power = decay, every_n_steps, power
        self.average: dict[str, torch.Tensor] | None = None
        self._done_step = -1

    def _live(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        # state_dict's tensors share storage with the network: copying into them sets its weights
        state = pl_module.net.state_dict()
        return {key: value for key, value in state.items() if value.is_floating_point()}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        live = self._live(pl_module)
        if self.average is None:
            self.average = {key: value.detach().clone() for key, value in live.items()}
        else:  # restored from a checkpoint, on the CPU
            self.average = {key: value.to(live[key].device) for key, value in self.average.items()}
        self._done_step = trainer.global_step

    def step_decay(self, step: int, total_steps: int) -> float:
        return self.decay**self.every_n_steps * min(1.0, step / max(1, total_steps)) ** self.power

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if step == self._done_step or self.average is None:  # no optimizer step (accumulating)
            return
        self._done_step = step
        total = int(trainer.estimated_stepping_batches)
        if step % self.every_n_steps and step < total:
            return
        live = self._live(pl_module)
        average = [self.average[key] for key in live]
        if step % self.every_n_steps == 0:
            torch._foreach_lerp_(average, list(live.values()), 1.0 - self.step_decay(step, total))
        torch._foreach_copy_(list(live.values()), average)

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state_dict: dict) -> None:
        self.average = state_dict.get("average")
