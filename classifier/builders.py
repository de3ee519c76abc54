"""Building the data, model and trainer of a run: from its config, or from a checkpoint's saved config.
train.py, eval.py and later predict.py / export.py all go through here."""

from __future__ import annotations

from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from classifier.checkpoints import AtomicCheckpointIO, load_checkpoint
from classifier.data import ClassificationDataModule
from classifier.errors import UserError
from classifier.models import check_model_name, pretrained_input
from classifier.module import ClassifierModule


def uses_pretrained_weights(model_cfg: DictConfig) -> bool:
    return bool(model_cfg.get("pretrained")) or bool(model_cfg.get("weights"))


def pretrained_input_overrides(data_cfg: DictConfig, model_cfg: DictConfig) -> dict[str, Any]:
    """Data keys that pretrained weights decide: the normalisation and resize filter they were
    trained with, and their input size unless data.img_size is set."""
    if not uses_pretrained_weights(model_cfg):
        return {}
    check_model_name(model_cfg.name)
    spec = pretrained_input(model_cfg.name)
    if spec is None:
        return {}
    return {**spec, "img_size": data_cfg.get("img_size") or spec["img_size"]}


def build_datamodule(
    data_cfg: DictConfig, input_overrides: dict[str, Any] | None = None
) -> ClassificationDataModule:
    """Instantiate `data_cfg` and fetch its files if needed (so class names can be read)."""
    datamodule = instantiate(data_cfg, **(input_overrides or {}), _convert_="all")
    datamodule.prepare_data()
    return datamodule


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
    )


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
    if not loggers:  # LearningRateMonitor refuses to run without a logger to write to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    create_trainer = instantiate(cfg.trainer, _partial_=True)
    return create_trainer(
        callbacks=callbacks + list(extra_callbacks or []),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (what checkpoints and TensorBoard keep), without Hydra's own node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)


def _apply_data_overrides(data_cfg: DictConfig, overrides: dict[str, Any]) -> DictConfig:
    data_cfg = data_cfg.copy()
    target = data_cfg.get("_target_", "?").rsplit(".", 1)[-1]
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in data_cfg:
            raise UserError(f"data.{key} does not apply to the checkpoint's data ({target})")
        with open_dict(data_cfg):
            data_cfg[key] = value
    return data_cfg


def load_run(
    ckpt_path: str, data_overrides: dict[str, Any] | None = None
) -> tuple[ClassifierModule, ClassificationDataModule]:
    """The module (with the checkpoint's weights) and data module of a train.py checkpoint, rebuilt
    from the config saved inside it; `data_overrides` replace its data keys (None values are ignored).

    Raises:
        UserError: unreadable checkpoint, a data key the checkpoint's data does not have, or data
            whose classes differ from the checkpoint's.
    """
    checkpoint = load_checkpoint(ckpt_path)
    saved = checkpoint["classifier"]
    config = OmegaConf.create(saved["config"])
    data_cfg = _apply_data_overrides(config.data, data_overrides or {})
    datamodule = build_datamodule(data_cfg, saved["input"])
    class_names = list(saved["class_names"])
    if datamodule.class_names != class_names:
        raise UserError(
            f"the data's classes ({', '.join(datamodule.class_names[:10])}) differ from the checkpoint's"
            f" ({', '.join(class_names[:10])})"
        )
    model_cfg = config.model.copy()
    with open_dict(model_cfg):
        model_cfg.pretrained, model_cfg.weights = False, None  # the checkpoint holds the weights
    net = build_net(model_cfg, len(class_names), saved["input"]["img_size"])
    module = instantiate(config.module, _partial_=True)(net=net, class_names=class_names)
    module.load_state_dict(checkpoint["state_dict"])
    return module, datamodule
