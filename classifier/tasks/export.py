"""export.py: a checkpoint's network as ONNX or TorchScript, its preprocessing in a sidecar JSON, and
its outputs checked against the checkpoint's on real images before the file is kept."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from classifier.config_values import to_number
from classifier.data import ClassificationDataModule
from classifier.data.images import load_rgb
from classifier.data.transforms import create_eval_transform
from classifier.deployment.int8 import Int8Settings, calibration_set, export_int8, readable_data
from classifier.engine.from_checkpoint import SavedModel, load_model, saved_datamodule
from classifier.errors import UserError
from classifier.extras import import_for
from classifier.files import current_umask, expand_path, write_atomically

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export(cfg: DictConfig) -> dict[str, float]:
    """Export cfg.ckpt_path's network in cfg.format; the file and its sidecar JSON are written only
    when the exported model's logits match the checkpoint's within cfg.tolerance on real inputs.
    Returns {} (no metrics)."""
    fmt = str(cfg.get("format", "onnx")).lower()
    if fmt not in FORMATS:
        raise UserError(f"format={cfg.get('format')!r} is not one of {', '.join(FORMATS)}")
    tolerance = to_number(cfg.get("tolerance", 1e-4), "tolerance")
    count = to_number(cfg.get("check_images", 16), "check_images", int)
    if count < 2:
        raise UserError(f"check_images={count} must be 2 or more (the batch size is exported as variable)")
    int8 = Int8Settings.from_config(cfg, fmt)
    output = _output_path(cfg, fmt)
    saved = load_model(str(cfg.ckpt_path))
    net = saved.module.net.cpu().eval()
    datamodule, problem, calibration = None, None, None
    if int8:
        import_for(f"quantize={int8.mode}", "export", "onnxruntime")
        datamodule, problem = readable_data(saved)
        if int8.mode == "int8":  # before anything is written: no calibration images, no export
            calibration = calibration_set(int8, saved, datamodule, problem)
    inputs, described = check_inputs(cfg, saved, count, datamodule)
    with torch.inference_mode():
        expected = net(inputs)
    if fmt == "onnx":
        produced, runtime = _export_onnx(net, inputs, output, cfg.get("opset"))
    else:
        produced, runtime = _export_torchscript(net, inputs, output)
    difference = float((produced - expected).abs().max()) if produced is not None else None
    if difference is not None and not difference <= tolerance:  # NaN fails too
        output.unlink(missing_ok=True)
        raise UserError(
            f"export check failed: the {fmt} model's logits differ from the checkpoint's by up to"
            f" {difference:.3g} (tolerance={tolerance}) on {described}; nothing written"
        )
    sidecar = output.with_suffix(".json")
    info = sidecar_content(saved, fmt, output, runtime, difference, tolerance, described, len(inputs))
    write_atomically((json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode(), sidecar)
    if int8:
        info["quantization"] = export_int8(
            int8, saved, output, info, datamodule, problem, calibration, INPUT_NAME
        )
        write_atomically((json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode(), sidecar)
    if difference is None:
        log.warning(
            "onnxruntime is not installed: %s passed onnx.checker, its outputs were not compared", output
        )
    else:
        log.info(
            "max abs difference of the logits on %s: %.3g (tolerance %g)", described, difference, tolerance
        )
    log.info("exported %s and its preprocessing %s", output, sidecar)
    return {}


def _output_path(cfg: DictConfig, fmt: str) -> Path:
    suffix = FORMATS[fmt]
    if cfg.get("output"):
        path = expand_path(cfg.output)
        if path.suffix.lower() != suffix:
            raise UserError(f"output={cfg.output}: a {fmt} file name ends in {suffix}")
        return path
    return Path(cfg.paths.output_dir) / f"model{suffix}"


def check_inputs(
    cfg: DictConfig, saved: SavedModel, count: int, datamodule: ClassificationDataModule | None = None
) -> tuple[torch.Tensor, str]:
    """Up to `count` real images, eval-transformed: check_input's files when given, else the
    checkpoint's own val images (from `datamodule` when already read); random inputs (with a warning)
    when neither can be read."""
    transform = create_eval_transform(saved.input_spec)
    if cfg.get("check_input"):
        from classifier.tasks.predict import find_images

        paths = find_images(str(cfg.check_input))[:count]
        images = [transform(load_rgb(path)) for path in paths]
        if len(images) == 1:  # a batch of one would not show that the batch size varies
            images = images * 2
        return torch.stack(images), f"{len(paths)} images of check_input={cfg.check_input}"
    try:
        val = (datamodule or saved_datamodule(saved)).dataset("val")
    except UserError as exc:
        log.warning("the checkpoint's data cannot be read (%s): checking on random inputs", exc)
        side = saved.input_spec.img_size
        return torch.randn(count, 3, side, side, generator=torch.Generator().manual_seed(0)), "random inputs"
    picked = np.linspace(0, len(val) - 1, num=min(count, len(val)), dtype=int)
    images = [transform(val[int(i)][0]) for i in picked]
    images = images * 2 if len(images) == 1 else images
    return torch.stack(images), f"{len(images)} val images of the checkpoint's data"


def _export_onnx(
    net: nn.Module, inputs: torch.Tensor, output: Path, opset
) -> tuple[torch.Tensor | None, str]:
    """torch.onnx's exporter (torch.export based) with a variable batch size, checked with onnx's
    checker; the logits onnxruntime computes for `inputs` (None when it is not installed)."""
    onnx = import_for("format=onnx", "export", "onnx")
    import_for("format=onnx", "export", "onnxscript")  # torch.onnx's exporter needs it

    batch = torch.export.Dim("batch", min=1)
    options = {"opset_version": int(opset)} if opset is not None else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own progress and deprecation chatter
            program = torch.onnx.export(
                net,
                (inputs[:2],),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                verbose=False,
                **options,
            )
    except Exception as exc:  # the exporter raises its own error types, many lines long
        reason = _first_line(exc)
        raise UserError(
            f"format=onnx: torch.onnx cannot export {type(net).__name__} ({reason}); a newer onnxscript"
            " may translate it, or use format=torchscript"
        ) from exc
    # Saved under its own name in a private folder beside the output, then moved: a model over 2 GB
    # comes with an external-data file named after it, and both must land together.
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as folder:
        staged = Path(folder) / output.name
        program.save(str(staged))
        onnx.checker.check_model(str(staged))
        produced, runtime = _run_onnx(staged, inputs)
        for path in Path(folder).iterdir():
            os.chmod(path, 0o666 & ~current_umask())
            os.replace(path, output.parent / path.name)
    return produced, runtime


def _first_line(exc: BaseException) -> str:
    """The message's most telling line: the exporter's summary names the operator it cannot translate."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if "No ONNX function found" in line or "Unsupported" in line]
    return (telling or lines or [type(exc).__name__])[0][:300]


def _run_onnx(path: Path, inputs: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    try:
        import onnxruntime
    except ImportError:
        return None, "onnx.checker only (onnxruntime not installed)"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})
    return torch.from_numpy(logits), f"onnxruntime {onnxruntime.__version__}"


def _export_torchscript(net: nn.Module, inputs: torch.Tensor, output: Path) -> tuple[torch.Tensor, str]:
    """torch.jit.trace (PyTorch deprecates TorchScript in favour of torch.export, but it remains
    what C++ libtorch and many serving stacks load); checked by loading the saved bytes back."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.jit.trace is deprecated": asked for by name
        traced = torch.jit.trace(net, inputs[:2], check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        loaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu")
    with torch.inference_mode():
        produced = loaded(inputs)
    write_atomically(buffer.getvalue(), output)
    return produced, f"torch.jit {torch.__version__}"


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def sidecar_content(
    saved: SavedModel,
    fmt: str,
    output: Path,
    runtime: str,
    difference: float | None,
    tolerance: float,
    described: str,
    images: int,
) -> dict[str, Any]:
    """What a program needs to use the exported file: how to turn an image into its input, what
    its output means, the class names, and how it was checked."""
    spec = saved.input_spec
    resized = math.floor(spec.img_size / spec.crop_pct)
    how = {
        "center": f"resize the short side to {resized} px",
        "squash": f"resize to {resized} x {resized} px (aspect ratio not kept)",
        "border": f"resize the long side to {resized} px",
    }[spec.crop_mode]
    return {
        "format": fmt,
        "file": output.name,
        "precision": "float32",
        "checkpoint": saved.path,
        "model": (saved.config.get("model") or {}).get("name"),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, spec.img_size, spec.img_size],
            "dtype": "float32",
            "layout": "NCHW, RGB",
            "preprocessing": (
                f"{how} ({spec.interpolation}), crop the centre {spec.img_size} x {spec.img_size} px"
                " (padding with the mean colour where the image is smaller), scale to [0, 1],"
                " then (x - mean) / std per channel"
            ),
            "img_size": spec.img_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "crop_pct": spec.crop_pct,
            "crop_mode": spec.crop_mode,
            "interpolation": spec.interpolation,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(saved.class_names)],
            "probabilities": "softmax(logits / temperature)",
            "temperature": saved.module.temperature,
        },
        "class_names": saved.class_names,
        "check": {
            "max_abs_difference": difference,
            "tolerance": tolerance,
            "inputs": described,
            "images": images,
            "runtime": runtime,
        },
        "versions": {name: _version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime")},
    }
