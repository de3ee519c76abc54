"""Building a run's objects from its composed config: the data module (read before the model, which
needs its classes and input size), the network, the LightningModule with its optimizer and schedule,
and the Trainer with its callbacks, loggers and precision. train.py and the tuners go through here."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from classifier.callbacks.progress import CompactProgressBar
from classifier.data import ClassificationDataModule
from classifier.data.transforms import is_small
from classifier.engine.devices import warn_if_cpu_processes_exceed_cores
from classifier.engine.distillation import Distillation
from classifier.engine.module import ClassifierModule
from classifier.engine.precision import check_accelerator, check_sync_batchnorm, precision_arguments
from classifier.errors import UserError, call_configured
from classifier.models import check_model_name, pretrained_input
from classifier.run.checkpoints import AtomicCheckpointIO


def uses_pretrained_weights(model_cfg: DictConfig) -> bool:
    return bool(model_cfg.get("pretrained")) or bool(model_cfg.get("weights"))


def pretrained_input_overrides(data_cfg: DictConfig, model_cfg: DictConfig) -> dict[str, Any]:
    """Data keys that pretrained weights decide, as timm resolves them for the weights: the
    normalisation and resize filter they were trained with; their input size unless data.img_size
    is set (DINOv2's model configs set it to 224, not the weights' 518);
    their eval crop (crop_pct, crop_mode) unless data.crop_pct is set or the input is small (small
    images train uncropped)."""
    if not uses_pretrained_weights(model_cfg):
        return {}
    check_model_name(model_cfg.name)
    spec = pretrained_input(model_cfg.name)
    if spec is None:
        return {}
    side = data_cfg.get("img_size") or spec["img_size"]
    overrides = {**spec, "img_size": side}
    if data_cfg.get("crop_pct") is not None or is_small(int(side)):
        overrides.pop("crop_pct")
        overrides.pop("crop_mode")
    return overrides


def build_datamodule(
    data_cfg: DictConfig, input_overrides: dict[str, Any] | None = None, augment: DictConfig | None = None
) -> ClassificationDataModule:
    """Instantiate `data_cfg` with the run's `augment` config, fetch its files if needed and read
    them (class names, input size, splits): the data module's explicit steps, before the model that
    depends on them is built."""
    extra = dict(input_overrides or {})
    if augment is not None:
        extra["augment"] = OmegaConf.to_container(augment, resolve=True)
    datamodule = instantiate(data_cfg, **extra, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def build_run_datamodule(cfg: DictConfig) -> ClassificationDataModule:
    """A train.py run's data module: cfg.data with the input settings of cfg.model's pretrained
    weights and the run's augmentation."""
    return build_datamodule(
        cfg.data, pretrained_input_overrides(cfg.data, cfg.model), augment=cfg.get("augment")
    )


def build_net(model_cfg: DictConfig, num_classes: int, img_size: int) -> nn.Module:
    declared = model_cfg.get("num_classes")
    if declared is not None and int(declared) != num_classes:
        raise UserError(
            f"model.num_classes={declared} but the data has {num_classes} classes; leave it null to infer it"
        )
    return instantiate(model_cfg, num_classes=num_classes, img_size=img_size, _convert_="all")


def build_module(cfg: DictConfig, datamodule: ClassificationDataModule) -> ClassifierModule:
    if datamodule.num_classes < 2:
        raise UserError(
            f"the data has {datamodule.num_classes} class ({', '.join(datamodule.class_names)});"
            " a classifier needs at least two"
        )
    net = build_net(cfg.model, datamodule.num_classes, datamodule.input_spec.img_size)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    create_module = instantiate(cfg.module, _partial_=True)
    return create_module(
        net=net,
        class_names=datamodule.class_names,
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        pretrained_backbone=uses_pretrained_weights(cfg.model),
        class_weights=datamodule.loss_class_weights,
        distillation=build_distillation(cfg, net, datamodule),
    )


def build_distillation(
    cfg: DictConfig, net: nn.Module, datamodule: ClassificationDataModule
) -> Distillation | None:
    """The distill group's loss (engine.distillation) with its teacher loaded for this student,
    or None without distillation (distill: null)."""
    if not cfg.get("distill"):
        return None
    distillation = call_configured(instantiate(cfg.distill, _partial_=True), "distill")
    distillation.attach(net, datamodule.class_names, datamodule.input_spec)
    return distillation


def build_trainer(
    cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None, with_loggers: bool = True
) -> L.Trainer:
    """The configured Trainer with the config's callbacks and loggers (none without `with_loggers`),
    writing checkpoints atomically."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = (
        [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
        if with_loggers
        else []
    )
    if not loggers:  # Lightning's LearningRateMonitor, if a config adds it, refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    elif not any(isinstance(c, ProgressBar) for c in callbacks):
        # eval.py's Trainer has no callbacks group: Lightning's own bar would write its carriage
        # returns into a log file or a pipe, where this one turns itself off
        callbacks.append(CompactProgressBar())
    check_accelerator(cfg.trainer.get("accelerator"))
    check_sync_batchnorm(cfg.trainer.get("sync_batchnorm"), cfg.trainer.get("accelerator"))
    create_trainer = instantiate(cfg.trainer, _partial_=True)
    precision = precision_arguments(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
    arguments = {
        "callbacks": callbacks + list(extra_callbacks or []),
        "logger": loggers or False,
        "plugins": [AtomicCheckpointIO(), *precision["plugins"]],
        "precision": precision["precision"],
    }
    trainer = call_configured(create_trainer, "trainer", **arguments)
    warn_if_cpu_processes_exceed_cores(trainer)
    return trainer


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (what checkpoints and TensorBoard keep), without Hydra's own node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)
