"""Reading image files: which files count as images, and decoding any mode to upright RGB."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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


def iter_image_files(
    folder: Path, tree: Path | None = None, skipped_links: list[tuple[Path, Path]] | None = None
) -> Iterator[Path]:
    """Image files under `folder`, recursively and sorted; hidden folders and non-image files are ignored.

    Symlinked files are read, and so are symlinked folders, except those that lead into `tree` (the
    split folder; default `folder`), into a folder this walk has entered, or to an ancestor of
    either: those would read images again under another class, or loop for ever. Each one skipped is
    appended to `skipped_links` as (link, real target).
    """
    entered = [os.path.realpath(tree or folder), os.path.realpath(folder)]
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [
            name
            for name in sorted(dirnames)
            if not is_ignored(name) and _may_enter(dirpath, name, entered, skipped_links)
        ]
        yield from (Path(dirpath, f) for f in sorted(filenames) if is_image_file(f))


def _may_enter(dirpath: str, name: str, entered: list[str], skipped_links: list | None) -> bool:
    path = os.path.join(dirpath, name)
    if not os.path.islink(path):
        return True
    target = os.path.realpath(path)
    if any(_nested(target, folder) for folder in entered):
        if skipped_links is not None:
            # Where the link really is: the path walked to it may run through other links.
            skipped_links.append((Path(os.path.realpath(dirpath), name), Path(target)))
        return False
    entered.append(target)
    return True


def _nested(a: str, b: str) -> bool:
    """Whether real paths `a` and `b` are the same folder or one lies inside the other."""
    return os.path.commonpath([a, b]) in (a, b)


def has_image_files(folder: Path, tree: Path | None = None) -> bool:
    return next(iter_image_files(folder, tree), None) is not None


@contextmanager
def quiet_decompression_bomb_warnings() -> Iterator[None]:
    """Silence PIL's DecompressionBombWarning, which names no file; verify.check_images names each
    large image instead. Warning filters are process-wide and catch_warnings is not thread-safe:
    enter this in the thread that starts any decoding threads, around all of them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def exceeds_pixel_warning_limit(size: tuple[int, int]) -> bool:
    """Whether PIL warns about an image of `size` as a possible decompression bomb (it refuses twice
    that). Read at each call: users and tests may change Image.MAX_IMAGE_PIXELS."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and size[0] * size[1] > limit


def image_sides(paths: Iterable[Path]) -> dict[Path, int]:
    """The longest side of each readable image of `paths`, from file headers only. Unreadable files,
    decompression bombs included, are left out: they are reported when their split is checked."""
    sides = {}
    with quiet_decompression_bomb_warnings():
        for path in paths:
            try:
                with Image.open(path) as img:
                    sides[path] = max(img.size)
            except Exception:  # PIL raises many types for corrupt data; all mean "unreadable"
                continue
    return sides


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
    """(RGB image, label) pairs read from files; `targets` lists the labels without reading any file.

    `large` holds the files already reported as over PIL's pixel warning limit: only those are read
    with its anonymous warning silenced, because every catch_warnings resets Python's record of
    warnings already shown, so wrapping every read would repeat other warnings at each step.
    """

    def __init__(self, samples: Iterable[tuple[str | Path, int]], large: Iterable[str | Path] = ()):
        self.samples = [(str(path), int(label)) for path, label in samples]
        self.targets = [label for _, label in self.samples]
        self.large = frozenset(map(str, large))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            if path in self.large:
                with quiet_decompression_bomb_warnings():
                    return load_rgb(path), label
            return load_rgb(path), label
        except Exception as exc:
            raise UserError(f"cannot read image {path}: {exc}") from exc
