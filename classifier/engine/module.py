"""The LightningModule: loss, metrics and optimisation around any backbone."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torchmetrics import CatMetric, MaxMetric, MeanMetric
from torchmetrics.utilities.data import dim_zero_cat  # where torchmetrics 1.0 has it too

from classifier.errors import UserError, call_configured
from classifier.evaluation.metrics import create_eval_metrics, create_top1, metric_key_part
from classifier.evaluation.tta import TestTimeAugmentation
from classifier.models.structure import hold_frozen_norms

if TYPE_CHECKING:
    from classifier.engine.distillation import Distillation

EVAL_STAGES = ("val", "test")


def wants_channels_last(setting: bool | str, net: nn.Module) -> bool:
    """module.channels_last: true, false, or auto: NHWC for convolutional networks (more than one
    Conv2d; a ViT's only conv is its patch embedding). oneDNN on CPUs and cuDNN on tensor-core GPUs
    run NHWC convolutions faster: scratch_cnn trains 1.2x faster on 2 CPU cores."""
    if setting == "auto":
        return sum(isinstance(m, nn.Conv2d) for m in net.modules()) > 1
    if isinstance(setting, bool):
        return setting
    raise UserError(f"module.channels_last={setting!r} is not one of auto, true, false")


class ClassifierModule(L.LightningModule):
    """Cross-entropy training of `net`, with top-1/top-5/ECE/per-class metrics per epoch.

    Args:
        net: backbone with a classification head (a timm model or ScratchCNN).
        class_names: one name per output, in label order.
        optimizer: partial `(net, backbone_lr_scale) -> Optimizer` (the optimizer config group:
            optim.factory.create_optimizer), completed in configure_optimizers.
        scheduler: partial `(optimizer, total_steps, steps_per_epoch) -> LRScheduler`, stepped
            every optimizer step; None keeps the learning rate constant.
        label_smoothing: of the training loss (val/test loss is plain cross-entropy, comparable
            across runs).
        pretrained_backbone: whether `net` starts from pretrained weights.
        pretrained_backbone_lr_scale: learning-rate multiplier of a pretrained backbone (not the head).
        class_weights: per-class weights of the training loss (data.class_weights), or None.
        channels_last: NHWC memory layout for the network and its inputs (faster convolutions on
            CPUs and tensor-core GPUs); 'auto': for convolutional networks.
        compile: `torch.compile` the network in place (same state_dict keys) when fitting starts.
        distillation: the distill group's loss with its teacher attached (engine.distillation), or
            None; with it val/test also report the teacher's top-1 and the student's agreement.
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
        class_weights: Sequence[float] | None = None,
        channels_last: bool | str = "auto",
        compile: bool = False,
        distillation: Distillation | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler", "distillation"], logger=False)
        self.net = net
        self.class_names = list(class_names)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        num_classes = len(self.class_names)
        if class_weights is not None and len(class_weights) != num_classes:
            raise UserError(f"data.class_weights has {len(class_weights)} values for {num_classes} classes")
        # Not persistent: a checkpoint's state_dict stays the network's and the metrics', so eval.py
        # and weights files load it whatever the loss was weighted by.
        weights = None if class_weights is None else torch.tensor([float(w) for w in class_weights])
        self.register_buffer("class_weights", weights, persistent=False)
        self.soft_target_loss = SoftTargetCrossEntropy()
        hold_frozen_norms(net)  # a backbone the model config froze (model.freeze_backbone)
        self.channels_last = wants_channels_last(channels_last, net)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.train_loss = MeanMetric()
        self.train_top1 = create_top1(num_classes)
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in EVAL_STAGES})
        self.eval_nll = nn.ModuleDict({stage: MeanMetric() for stage in EVAL_STAGES})
        self.eval_metrics = nn.ModuleDict({stage: create_eval_metrics(num_classes) for stage in EVAL_STAGES})
        # How evaluation turns logits into the probabilities it reports (and predict.py outputs):
        # divided by `temperature` (temperature scaling, kept in the checkpoint's run metadata),
        # averaged over `tta`'s views when set. Neither changes training.
        self.temperature = 1.0
        self.tta: TestTimeAugmentation | None = None
        # With keep_outputs, val/test epochs also keep every image's plain logits and label, for
        # fitting a temperature and rescoring without running the network again.
        self.keep_outputs = False
        self.eval_outputs = nn.ModuleDict(
            {stage: nn.ModuleDict({"logits": CatMetric(), "targets": CatMetric()}) for stage in EVAL_STAGES}
        )
        self.val_top1_best = MaxMetric()
        self.val_top1_best.persistent(True)  # survives resume, like the checkpoint's best score
        # A child module: its trained parameters (feature distillation's projection) are saved and
        # optimised with the network's; the teacher inside it is not registered (distillation.py).
        self.distillation = distillation
        if distillation is not None:
            self.distill_loss = MeanMetric()
            self.teacher_top1 = nn.ModuleDict({stage: create_top1(num_classes) for stage in EVAL_STAGES})
            self.agreement = nn.ModuleDict({stage: MeanMetric() for stage in EVAL_STAGES})

    @contextmanager
    def scoring(self, tta: TestTimeAugmentation | None = None, keep_outputs: bool = False) -> Iterator[None]:
        """How the val/test epochs run inside the block score: averaged over `tta`'s views, and
        keeping every image's plain logits for `kept_outputs` / `rescore`; as before afterwards."""
        previous = self.tta, self.keep_outputs
        self.tta, self.keep_outputs = tta, keep_outputs
        try:
            yield
        finally:
            self.tta, self.keep_outputs = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled pre-logits features) in one pass, through timm's forward_features and
        forward_head: what feature distillation matches against the teacher's."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feature_map = self.net.forward_features(x)
        return self.net.forward_head(feature_map), self.net.forward_head(feature_map, pre_logits=True)

    def train(self, mode: bool = True) -> ClassifierModule:
        # Lightning puts the module back in training mode every epoch; frozen batch norms stay in eval.
        super().train(mode)
        if mode:
            hold_frozen_norms(self.net)
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning restores the modes it captured around the sanity check, from before any train().
        hold_frozen_norms(self.net)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.compile:
            self.net.compile()  # in place: the state_dict keys stay those of the plain network

    def on_fit_start(self) -> None:
        # A network that initialises itself from data (speedrun_cnn's whitening stem) sees the
        # training split through the eval transform once, before a fresh fit: not on resume (the
        # checkpoint has its weights) nor over pretrained or given weights.
        init_from_images = getattr(self.net, "init_from_images", None)
        datamodule = getattr(self.trainer, "datamodule", None)
        if init_from_images is None or datamodule is None:
            return
        if self.trainer.ckpt_path or self.hparams.pretrained_backbone:
            return
        init_from_images(images.to(self.device) for images, _ in datamodule.eval_loader("train"))

    def training_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class indices, or against soft targets (one probability per class)
        when a batch carries them (Mixup / CutMix: `MixupCutMix` adds them, label smoothing included)."""
        if targets.ndim == 1:
            smoothing = self.hparams.label_smoothing
            return F.cross_entropy(logits, targets, weight=self.class_weights, label_smoothing=smoothing)
        if self.class_weights is None:
            return self.soft_target_loss(logits, targets)
        # timm's SoftTargetCrossEntropy has no class weights: each image's loss is weighted by its
        # targets' weight, normalised as F.cross_entropy does (sum of the weights, not the count).
        weighted = targets * self.class_weights
        return (-(weighted * F.log_softmax(logits, dim=-1)).sum()) / weighted.sum()

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, targets, *soft = batch
        features = None
        if self.distillation is not None and self.distillation.needs_features:
            logits, features = self.forward_with_features(images)
        else:
            logits = self(images)
        if soft:
            # Mixed images count as right when the top prediction is the class with the larger share.
            loss, targets = self.training_loss(logits, soft[0]), soft[0].argmax(dim=-1)
        else:
            loss = self.training_loss(logits, targets)
        if self.distillation is not None:
            # The teacher sees the batch as the student does: mixed, when Mixup / CutMix mixed it.
            loss, distill_loss = self.distillation.combine(loss, logits, features, images)
            self.distill_loss.update(distill_loss.detach(), weight=targets.numel())
            self.log("train/distill_loss", self.distill_loss, on_step=False, on_epoch=True)
        self.train_loss.update(loss.detach(), weight=targets.numel())
        self.train_top1.update(logits.detach(), targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/top1", self.train_top1, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def predict_probabilities(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class probabilities as evaluation reports them: with the temperature, averaged over the
        TTA views when `tta` is set; the plain logits of the images themselves)."""
        if self.tta is not None:
            return self.tta.probabilities(self, images, self.temperature)
        logits = self(images)
        return (logits.float() / self.temperature).softmax(dim=-1), logits

    def _eval_step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, targets = batch
        probabilities, logits = self.predict_probabilities(images)
        # loss: the plain network's cross-entropy (comparable with training's); nll: of the
        # probabilities reported, after temperature scaling and TTA.
        loss = F.cross_entropy(logits, targets)
        self.eval_loss[stage].update(loss, weight=targets.numel())
        self._score(stage, probabilities, targets)
        if self.distillation is not None and self.tta is None:
            self._score_teacher(stage, images, logits, targets)
        if self.keep_outputs:
            self.eval_outputs[stage]["logits"].update(logits.detach().float())
            self.eval_outputs[stage]["targets"].update(targets)
        return probabilities

    def _score(self, stage: str, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        picked = probabilities.gather(1, targets[:, None]).squeeze(1)
        nll = -picked.clamp_min(torch.finfo(picked.dtype).tiny).log().mean()
        self.eval_nll[stage].update(nll, weight=targets.numel())
        self.eval_metrics[stage].update(probabilities, targets)

    def _score_teacher(
        self, stage: str, images: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
    ) -> None:
        """The teacher's own top-1 on the batch, and how often the student's top class is the teacher's."""
        teacher_logits = self.distillation.teacher_logits(images)
        self.teacher_top1[stage].update(teacher_logits, targets)
        agree = (teacher_logits.argmax(dim=-1) == logits.argmax(dim=-1)).float().mean()
        self.agreement[stage].update(agree, weight=targets.numel())

    def kept_outputs(self, stage: str, gather: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain logits and labels of the last `stage` epoch run with keep_outputs: from every
        device (collective: every process must call it), or this process's own (`gather=False`)."""
        kept = self.eval_outputs[stage]
        if not kept["targets"].value:  # its list state: empty until an update
            raise RuntimeError(f"no {stage} outputs kept: set keep_outputs before the {stage} epoch")
        if gather:
            return kept["logits"].compute(), kept["targets"].compute().long()
        return dim_zero_cat(kept["logits"].value), dim_zero_cat(kept["targets"].value).long()

    def rescore(self, stage: str) -> None:
        """Recompute the `stage` metrics from the kept logits at the current temperature, as if the
        epoch had run again without TTA (the network does not run; `loss` stays what it was)."""
        logits, targets = self.kept_outputs(stage, gather=False)  # each process its own share
        self.eval_metrics[stage].reset()
        self.eval_nll[stage].reset()
        self._score(stage, (logits / self.temperature).softmax(dim=-1), targets)

    def epoch_results(self, stage: str) -> dict[str, torch.Tensor]:
        """Every metric of the last completed `stage` epoch ('val' or 'test'), over all devices:
        top1, top5 (5+ classes), ece, class_acc, confusion, loss and nll. The reports read them here;
        the states are kept until the next epoch of that stage starts."""
        values = {
            **self.eval_metrics[stage].compute(),
            "loss": self.eval_loss[stage].compute(),
            "nll": self.eval_nll[stage].compute(),
        }
        if self.distillation is not None and self.tta is None:  # the teacher runs on plain images only
            values["teacher_top1"] = self.teacher_top1[stage].compute()
            values["agreement"] = self.agreement[stage].compute()
        return values

    def calibration_data(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 probability and whether it was right, per image of the last `stage` epoch: what
        the ECE metric accumulated, gathered from every device (every process must call this)."""
        ece = self.eval_metrics[stage]["ece"]
        with ece.sync_context():
            confidences, correct = dim_zero_cat(ece.confidences), dim_zero_cat(ece.accuracies)
        return confidences.float().cpu().numpy(), correct.float().cpu().numpy()

    def _reset_eval_metrics(self, stage: str) -> None:
        self.eval_metrics[stage].reset()
        self.eval_loss[stage].reset()
        self.eval_nll[stage].reset()
        for kept in self.eval_outputs[stage].values():
            kept.reset()
        if self.distillation is not None:
            self.teacher_top1[stage].reset()
            self.agreement[stage].reset()

    def _log_eval_epoch(self, stage: str) -> torch.Tensor:
        values = self.epoch_results(stage)
        # An epoch with test-time augmentation logs beside the plain one: val/top1_tta, ...
        suffix = "_tta" if self.tta is not None else ""
        summary = {
            f"{stage}/top1{suffix}": values["top1"],
            f"{stage}/ece{suffix}": values["ece"],
            f"{stage}/nll{suffix}": values["nll"],
        }
        if not suffix:  # the plain network's loss is the same with or without TTA
            summary[f"{stage}/loss"] = values["loss"]
            for name in ("teacher_top1", "agreement"):
                if name in values:
                    summary[f"{stage}/{name}"] = values[name]
        if "top5" in values:
            summary[f"{stage}/top5{suffix}"] = values["top5"]
        self.log_dict(summary, prog_bar=True)
        if not suffix:
            per_class = {
                f"{stage}/class_acc/{metric_key_part(name)}": acc
                for name, acc in zip(self.class_names, values["class_acc"], strict=True)
            }
            self.log_dict(per_class)
        return values["top1"]

    def on_validation_epoch_start(self) -> None:
        self._reset_eval_metrics("val")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("val", batch)  # the probabilities: callbacks (dashboards) read them

    def on_validation_epoch_end(self) -> None:
        top1 = self._log_eval_epoch("val")
        if not self.trainer.sanity_checking and self.tta is None:
            self.val_top1_best.update(top1)  # on the module's device, like the metric's state
            self.log("val/top1_best", self.val_top1_best.compute())

    def on_test_epoch_start(self) -> None:
        self._reset_eval_metrics("test")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise UserError("no optimizer configured: set optimizer=adamw or optimizer=sgd")
        scale = self.hparams.pretrained_backbone_lr_scale if self.hparams.pretrained_backbone else 1.0
        optimizer = call_configured(self.optimizer_factory, "optimizer", self.net, backbone_lr_scale=scale)
        distill_parameters = list(self.distillation.parameters()) if self.distillation is not None else []
        if distill_parameters:  # feature distillation's projection learns with the network, at its lr
            optimizer.add_param_group({"params": distill_parameters})
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
        schedule = {"total_steps": int(total_steps), "steps_per_epoch": steps_per_epoch}
        scheduler = call_configured(self.scheduler_factory, "scheduler", optimizer, **schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
