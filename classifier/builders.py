"""Building the data, model and trainer of a run: from its config, or from a checkpoint's saved config.
train.py, eval.py and later predict.py / export.py all go through here."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from classifier import data
from classifier.checkpoints import (
    TRAIN_SECONDS_KEY,
    AtomicCheckpointIO,
    load_checkpoint,
    saved_run,
    saved_temperature,
)
from classifier.data import ClassificationDataModule
from classifier.data.transforms import InputSpec, is_small
from classifier.errors import UserError, config_errors
from classifier.models import check_model_name, create_model, pretrained_input
from classifier.module import ClassifierModule
from classifier.precision import TrainingBF16, cpu_computes_bf16

# What a checkpoint's saved config may construct, by the `_target_` names the configs in conf/ use.
# A checkpoint is data: rebuilding a run from one never imports a path the file names (it could
# name any callable, e.g. torch.load with weights_only=False on a pickle inside it).
ALLOWED_DATA_MODULES: dict[str, type[ClassificationDataModule]] = {
    f"classifier.data.{name}": getattr(data, name)
    for name in data.__all__
    if isinstance(getattr(data, name), type)
    and issubclass(getattr(data, name), ClassificationDataModule)
    and getattr(data, name) is not ClassificationDataModule
}
ALLOWED_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "classifier.models.create_model": create_model
}
ALLOWED_MODULES: dict[str, type[ClassifierModule]] = {"classifier.module.ClassifierModule": ClassifierModule}


def uses_pretrained_weights(model_cfg: DictConfig) -> bool:
    return bool(model_cfg.get("pretrained")) or bool(model_cfg.get("weights"))


def pretrained_input_overrides(data_cfg: DictConfig, model_cfg: DictConfig) -> dict[str, Any]:
    """Data keys that pretrained weights decide, as timm resolves them for the weights: the
    normalisation and resize filter they were trained with; their input size unless data.img_size
    (or the model config's input_size: DINOv2's configs use 224, not the weights' 518) is set;
    their eval crop (crop_pct, crop_mode) unless data.crop_pct is set or the input is small (small
    images train uncropped)."""
    if not uses_pretrained_weights(model_cfg):
        return {}
    check_model_name(model_cfg.name)
    spec = pretrained_input(model_cfg.name)
    if spec is None:
        return {}
    side = data_cfg.get("img_size") or model_cfg.get("input_size") or spec["img_size"]
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


# Model and optimizer keys that shape training, not the network or the optimizer object: the module
# takes them, and a checkpoint's saved model config is rebuilt without them. input_size sets the data's
# side for pretrained weights; open_clip names the CLIP model zeroshot.py builds.
MODULE_MODEL_KEYS = ("freeze_backbone", "input_size", "open_clip")
# resolve_precision's answer for trainer.precision=auto on a CPU with bf16 arithmetic
CPU_BF16_TRAINING = "bf16-mixed training, 32-true evaluation"
MODULE_OPTIMIZER_KEYS = ("layer_decay", "norm_lr_scale", "filter_bias_and_bn")


def _without(cfg: DictConfig, keys: tuple[str, ...]) -> DictConfig:
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in keys:
            cfg.pop(key, None)
    return cfg


def build_net(model_cfg: DictConfig, num_classes: int, img_size: int) -> nn.Module:
    declared = model_cfg.get("num_classes")
    if declared is not None and int(declared) != num_classes:
        raise UserError(
            f"model.num_classes={declared} but the data has {num_classes} classes; leave it null to infer it"
        )
    model_cfg = _without(model_cfg, MODULE_MODEL_KEYS)
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
        optimizer=instantiate(_without(cfg.optimizer, MODULE_OPTIMIZER_KEYS)),
        scheduler=scheduler,
        pretrained_backbone=uses_pretrained_weights(cfg.model),
        class_weights=datamodule.loss_class_weights,
        freeze_backbone=bool(cfg.model.get("freeze_backbone")),
        layer_decay=cfg.optimizer.get("layer_decay"),
        norm_lr_scale=cfg.optimizer.get("norm_lr_scale"),
        filter_bias_and_bn=cfg.optimizer.get("filter_bias_and_bn", True),
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
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a bar it was told not to show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    check_accelerator(cfg.trainer.get("accelerator"))
    create_trainer = instantiate(cfg.trainer, _partial_=True)
    precision = precision_arguments(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"))
    with config_errors("trainer"):
        return create_trainer(
            callbacks=callbacks + list(extra_callbacks or []),
            logger=loggers or False,
            plugins=[AtomicCheckpointIO(), *precision["plugins"]],
            precision=precision["precision"],
        )


def resolve_precision(precision: str | int | None, accelerator: str | None) -> str | int | None:
    """trainer.precision=auto: bf16-mixed on a CUDA GPU that supports it (Ampere and newer), 16-mixed
    on older ones; on the CPU bf16-mixed training steps (TrainingBF16: evaluation stays float32)
    where the cores compute bf16 natively, else 32-true. Other values as given."""
    if str(precision) != "auto":
        return precision
    wants_gpu = str(accelerator).lower() in ("gpu", "cuda", "auto", "none")
    if wants_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return CPU_BF16_TRAINING if cpu_computes_bf16() else "32-true"


def precision_arguments(precision: str | int | None, accelerator: str | None) -> dict[str, Any]:
    """Trainer(precision=..., plugins=[...]) for trainer.precision."""
    resolved = resolve_precision(precision, accelerator)
    if resolved == CPU_BF16_TRAINING:
        return {"precision": None, "plugins": [TrainingBF16()]}
    return {"precision": resolved, "plugins": []}


def check_accelerator(accelerator: str | None) -> None:
    """Raises UserError when a GPU is asked for on a machine without one (Lightning's own message,
    "No supported gpu backend found!", does not say what to do)."""
    if str(accelerator).lower() not in ("gpu", "cuda"):
        return
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if not torch.cuda.is_available() and not (str(accelerator).lower() == "gpu" and has_mps):
        raise UserError(
            f"trainer.accelerator={accelerator} but torch finds no GPU on this machine:"
            " use trainer=cpu (or trainer.accelerator=auto, which takes a GPU when there is one)"
        )


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data (what checkpoints and TensorBoard keep), without Hydra's own node."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return OmegaConf.to_container(cfg, resolve=True)


def construct_allowed(
    spec: Mapping[str, Any], allowed: Mapping[str, Callable[..., Any]], key: str, **kwargs: Any
) -> Any:
    """Call the allowed factory that `spec['_target_']` names with the rest of `spec` (plain values)
    and `kwargs`: how a checkpoint's saved config is turned back into objects.

    Raises:
        UserError: the target is not in `allowed`, a value asks for another object to be built
            (a nested `_target_`) or for Hydra's instantiation options (`_partial_`, ...), or the
            arguments do not fit the factory.
    """
    spec = dict(spec)
    target = spec.pop("_target_", None)
    factory = allowed.get(target) if isinstance(target, str) else None
    if factory is None:
        raise UserError(
            f"refused to rebuild the checkpoint's {key}: its _target_ {target!r} is not one of this"
            f" project's ({', '.join(allowed)})"
        )
    nested = _special_keys(spec)
    if nested:
        raise UserError(
            f"refused to rebuild the checkpoint's {key}: it asks for {', '.join(nested)}, which a saved"
            " run config never holds"
        )
    try:
        return factory(**spec, **kwargs)
    except TypeError as exc:
        raise UserError(f"the checkpoint's {key} config does not fit {target}: {exc}") from exc


def _special_keys(value: Any, where: str = "") -> list[str]:
    """Paths of keys that would make Hydra build something (`_target_`, `_partial_`, `_args_`...)."""
    found = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if str(key).startswith("_") and str(key).endswith("_"):
                found.append(path)
            found += _special_keys(item, path)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found += _special_keys(item, f"{where}[{i}]")
    return found


def _apply_data_overrides(data_cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    data_cfg = dict(data_cfg)
    target = str(data_cfg.get("_target_", "?")).rsplit(".", 1)[-1]
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in data_cfg:
            raise UserError(f"data.{key} does not apply to the checkpoint's data ({target})")
        data_cfg[key] = value
    return data_cfg


def _saved_section(config: Any, key: str) -> dict[str, Any]:
    section = config.get(key) if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping):
        raise UserError(f"the checkpoint's saved config has no '{key}' section: was it written by train.py?")
    return dict(section)


@dataclass
class SavedModel:
    """A train.py checkpoint's model, rebuilt: what eval.py, predict.py and export.py work on."""

    module: ClassifierModule  # with the checkpoint's weights and temperature
    class_names: list[str]
    input_spec: InputSpec  # the input the model was trained with (side, normalisation, eval crop)
    config: dict[str, Any]  # the run's saved config
    path: str
    training: dict[str, Any]  # what the checkpoint says of its training: epoch, global_step, seconds

    @property
    def trains_with_flips(self) -> bool:
        """Whether the run trained on mirrored images (its data.hflip and augment.hflip)."""
        data_flip = (self.config.get("data") or {}).get("hflip", True)
        augment_flip = (self.config.get("augment") or {}).get("hflip", True)
        return bool(data_flip) and bool(augment_flip)


def load_model(ckpt_path: str) -> SavedModel:
    """The module of a train.py checkpoint, rebuilt from the config saved inside it, with its
    weights and temperature; no data is read.

    Only this project's model factory and module are built (ALLOWED_*), whatever the saved config
    names, and its values are passed as plain data: nothing in the file can make this call other code.

    Raises:
        UserError: unreadable checkpoint, a saved config that names other code, or weights that do
            not fit the saved model config.
    """
    checkpoint = load_checkpoint(ckpt_path)
    what = f"ckpt_path={ckpt_path}"
    saved = saved_run(checkpoint, what)
    config = saved["config"]
    class_names = [str(name) for name in saved["class_names"]]
    try:
        input_spec = InputSpec(**dict(saved["input"]))
    except (TypeError, UserError) as exc:
        raise UserError(f"{what} holds input settings this version cannot use: {exc}") from exc
    # The checkpoint holds the weights; the class count comes from its class names.
    model_cfg = {**_saved_section(config, "model"), "pretrained": False, "weights": None}
    for key in ("num_classes", *MODULE_MODEL_KEYS):
        model_cfg.pop(key, None)
    net = construct_allowed(
        model_cfg,
        ALLOWED_MODEL_FACTORIES,
        "model",
        num_classes=len(class_names),
        img_size=input_spec.img_size,
    )
    module = construct_allowed(
        _saved_section(config, "module"), ALLOWED_MODULES, "module", net=net, class_names=class_names
    )
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{what}: its weights do not fit its own model config ({exc})") from exc
    module.temperature = saved_temperature(saved, what)
    training = {
        "checkpoint_epoch": _count(checkpoint.get("epoch"), offset=1),
        "global_step": _count(checkpoint.get("global_step")),
        "seconds": _count(saved.get(TRAIN_SECONDS_KEY), kind=float),
    }
    return SavedModel(module, class_names, input_spec, dict(config), str(ckpt_path), training)


def _count(value: Any, offset: int = 0, kind: type = int) -> int | float | None:
    """A non-negative number from a checkpoint, or None for anything else (the file is data)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        return None
    return kind(value) + offset


def saved_datamodule(
    saved: SavedModel, data_overrides: dict[str, Any] | None = None
) -> ClassificationDataModule:
    """The data module of a checkpoint's run, from its saved config with `data_overrides` replacing
    its data keys (None values are ignored) and the model's input settings; read and checked to
    have the checkpoint's classes.

    Raises:
        UserError: a data key the checkpoint's data does not have, a saved config that names
            other code, or data whose classes differ from the checkpoint's.
    """
    data_cfg = _apply_data_overrides(_saved_section(saved.config, "data"), data_overrides or {})
    # The input settings the model was trained with replace the data config's.
    data_cfg.update(saved.input_spec.to_dict())
    datamodule = construct_allowed(data_cfg, ALLOWED_DATA_MODULES, "data")
    datamodule.prepare_data()
    datamodule.setup()
    if datamodule.class_names != saved.class_names:
        raise UserError(
            f"the data's classes ({', '.join(datamodule.class_names[:10])}) differ from the checkpoint's"
            f" ({', '.join(saved.class_names[:10])})"
        )
    return datamodule


def load_run(
    ckpt_path: str, data_overrides: dict[str, Any] | None = None
) -> tuple[ClassifierModule, ClassificationDataModule]:
    """The module (with the checkpoint's weights and temperature) and data module of a train.py
    checkpoint, rebuilt from the config saved inside it; `data_overrides` replace its data keys
    (None values are ignored). Builds only what load_model does, and this project's data modules.

    Raises:
        UserError: as load_model, and a data key the checkpoint's data does not have, or data
            whose classes differ from the checkpoint's.
    """
    saved = load_model(ckpt_path)
    return saved.module, saved_datamodule(saved, data_overrides)
