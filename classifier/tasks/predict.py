"""predict.py: class predictions for image files, folders or globs, from a train.py checkpoint or from
a timm model with ImageNet weights; CSV or JSON out, optional TTA and Grad-CAM overlays, and the
answer on the console (one image's top-k, or the first rows of many)."""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.models import get_pretrained_cfg
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from classifier.config_values import to_flag, to_number
from classifier.data.images import is_ignored, is_image_file, iter_image_files, load_rgb
from classifier.data.loaders import default_num_workers
from classifier.data.transforms import InputSpec, create_eval_transform
from classifier.engine.build import uses_pretrained_weights
from classifier.engine.devices import inference_device
from classifier.engine.from_checkpoint import load_model
from classifier.engine.module import ClassifierModule
from classifier.errors import UserError, first_line_of
from classifier.evaluation.tta import TestTimeAugmentation
from classifier.files import expand_path, write_atomically
from classifier.models import check_model_name, create_model, pretrained_input
from classifier.models.weights import load_local_weights
from classifier.run.trackers import attach_results

log = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.csv"
GRADCAM_DIR = "gradcam"
OUTPUT_FORMATS = (".csv", ".json")
# How each format's files begin as _write_predictions writes them: such a file may be replaced
# (re-running the same command), any other file only with overwrite=true.
PREDICTIONS_START = {".csv": b"path,label,prob", ".json": b'{\n  "predictions": ['}
PREVIEW_ROWS = 10  # images listed on the console; the file has them all
PREVIEW_PATH_CHARS, PREVIEW_LABEL_CHARS = 50, 30


@dataclass
class Predictor:
    """A model ready to predict: `module` maps normalised images to logits."""

    module: ClassifierModule
    class_names: list[str]
    input_spec: InputSpec
    flips: bool  # whether TTA may mirror (the model trained on mirrored images)
    source: str  # the checkpoint, or the timm weights
    trackers: dict[str, dict[str, str]] = field(default_factory=dict)  # the checkpoint's tracker runs


# -- inputs ---------------------------------------------------------------------------------------------
def find_images(pattern: str) -> list[Path]:
    """The image files `pattern` names: a file, a folder (its images, recursively, hidden folders and
    non-image files ignored), or a glob (`**` reaches into subfolders), in sorted order.

    Raises:
        UserError: nothing exists there, or it holds no image file.
    """
    if not str(pattern).strip():
        raise UserError("input= is empty: give an image file, a folder or a glob, e.g. input=photos/")
    path = expand_path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = list(iter_image_files(path))
        if not found:
            raise UserError(f"input={pattern}: {path} holds no image files")
        return found
    if not any(char in str(path) for char in "*?["):  # not a glob: a path that is not there
        raise UserError(f"input={pattern} does not exist (looked for {path.resolve()})")
    matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
    images = [m for m in matches if m.is_file() and is_image_file(m) and not _in_hidden_folder(m)]
    if not images:
        raise UserError(f"input={pattern} matches no image files (looked for {path.resolve()})")
    return images


def _in_hidden_folder(path: Path) -> bool:
    return any(is_ignored(part) for part in path.parts[:-1] if part not in (".", ".."))


class ImageFiles(Dataset):
    """(image tensor or None, index, error or None) per file: an unreadable file is reported, not fatal."""

    def __init__(self, paths: list[Path], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            return self.transform(load_rgb(self.paths[index])), index, None
        except Exception as exc:  # PIL raises many types for corrupt data; all mean "unreadable"
            return None, index, first_line_of(exc)


def collate_readable(items):
    """A batch of the readable images, their indices, and (index, reason) of the unreadable ones."""
    readable = [(image, index) for image, index, error in items if error is None]
    failed = [(index, error) for _, index, error in items if error is not None]
    images = torch.stack([image for image, _ in readable]) if readable else None
    return images, [index for _, index in readable], failed


# -- the model ------------------------------------------------------------------------------------------
def predictor_from_config(cfg: DictConfig) -> Predictor:
    """From ckpt_path (a train.py checkpoint), else from a timm model with ImageNet weights."""
    if cfg.get("ckpt_path"):
        saved = load_model(str(cfg.ckpt_path))
        flips = saved.trains_with_flips
        return Predictor(saved.module, saved.class_names, saved.input_spec, flips, saved.path, saved.trackers)
    model_cfg = cfg.get("model")
    if model_cfg is None or not uses_pretrained_weights(model_cfg):
        raise UserError(
            "predict.py needs ckpt_path=PATH (a train.py checkpoint), or a timm model with ImageNet weights:"
            " model=resnet50 model.pretrained=true, or model=resnet50 model.weights=PATH"
        )
    return imagenet_predictor(model_cfg)


def imagenet_predictor(model_cfg: DictConfig) -> Predictor:
    """A timm model with weights trained on ImageNet (hub or local file), its classes named as timm
    names them (`ImageNetInfo`), fed as timm resolves its weights' input.

    Raises:
        UserError: a model timm has no pretrained config for, weights whose head is not of the
            ImageNet classes its tag says, or an unknown ImageNet label set.
    """
    name = str(model_cfg.name)
    check_model_name(name)  # also checks the weights' tag
    spec, pretrained = pretrained_input(name), get_pretrained_cfg(name)
    if spec is None or pretrained is None or not pretrained.num_classes:
        raise UserError(f"model.name={name}: timm has no ImageNet weights for it, so no class names")
    options = OmegaConf.to_container(model_cfg, resolve=True)
    for key in ("_target_", "num_classes", "weights"):
        options.pop(key, None)
    net = create_model(**options, num_classes=pretrained.num_classes, img_size=spec["img_size"])
    if model_cfg.get("weights") and load_local_weights(net, str(model_cfg.weights)):
        raise UserError(
            f"model.weights={model_cfg.weights} has a classification head of another size than"
            f" {name}'s {pretrained.num_classes} ImageNet classes: for your own classes use ckpt_path="
        )
    subset = infer_imagenet_subset(net)
    info = ImageNetInfo(subset) if subset else None
    if info is None or info.num_classes() != pretrained.num_classes:
        raise UserError(f"model.name={name}: its {pretrained.num_classes} outputs are no ImageNet label set")
    class_names = [info.index_to_description(i) for i in range(info.num_classes())]
    module = ClassifierModule(net, class_names)
    source = str(model_cfg.weights) if model_cfg.get("weights") else f"timm hub weights {name}"
    return Predictor(module, class_names, InputSpec(**spec), True, source)


# -- the task -------------------------------------------------------------------------------------------
def _output_path(cfg: DictConfig) -> tuple[Path, str | None]:
    """Where the predictions go, and why an existing file there may be replaced (None: no file)."""
    output = cfg.get("output")
    path = expand_path(output) if output else Path(cfg.paths.output_dir) / PREDICTIONS_FILE
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(f"output={output}: use a .csv or .json file name")
    if path.is_dir():
        raise UserError(f"output={output}: {path.resolve()} is a folder; give a .csv or .json file name")
    return path, _replacing(path, f"output={output}", to_flag(cfg.get("overwrite"), "overwrite"))


def _replacing(path: Path, key: str, overwrite: bool) -> str | None:
    """Re-running a command replaces the predictions it wrote before; a file that is not predict.py's
    (a data CSV given as output= by mistake) is replaced only with overwrite=true. Returns why the
    file there may be replaced, or None when there is none.

    Raises:
        UserError: `path` holds something else and `overwrite` is false.
    """
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        start = f.read(64)
    if not start or start.startswith(PREDICTIONS_START[path.suffix.lower()]):
        return "predictions written before"
    if overwrite:
        return "overwrite=true"
    raise UserError(
        f"{key}: {path.resolve()} exists and is not a predictions file of predict.py;"
        " give another file name, or overwrite=true to replace it"
    )


def predict(cfg: DictConfig) -> dict[str, float]:
    """Predict every image `cfg.input` names and write one row per image to `cfg.output` (CSV or
    JSON); Grad-CAM overlays into <run dir>/gradcam/ with gradcam=true. Returns {} (no metrics)."""
    top_k = to_number(cfg.get("top_k", 5), "top_k", int)
    if top_k < 1:
        raise UserError(f"top_k={top_k} must be at least 1")
    batch_size = to_number(cfg.get("batch_size", 64), "batch_size", int)
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size} must be at least 1")
    tta, gradcam = to_flag(cfg.get("tta"), "tta"), to_flag(cfg.get("gradcam"), "gradcam")
    output, replacing = _output_path(cfg)
    paths = find_images(str(cfg.input))
    predictor = predictor_from_config(cfg)
    device = inference_device(str(cfg.get("device", "auto")))
    top_k = min(top_k, len(predictor.class_names))
    module = predictor.module.to(device).eval()
    if tta:
        module.tta = TestTimeAugmentation(predictor.input_spec.img_size, flip=predictor.flips)
    gradcam_dir = Path(cfg.paths.output_dir) / GRADCAM_DIR if gradcam else None
    if gradcam_dir is not None:
        from classifier.evaluation.gradcam import _require_grad_cam

        _require_grad_cam()  # before any image is read: a missing package is a one-line error
    workers = cfg.get("num_workers")
    workers = default_num_workers() if workers is None else to_number(workers, "num_workers", int)
    loader = DataLoader(
        ImageFiles(paths, create_eval_transform(predictor.input_spec)),
        batch_size=batch_size,
        num_workers=min(workers, len(paths)),
        collate_fn=collate_readable,
    )
    rows, failures = _predict_files(loader, predictor, module, top_k, gradcam_dir)
    if replacing:
        log.warning("replacing %s (%s)", output, replacing)
    _write_predictions(output, rows, failures, top_k)
    log.info(
        "%d images predicted, %d unreadable; %s (model: %s, temperature %.4g%s)",
        len(rows),
        len(failures),
        output,
        predictor.source,
        module.temperature,
        ", TTA" if module.tta is not None else "",
    )
    for path, error in failures:
        log.warning("unreadable image %s: %s", path, error)
    print(console_preview(rows, output, len(paths), len(predictor.class_names)), flush=True)
    if cfg.get("attach_to_training_run", True):
        run_dir = Path(cfg.paths.output_dir)
        attach_results(predictor.trackers.get("mlflow"), run_dir, "predict", files=[output])
    return {}


def _predict_files(
    loader: DataLoader, predictor: Predictor, module: ClassifierModule, top_k: int, gradcam_dir: Path | None
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """One row per readable image of the loader's files, and (path, reason) per unreadable one."""
    paths = loader.dataset.paths
    rows: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    for images, indices, failed in tqdm(loader, desc="predict", unit="batch", disable=None):
        failures += [(str(paths[i]), error) for i, error in failed]
        if images is None:
            continue
        images = images.to(module.device)
        with torch.inference_mode():
            probabilities, _ = module.predict_probabilities(images)
        probs, classes = probabilities.float().topk(top_k, dim=1)
        probs, classes = probs.tolist(), classes.tolist()
        overlays = _gradcam_overlays(predictor, module, images, classes, probs, indices, paths, gradcam_dir)
        for row, (index, p, c) in enumerate(zip(indices, probs, classes, strict=True)):
            entry = {
                "path": str(paths[index]),
                "label": predictor.class_names[c[0]],
                "prob": p[0],
                "top_k": [{"label": predictor.class_names[k], "prob": v} for k, v in zip(c, p, strict=True)],
            }
            if overlays:
                entry["gradcam"] = str(overlays[row])
            rows.append(entry)
    return rows, failures


def _gradcam_overlays(predictor, module, images, classes, probs, indices, paths, folder) -> list[Path]:
    """Grad-CAM of each image's predicted class beside the image file, under the label and its
    probability, written to `folder` as <index>_<name>.png; [] without a folder."""
    if folder is None:
        return []
    from classifier.evaluation.gradcam import gradcam_figure, gradcam_maps
    from classifier.evaluation.reports import save_figure

    with torch.inference_mode(False):
        cams = gradcam_maps(module, module.net, images.clone(), [c[0] for c in classes])
    written = []
    for cam, index, c, p in zip(cams, indices, classes, probs, strict=True):
        label = predictor.class_names[c[0]]
        figure = gradcam_figure(load_rgb(paths[index]), cam, predictor.input_spec, label, p[0])
        destination = folder / f"{index:05d}_{paths[index].stem}.png"
        save_figure(figure, destination)
        written.append(destination)
    return written


def _write_predictions(output: Path, rows: list[dict], failures: list[tuple[str, str]], top_k: int) -> None:
    if output.suffix.lower() == ".json":
        content = {"predictions": rows, "unreadable": [{"path": p, "error": e} for p, e in failures]}
        write_atomically((json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode(), output)
        return
    columns = ["path", "label", "prob"]
    for i in range(1, top_k + 1):
        columns += [f"top{i}_label", f"top{i}_prob"]
    with_gradcam = any("gradcam" in row for row in rows)
    columns += (["gradcam"] if with_gradcam else []) + ["error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        flat = {"path": row["path"], "label": row["label"], "prob": f"{row['prob']:.6f}"}
        for i, top in enumerate(row["top_k"], start=1):
            flat[f"top{i}_label"], flat[f"top{i}_prob"] = top["label"], f"{top['prob']:.6f}"
        if with_gradcam:
            flat["gradcam"] = row.get("gradcam", "")
        writer.writerow(flat)
    for path, error in failures:
        writer.writerow({"path": path, "error": error})
    write_atomically(buffer.getvalue().encode(), output)


# -- the console ----------------------------------------------------------------------------------------
def console_preview(rows: list[dict[str, Any]], output: Path, images: int, classes: int) -> str:
    """What a person reads after predict.py: one image's top-k classes, or the first PREVIEW_ROWS
    images' labels and how many more there are; then where all of them are."""
    if images == 1 and rows:
        (row,) = rows
        lines = [f"{_shown_path(row['path'])}: top {len(row['top_k'])} of {classes} classes"]
        ranked = [[str(rank), *_label_and_prob(top)] for rank, top in enumerate(row["top_k"], start=1)]
        lines += _aligned(["#", "class", "prob"], ranked, right=[True, False, True])
        return "\n".join([*lines, f"written to {output}"])
    shown = [[_shown_path(row["path"]), *_label_and_prob(row)] for row in rows[:PREVIEW_ROWS]]
    lines = _aligned(["path", "label", "prob"], shown, right=[False, False, True]) if shown else []
    more = len(rows) - len(shown)
    lines.append(f"... {more} more, all in {output}" if more else f"written to {output}")
    return "\n".join(lines)


def _aligned(header: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(padded).rstrip()

    return [line(header), *(line(row) for row in rows)]


def _shown_path(path: str) -> str:
    """`path` relative to the working folder when it is inside it, its end when it is long."""
    relative = os.path.relpath(path)
    shown = path if relative.startswith("..") else relative
    return shown if len(shown) <= PREVIEW_PATH_CHARS else "…" + shown[-(PREVIEW_PATH_CHARS - 1) :]


def _label_and_prob(entry: dict[str, Any]) -> list[str]:
    label = entry["label"]
    if len(label) > PREVIEW_LABEL_CHARS:
        label = label[: PREVIEW_LABEL_CHARS - 1] + "…"
    return [label, f"{entry['prob']:.4f}"]
