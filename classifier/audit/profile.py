"""The dataset profile: what a dataset holds before anything trains on it.

Per split: images, images per class, the imbalance ratio (largest class / smallest non-empty one),
width, height and aspect ratio (width / height) as min, median, max and counts in the buckets below,
PIL modes with four flags that change what training sees (grayscale, alpha, CMYK, more than 8 bits
per sample); and, over all splits, the files that cannot be read, the tiny ones and the extreme ones.
Everything returned is plain lists, dicts, strings and numbers, ready for json.dumps.

Speed: sizes, modes and the EXIF orientation come from each file's header (Image.open reads those
without decoding any pixel). Only the check for broken files decodes, and it is verify.check_images,
the same check training runs: JPEGs at reduced scale, in parallel, and with a cache key the files found
readable before are only stat()ed.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageMode

from classifier.data.images import quiet_decompression_bomb_warnings
from classifier.data.verify import check_images

# A shorter side below this many pixels is "tiny": upscaled to the model's input it is mostly blur.
TINY_SIDE = 16
# Width / height above this, or below its inverse, is "extreme": a square centre crop loses most of it.
EXTREME_ASPECT = 4.0
# Shorter-side buckets: "<16", "16-31", ..., "512-1023", ">=1024" (lower edge included).
SIDE_EDGES = (16, 32, 64, 128, 256, 512, 1024)
# Aspect buckets (width / height); the outer two are exactly the extreme images.
ASPECT_BUCKETS = (
    ("tall (<1/4)", lambda a: a < 1 / EXTREME_ASPECT),
    ("portrait [1/4, 3/4)", lambda a: 1 / EXTREME_ASPECT <= a < 3 / 4),
    ("square [3/4, 4/3]", lambda a: 3 / 4 <= a <= 4 / 3),
    ("landscape (4/3, 4]", lambda a: 4 / 3 < a <= EXTREME_ASPECT),
    ("wide (>4)", lambda a: a > EXTREME_ASPECT),
)
# EXIF orientations that turn the image by 90 degrees: training sees it upright (load_rgb), so the
# profile swaps width and height as well.
QUARTER_TURNS = frozenset({5, 6, 7, 8})
EXIF_ORIENTATION = 0x0112
FLAGS = ("grayscale", "alpha", "cmyk", "16-bit")


def side_bucket(side: int) -> str:
    """The SIDE_EDGES bucket of a shorter side in pixels."""
    if side < SIDE_EDGES[0]:
        return f"<{SIDE_EDGES[0]}"
    for low, high in zip(SIDE_EDGES, SIDE_EDGES[1:], strict=False):
        if side < high:
            return f"{low}-{high - 1}"
    return f">={SIDE_EDGES[-1]}"


def aspect_bucket(aspect: float) -> str:
    """The ASPECT_BUCKETS bucket of a width / height ratio."""
    return next(name for name, holds in ASPECT_BUCKETS if holds(aspect))


def mode_flags(mode: str, info: Mapping[str, Any]) -> list[str]:
    """Which of FLAGS an image of PIL mode `mode` (and header `info`) raises. Grayscale: one
    luminance band (1, L, LA, I;16, I, F). Alpha: an alpha band, or a transparency entry in the header
    (a palette or RGB PNG's tRNS). 16-bit: more than 8 bits per sample (I;16*, and the 32-bit I and F),
    which conversion to 8-bit RGB clips or rescales."""
    described = ImageMode.getmode(mode)
    flags = []
    if described.basemode == "L":
        flags.append("grayscale")
    if "A" in mode or "a" in mode or "transparency" in info:
        flags.append("alpha")
    if mode == "CMYK":
        flags.append("cmyk")
    if int(described.typestr[2:]) > 1:
        flags.append("16-bit")
    return flags


Header = tuple[int, int, str, list[str]]  # width, height, mode, mode_flags


def read_header(path: str) -> Header:
    """(width, height, mode, mode flags) of an image as training sees it (after its EXIF
    orientation), from the header alone."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(EXIF_ORIENTATION) in QUARTER_TURNS:
            width, height = height, width
        return width, height, img.mode, mode_flags(img.mode, img.info)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """min, median and max of `values` (None each when there are none)."""
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def imbalance_ratio(per_class: Mapping[str, int]) -> float | None:
    """Largest class / smallest non-empty class; None without any image."""
    counts = [count for count in per_class.values() if count > 0]
    return max(counts) / min(counts) if counts else None


def _split_profile(
    samples: Sequence[tuple[str, int]],
    class_names: Sequence[str],
    headers: Mapping[str, Header],
    broken: set[str],
) -> dict[str, Any]:
    labels = Counter(label for _, label in samples)
    per_class = {name: labels.get(index, 0) for index, name in enumerate(class_names)}
    readable = [headers[path] for path, _ in samples if path not in broken]
    widths = [width for width, _, _, _ in readable]
    heights = [height for _, height, _, _ in readable]
    aspects = [width / height for width, height, _, _ in readable]
    flags = Counter(flag for _, _, _, image_flags in readable for flag in image_flags)
    return {
        "images": len(samples),
        "readable": len(readable),
        "per_class": per_class,
        "empty_classes": [name for name, count in per_class.items() if count == 0],
        "imbalance_ratio": imbalance_ratio(per_class),
        "width": summary(widths),
        "height": summary(heights),
        "aspect": summary(aspects),
        "shorter_side_buckets": _bucket_counts(
            [side_bucket(min(w, h)) for w, h in zip(widths, heights, strict=True)], _side_bucket_names()
        ),
        "aspect_buckets": _bucket_counts([aspect_bucket(a) for a in aspects], [n for n, _ in ASPECT_BUCKETS]),
        "modes": dict(sorted(Counter(mode for _, _, mode, _ in readable).items())),
        "flags": {flag: flags.get(flag, 0) for flag in FLAGS},
    }


def _side_bucket_names() -> list[str]:
    return [side_bucket(0), *(side_bucket(edge) for edge in SIDE_EDGES)]


def _bucket_counts(found: Sequence[str], names: Sequence[str]) -> dict[str, int]:
    counts = Counter(found)
    return {name: counts.get(name, 0) for name in names}


def profile_dataset(
    splits: Mapping[str, Sequence[tuple[str | Path, int]]],
    class_names: Sequence[str],
    cache_key: str | None = None,
) -> dict[str, Any]:
    """The profile of a dataset, as a JSON-able dict.

    Args:
        splits: per split name ("train", "val", "test"), its (image path, label index) pairs.
        class_names: the class of each label index.
        cache_key: passed to verify.check_images: names the data so that files found readable
            before are not decoded again. None: decode every file.

    Returns:
        {"classes": [...], "splits": {name: per-split profile}, "broken": [{"split", "path",
        "reason"}], "tiny": [{"split", "path", "width", "height"}], "extreme": [{"split", "path",
        "width", "height", "aspect"}]}, lists in the splits' and files' order. A per-split profile
        has images (listed), readable, per_class, empty_classes, imbalance_ratio, width, height and
        aspect ({min, median, max}), shorter_side_buckets, aspect_buckets, modes and flags (FLAGS);
        everything but images and per_class counts readable files only.
    """
    listed = {name: [(str(path), int(label)) for path, label in samples] for name, samples in splits.items()}
    for name, samples in listed.items():
        wrong = [label for _, label in samples if not 0 <= label < len(class_names)]
        if wrong:  # the data module built these labels: a bug, not the user's mistake
            raise ValueError(f"split {name!r} has label {wrong[0]} outside 0..{len(class_names) - 1}")
    paths = list(dict.fromkeys(path for samples in listed.values() for path, _ in samples))
    reasons = {str(path): reason for path, reason in check_images(paths, cache_key=cache_key).unreadable}
    headers: dict[str, Header] = {}
    with quiet_decompression_bomb_warnings():  # check_images names the large ones
        for path in paths:
            if path in reasons:
                continue
            try:
                headers[path] = read_header(path)
            except Exception as exc:  # changed since it was checked: as unreadable as any other
                reasons[path] = f"{type(exc).__name__}: {exc}"
    return _profile(listed, class_names, headers, reasons)


def profile_images(
    splits: Mapping[str, Sequence[tuple[str, int]]],
    class_names: Sequence[str],
    load: Callable[[str], Image.Image],
) -> dict[str, Any]:
    """profile_dataset of data held in memory: `load(name)` gives each listed image (decoded, so
    none is broken), its size and mode read from the image itself."""
    listed = {name: [(str(path), int(label)) for path, label in samples] for name, samples in splits.items()}
    headers: dict[str, Header] = {}
    for samples in listed.values():
        for path, _ in samples:
            if path not in headers:
                img = load(path)
                headers[path] = (img.width, img.height, img.mode, mode_flags(img.mode, img.info))
    return _profile(listed, class_names, headers, {})


def _profile(
    listed: Mapping[str, Sequence[tuple[str, int]]],
    class_names: Sequence[str],
    headers: Mapping[str, Header],
    reasons: Mapping[str, str],
) -> dict[str, Any]:
    broken = set(reasons)
    profile: dict[str, Any] = {
        "classes": list(class_names),
        "splits": {},
        "broken": [],
        "tiny": [],
        "extreme": [],
    }
    for name, samples in listed.items():
        profile["splits"][name] = _split_profile(samples, class_names, headers, broken)
        for path, _ in samples:
            if path in broken:
                profile["broken"].append({"split": name, "path": path, "reason": reasons[path]})
                continue
            width, height, _, _ = headers[path]
            if min(width, height) < TINY_SIDE:
                profile["tiny"].append({"split": name, "path": path, "width": width, "height": height})
            aspect = width / height
            if aspect > EXTREME_ASPECT or aspect < 1 / EXTREME_ASPECT:
                profile["extreme"].append(
                    {"split": name, "path": path, "width": width, "height": height, "aspect": aspect}
                )
    return profile
