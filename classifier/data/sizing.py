"""The input side a folder or CSV of images trains at when data.img_size is not set."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from classifier.data.images import image_sides
from classifier.data.transforms import MIN_SIDE, PHOTO_SIDE, native_side
from classifier.errors import UserError

log = logging.getLogger(__name__)

# Headers read to judge the typical image: enough for a stable median, cheap on any file system.
SAMPLE_SIZE = 64
T = TypeVar("T")


def spread_sample(items: Sequence[T], count: int = SAMPLE_SIZE) -> list[T]:
    """Up to `count` items at even steps across `items`: files are sorted by class, so the first
    few would all be of one class."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def infer_input_side(paths: Sequence[Path], source: str, relative_to: Path) -> int:
    """The input side for images `paths`, judged from the median longest side of a spread sample:
    that side up to 64 px (trained with pad-and-crop), else 224. One odd image does not decide it.

    Args:
        paths: the image files, or an even spread of them (a sample of a sample is the same sample).
        source: where they are, to finish "images ..." in messages: "in /x/train", "listed in l.csv".
        relative_to: example files in messages are shown relative to this folder.

    Raises:
        UserError: the typical image is smaller than MIN_SIDE pixels.
    """
    sides = image_sides(spread_sample(paths))
    if not sides:
        log.info("input side %d px: no readable image among those sampled %s", PHOTO_SIDE, source)
        return PHOTO_SIDE
    # median_low: the side of an actual image, not the mean of two.
    typical = statistics.median_low(sides.values())
    if typical < MIN_SIDE:
        tiny = [_shown(path, relative_to) for path, side in sides.items() if side < MIN_SIDE][:3]
        raise UserError(
            f"images {source} are too small to classify (median side {typical} px, e.g. {', '.join(tiny)}):"
            f" use images of at least {MIN_SIDE} px, or set data.img_size to upscale them"
        )
    side = native_side(typical)
    log.info(
        "input side %d px: median image side %d px over %d sampled images %s (data.img_size overrides)",
        side,
        typical,
        len(sides),
        source,
    )
    return side


def _shown(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
