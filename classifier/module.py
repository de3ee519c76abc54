"""The LightningModule: loss, metrics and optimisation around any backbone."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric

from classifier.errors import UserError, config_errors
from classifier.metrics import create_eval_metrics, create_top1, metric_key_part
from classifier.optim import apply_lr_scales, param_groups

EVAL_STAGES = ("val", "test")


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of `net`, with top-1/top-5/ECE/per-class metrics per epoch.

    Args:
        net: backbone with a classification head (a timm model or ScratchCNN).
        class_names: one name per output, in label order.
        optimizer: partial optimizer, completed with parameter groups.
        scheduler: partial `(optimizer, total_steps, steps_per_epoch) -> LRScheduler`, stepped
            every optimizer step; None keeps the learning rate constant.
        label_smoothing: of the training loss (val/test loss is plain cross-entropy, comparable
            across runs).
        pretrained_backbone: whether `net` starts from pretrained weights.
        pretrained_backbone_lr_scale: learning-rate multiplier of a pretrained backbone (not the head).
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str],
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        label_smoothing: float = 0.0,
        pretrained_backbone: bool = False,
        pretrained_backbone_lr_scale: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        num_classes = len(self.class_names)
        self.train_loss = MeanMetric()
        self.train_top1 = create_top1(num_classes)
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in EVAL_STAGES})
        self.eval_metrics = nn.ModuleDict({stage: create_eval_metrics(num_classes) for stage in EVAL_STAGES})
        self.val_top1_best = MaxMetric()
        self.val_top1_best.persistent(True)  # survives resume, like the checkpoint's best score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        self.train_loss.update(loss.detach(), weight=targets.numel())
        self.train_top1.update(logits.detach(), targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/top1", self.train_top1, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits, targets)
        self.eval_loss[stage].update(loss, weight=targets.numel())
        self.eval_metrics[stage].update(logits.float().softmax(dim=-1), targets)

    def epoch_results(self, stage: str) -> dict[str, torch.Tensor]:
        """Every metric of the last completed `stage` epoch ('val' or 'test'), over all devices:
        top1, top5 (5+ classes), ece, class_acc, confusion and loss. The reports read them here;
        the states are kept until the next epoch of that stage starts."""
        return {**self.eval_metrics[stage].compute(), "loss": self.eval_loss[stage].compute()}

    def _reset_eval_metrics(self, stage: str) -> None:
        self.eval_metrics[stage].reset()
        self.eval_loss[stage].reset()

    def _log_eval_epoch(self, stage: str) -> torch.Tensor:
        values = self.epoch_results(stage)
        loss = values["loss"]
        summary = {f"{stage}/loss": loss, f"{stage}/top1": values["top1"], f"{stage}/ece": values["ece"]}
        if "top5" in values:
            summary[f"{stage}/top5"] = values["top5"]
        self.log_dict(summary, prog_bar=True)
        per_class = {
            f"{stage}/class_acc/{metric_key_part(name)}": acc
            for name, acc in zip(self.class_names, values["class_acc"], strict=True)
        }
        self.log_dict(per_class)
        return values["top1"]

    def on_validation_epoch_start(self) -> None:
        self._reset_eval_metrics("val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        top1 = self._log_eval_epoch("val")
        if not self.trainer.sanity_checking:
            self.val_top1_best.update(top1)  # on the module's device, like the metric's state
            self.log("val/top1_best", self.val_top1_best.compute())

    def on_test_epoch_start(self) -> None:
        self._reset_eval_metrics("test")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise UserError("no optimizer configured: set optimizer=adamw or optimizer=sgd")
        scale = self.hparams.pretrained_backbone_lr_scale if self.hparams.pretrained_backbone else 1.0
        with config_errors("optimizer"):
            optimizer = self.optimizer_factory(params=param_groups(self.net, backbone_lr_scale=scale))
        apply_lr_scales(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps):
            raise UserError(
                f"trainer.max_epochs={self.trainer.max_epochs} and trainer.max_steps={self.trainer.max_steps}"
                " train without end, which a learning-rate schedule cannot span: set one of them to the"
                " run's length, or use scheduler=none"
            )
        steps_per_epoch = max(1, self.trainer.num_training_batches // self.trainer.accumulate_grad_batches)
        with config_errors("scheduler"):
            scheduler = self.scheduler_factory(
                optimizer, total_steps=int(total_steps), steps_per_epoch=steps_per_epoch
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
