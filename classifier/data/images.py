"""Reading image files: which files count as images, and decoding any mode to upright RGB."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from classifier.errors import UserError

# What PIL decodes out of the box; anything else in a class folder is ignored.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".bmp",
    ".gif",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)
# Folders that unzipping or tooling leaves beside the data (macOS resource forks, caches).
JUNK_FOLDERS = {"__MACOSX", "__pycache__"}


def is_ignored(name: str) -> bool:
    """Hidden files and folders (.ipynb_checkpoints, .DS_Store, ._x.jpg) and JUNK_FOLDERS."""
    return name.startswith(".") or name in JUNK_FOLDERS


def is_image_file(path: str | Path) -> bool:
    name = os.path.basename(path)
    return not is_ignored(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def iter_image_files(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, recursively and sorted; hidden folders and non-image files are ignored."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
        yield from (Path(dirpath, f) for f in sorted(filenames) if is_image_file(f))


def has_image_files(folder: Path) -> bool:
    return next(iter_image_files(folder), None) is not None


def largest_side(paths: Iterable[str | Path]) -> int | None:
    """The longest image side among `paths`, read from file headers only (unreadable files skipped)."""
    sides = []
    for path in paths:
        try:
            with Image.open(path) as img:
                sides.append(max(img.size))
        except Exception:  # broken files are reported when the split is read
            continue
    return max(sides, default=None)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: transparency over white, 16-bit and float rescaled rather than clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(img))).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    if values.max() > 255:  # 16-bit data: keep its full range instead of clipping everything to white
        values = values / (65535.0 if values.max() <= 65535 else values.max()) * 255.0
    elif values.dtype.kind == "f" and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(values, 0, 255).astype(np.uint8)


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file as RGB, upright according to its EXIF orientation."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
        return to_rgb(img)


class ImageFileDataset(torch.utils.data.Dataset):
    """(RGB image, label) pairs read from files; `targets` lists the labels without reading any file."""

    def __init__(self, samples: Iterable[tuple[str | Path, int]]):
        self.samples = [(str(path), int(label)) for path, label in samples]
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            return load_rgb(path), label
        except Exception as exc:
            raise UserError(f"cannot read image {path}: {exc}") from exc
