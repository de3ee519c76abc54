"""export.py quantize=int8|int8_dynamic: the int8 ONNX model beside the float one, calibrated on the
checkpoint's training images (or calibration_input=), both evaluated on its held-out split, the
figures in both sidecars and in a model_card.yaml beside them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import DictConfig

from classifier.config_values import to_number
from classifier.data.images import load_rgb
from classifier.data.splits import targets_of
from classifier.data.transforms import create_eval_transform
from classifier.engine.from_checkpoint import SavedModel
from classifier.errors import UserError
from classifier.evaluation.model_card import MODEL_CARD_FILE, write_model_card
from classifier.files import write_atomically

log = logging.getLogger(__name__)

MODES = ("int8", "int8_dynamic")


@dataclass
class Int8Settings:
    """The quantize keys of conf/export.yaml, checked."""

    mode: str
    calibration_images: int
    calibration_input: str | None
    method: str
    max_top1_drop: float
    eval_images: int | None

    @classmethod
    def from_config(cls, cfg: DictConfig, fmt: str) -> Int8Settings | None:
        """None without quantize=; raises UserError for a value that cannot work."""
        mode = cfg.get("quantize")
        if mode is None:
            return None
        if str(mode) not in MODES:
            raise UserError(f"quantize={mode!r} is not one of {', '.join(MODES)} (or null: no quantization)")
        if fmt != "onnx":
            raise UserError(
                f"quantize={mode} needs format=onnx (onnxruntime quantizes ONNX files), not {fmt}"
            )
        method = str(cfg.get("calibration_method", "minmax")).lower()
        if method not in ("minmax", "entropy", "percentile"):
            raise UserError(f"calibration_method={method!r} is not one of minmax, entropy, percentile")
        count = to_number(cfg.get("calibration_images", 256), "calibration_images", int)
        if count < 1:
            raise UserError(f"calibration_images={count} must be 1 or more")
        limit = cfg.get("eval_images")
        limit = None if limit is None else to_number(limit, "eval_images", int)
        if limit is not None and limit < 1:
            raise UserError(f"eval_images={limit} must be 1 or more (null: the whole held-out split)")
        drop = to_number(cfg.get("max_top1_drop", 0.01), "max_top1_drop")
        given = cfg.get("calibration_input")
        return cls(str(mode), count, str(given) if given else None, method, drop, limit)


def readable_data(saved: SavedModel) -> tuple[Any, str | None]:
    """The checkpoint's data module, or None and why it cannot be read."""
    from classifier.engine.from_checkpoint import saved_datamodule

    try:
        return saved_datamodule(saved), None
    except UserError as exc:
        return None, str(exc)


def calibration_set(
    settings: Int8Settings, saved: SavedModel, datamodule: Any, problem: str | None
) -> tuple[np.ndarray, str]:
    """The calibration images as the model's input (the sidecar's preprocessing) and where they
    came from: calibration_input's files, else calibration_images drawn evenly over the classes of
    the checkpoint's training split. Raises UserError when neither can be read."""
    from classifier.deployment.quantize import evenly_over_classes

    transform = create_eval_transform(saved.input_spec)
    if settings.calibration_input:
        paths = _calibration_files(settings.calibration_input)[: settings.calibration_images]
        images = [transform(load_rgb(path)) for path in paths]
        where = f"{len(paths)} images of calibration_input={settings.calibration_input}"
        return torch.stack(images).numpy(), where
    if datamodule is None:
        raise UserError(
            f"quantize=int8 calibrates on the checkpoint's training images, which cannot be read ({problem}):"
            " give calibration_input=DIR (images like the training ones), or use quantize=int8_dynamic"
        )
    train = datamodule.dataset("train")
    picked = evenly_over_classes(targets_of(train), settings.calibration_images, datamodule.num_classes)
    images = torch.stack([transform(train[i][0]) for i in picked]).numpy()
    return images, f"{len(picked)} images of the checkpoint's train split, drawn evenly over its classes"


def _calibration_files(pattern: str) -> list[Path]:
    from classifier.tasks.predict import find_images

    try:
        return find_images(pattern)
    except UserError as exc:  # find_images speaks of predict's input=
        raise UserError(str(exc).replace("input=", "calibration_input=", 1)) from exc


def int8_path(float_path: Path) -> Path:
    """model.onnx -> model.int8.onnx, beside it."""
    return float_path.with_name(f"{float_path.stem}.int8{float_path.suffix}")


def export_int8(
    settings: Int8Settings,
    saved: SavedModel,
    float_path: Path,
    float_info: dict[str, Any],
    datamodule: Any,
    problem: str | None,
    calibration: tuple[np.ndarray, str] | None,
    input_name: str,
) -> dict[str, Any]:
    """Quantize `float_path`, compare the two models, write the int8 sidecar and the model card.
    Returns the quantization section (the float sidecar gets it too)."""
    from classifier.deployment import comparison, quantize

    target = int8_path(float_path)
    reader = quantize.ImageBatches(calibration[0], input_name) if calibration else None
    left_float = quantize.quantize_onnx(float_path, target, settings.mode, reader, settings.method)
    if left_float:
        log.warning(
            "quantize=%s left these operators' weights in float: %s", settings.mode, ", ".join(left_float)
        )
    paths = {"float": float_path, "int8": target}
    section: dict[str, Any] = {
        "mode": settings.mode,
        "method": quantize.describe(settings.mode, settings.method),
        "calibration": (
            {"images": len(calibration[0]), "source": calibration[1], "method": settings.method}
            if calibration
            else None
        ),
        "files": {name: {"file": path.name, "bytes": path.stat().st_size} for name, path in paths.items()},
        "float_weighted_operators": left_float,
    }
    if datamodule is None:
        reason = f"the checkpoint's data cannot be read ({problem})"
        section["comparison"] = {"made": False, "reason": reason}
        log.warning("%s written but not compared with %s: %s", target.name, float_path.name, reason)
    else:
        held_out = comparison.held_out_images(
            datamodule, create_eval_transform(saved.input_spec), settings.eval_images
        )
        compared = comparison.compare_on(
            held_out, paths, input_name, saved.module.temperature, len(saved.class_names)
        )
        section["comparison"] = {"made": True, **compared}
        warning = comparison.top1_drop_warning(compared, settings.max_top1_drop)
        if warning:
            log.warning(warning)
        log.info(
            "%s images of %s: top-1 float %.4f, int8 %.4f; ECE float %.4f, int8 %.4f; top-1 agreement %.4f",
            compared["images"],
            compared["split"],
            compared["float"]["top1"],
            compared["int8"]["top1"],
            compared["float"]["ece"],
            compared["int8"]["ece"],
            compared["top1_agreement"],
        )
    section["max_top1_drop"] = settings.max_top1_drop
    section["speed_cpu"] = comparison.onnx_speed(paths, input_name, saved.input_spec.img_size)
    speed = section["speed_cpu"]
    log.info(
        "onnxruntime on %d threads: float %.3f ms/image at batch 1, %.1f images/s at batch 64;"
        " int8 %.3f ms/image, %.1f images/s (%.2fx)",
        speed["threads"],
        speed["float"]["batch_1_ms_per_image"],
        speed["float"]["batch_64_images_per_s"],
        speed["int8"]["batch_1_ms_per_image"],
        speed["int8"]["batch_64_images_per_s"],
        speed["int8_speedup_batch_64"],
    )
    int8_info = {
        **float_info,
        "file": target.name,
        "precision": "int8",
        "check": _int8_check(section, float_path),
        "quantization": section,
    }
    write_atomically(_json(int8_info), target.with_suffix(".json"))
    write_model_card(float_path.parent, deployment_card(saved, section))
    log.info("int8 model %s and its sidecar %s", target, target.with_suffix(".json"))
    return section


def _int8_check(section: dict[str, Any], float_path: Path) -> dict[str, Any]:
    compared = section["comparison"]
    if not compared["made"]:
        return {"against": float_path.name, "made": False, "reason": compared["reason"]}
    return {
        "against": float_path.name,
        "split": compared["split"],
        "images": compared["images"],
        "top1_agreement": compared["top1_agreement"],
        "max_abs_probability_difference": compared["max_abs_probability_difference"],
    }


def _json(info: dict[str, Any]) -> bytes:
    return (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()


def deployment_card(saved: SavedModel, section: dict[str, Any]) -> dict[str, Any]:
    """The training run's model card (its run dir's model_card.yaml, when there is one) with a
    `deployment` section holding the exported models' figures."""
    card: dict[str, Any] = {}
    checkpoint = Path(saved.path)
    for folder in (checkpoint.parent.parent, checkpoint.parent):  # <run>/checkpoints/best.ckpt
        path = folder / MODEL_CARD_FILE
        if path.is_file():
            try:
                loaded = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
                log.warning(
                    "%s cannot be read (%s): the model card holds only the export's figures", path, exc
                )
                break
            card = dict(loaded) if isinstance(loaded, dict) else {}
            break
    name = (saved.config.get("model") or {}).get("name")
    card.setdefault("model", {"name": name, "checkpoint": saved.path})
    card["deployment"] = section
    return card
