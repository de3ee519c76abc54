"""Rebuilding a train.py run from a checkpoint's saved config: what eval.py, predict.py and export.py
work on. A checkpoint is data: only this project's classes are built, chosen by name from an
allow-list, whatever the saved config names."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from classifier import data
from classifier.data import ClassificationDataModule
from classifier.data.transforms import InputSpec
from classifier.engine.module import ClassifierModule
from classifier.errors import UserError
from classifier.files import expand_path
from classifier.models import create_model
from classifier.run.checkpoints import (
    TRACKERS_KEY,
    TRAIN_SECONDS_KEY,
    load_checkpoint,
    saved_run,
    saved_temperature,
)

log = logging.getLogger(__name__)

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


# state_dict keys of the distillation's trained parts (ClassifierModule.distillation).
DISTILLATION_PREFIX = "distillation."

ALLOWED_MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "classifier.models.create_model": create_model
}


# Keys the model configs of checkpoints written before December 2026 hold beside the network's
# arguments (now data.img_size and the top-level clip section).
LEGACY_MODEL_KEYS = ("input_size", "open_clip")
# Checkpoints written before the package was regrouped (December 2026) name the module by its old path.
ALLOWED_MODULES: dict[str, type[ClassifierModule]] = {
    "classifier.engine.module.ClassifierModule": ClassifierModule,
    "classifier.module.ClassifierModule": ClassifierModule,
}


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


# Data keys naming an issues.csv (classifier/data/issues.py): a run's audit file may be gone by the time
# its checkpoint is evaluated.
ISSUES_KEYS = ("exclude", "relabel")


def _without_gone_issues_files(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """The saved data config less each issues file that no longer exists, with a warning: a moved or
    deleted audit file must not stop a checkpoint from being evaluated; its whole splits are."""
    data_cfg = dict(data_cfg)
    for key in ISSUES_KEYS:
        value = data_cfg.get(key)
        if isinstance(value, str) and value and not expand_path(value).is_file():
            log.warning(
                "the checkpoint's data.%s=%s is gone: %s; set data.%s=PATH to apply it from elsewhere",
                key,
                value,
                "every split is read whole" if key == "exclude" else "train keeps its given labels",
                key,
            )
            data_cfg[key] = None
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
    trackers: dict[str, dict[str, str]] = field(default_factory=dict)  # the tracker runs that trained it

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
    for key in ("num_classes", *LEGACY_MODEL_KEYS):
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
    # A distilled run's checkpoint also holds what trained beside the network (feature
    # distillation's projection): the model is the student alone.
    state_dict = {
        key: value
        for key, value in checkpoint["state_dict"].items()
        if not key.startswith(DISTILLATION_PREFIX)
    }
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UserError(f"{what}: its weights do not fit its own model config ({exc})") from exc
    module.temperature = saved_temperature(saved, what)
    training = {
        "checkpoint_epoch": _count(checkpoint.get("epoch"), offset=1),
        "global_step": _count(checkpoint.get("global_step")),
        "seconds": _count(saved.get(TRAIN_SECONDS_KEY), kind=float),
    }
    trackers = _plain_strings(saved.get(TRACKERS_KEY))
    return SavedModel(module, class_names, input_spec, dict(config), str(ckpt_path), training, trackers)


def _plain_strings(value: Any) -> dict[str, dict[str, str]]:
    """A {name: {key: text}} mapping from a checkpoint, {} for anything else (the file is data)."""
    if not isinstance(value, dict):
        return {}
    return {
        str(name): {str(k): str(v) for k, v in entry.items() if isinstance(v, str)}
        for name, entry in value.items()
        if isinstance(entry, dict)
    }


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
    have the checkpoint's classes. A saved data.exclude / data.relabel file that is gone is left
    out with a warning (an override naming a missing file is an error).

    Raises:
        UserError: a data key the checkpoint's data does not have, a saved config that names
            other code, or data whose classes differ from the checkpoint's.
    """
    saved_data = _without_gone_issues_files(_saved_section(saved.config, "data"))
    data_cfg = _apply_data_overrides(saved_data, data_overrides or {})
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
