"""Finding image files that cannot be decoded, before training trips over them.

Each file is decoded once; files found readable are remembered by size and modification time in
a cache under $XDG_CACHE_HOME (~/.cache)/classifier, so later runs on the same data only stat them.
Files over PIL's pixel warning limit are not remembered, so every run names them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from classifier.console import ProgressLog
from classifier.data.images import (
    ImageFileDataset,
    exceeds_pixel_warning_limit,
    quiet_decompression_bomb_warnings,
)
from classifier.errors import UserError
from classifier.files import cache_home, write_atomically

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")


def _decode(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """(why `path` cannot be decoded, or None when it can; its size in pixels when it can). JPEGs
    decode at reduced scale: it is several times faster and still reads every byte, so truncated
    files are caught."""
    try:
        with Image.open(path) as img:
            size = img.size  # before draft() shrinks it
            img.draft("RGB", (64, 64))
            img.load()
    except Exception as exc:  # PIL raises many types for corrupt data; all mean "unreadable"
        return (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__), None
    return None, size


@dataclass
class ImageCheck:
    """What decoding a list of image files found, each list in the files' order."""

    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)
    # Readable, but over PIL's pixel warning limit: (path, (width, height)).
    large: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)


def _cache_file(key: str) -> Path:
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    return cache_home() / "readable-images" / f"{digest}.json"


def _load_cache(path: Path) -> dict[str, list[int]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# From this many files on, decoding runs in forked processes: PIL's per-file Python work holds the
# GIL: on 2 cores threads check ~4,400 CIFAR-10 JPEGs/s, processes ~13,700.
PROCESS_POOL_FILES = 2000


def _pool(workers: int, files: int) -> Executor:
    if files >= PROCESS_POOL_FILES and workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(max_workers=workers)


def check_images(
    paths: Sequence[Path], cache_key: str | None = None, workers: int | None = None, what: str = "image files"
) -> ImageCheck:
    """Which files of `paths` are missing or cannot be decoded, and which are over PIL's pixel
    warning limit (Image.MAX_IMAGE_PIXELS; PIL refuses twice that, so those are unreadable).

    Args:
        paths: image files.
        cache_key: names the set of files (a folder, a CSV); files that decoded before with the
            same size and mtime are not decoded again. None: no cache.
        workers: decoding threads or processes (_pool); None: one per core, up to 8.
        what: the files, as progress lines name them ("image files in /data/train").
    """
    cache_path = _cache_file(cache_key) if cache_key else None
    known = _load_cache(cache_path) if cache_path else {}
    reasons: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}  # of large images
    signatures: dict[str, list[int]] = {}  # absolute path -> [size, mtime_ns]
    to_decode: list[str] = []
    for path in map(str, paths):
        try:
            stat = os.stat(path)
        except OSError as exc:
            reasons[path] = f"{type(exc).__name__}: {exc.strerror}"
            continue
        key, signature = os.path.abspath(path), [stat.st_size, stat.st_mtime_ns]
        signatures[key] = signature
        if known.get(key) != signature:
            to_decode.append(path)
    if len(to_decode) >= PROCESS_POOL_FILES:
        # seconds to minutes of silence otherwise, on a first run over a large folder
        log.info(
            "checking that %s %s decode (once: later runs look at their sizes and dates)",
            f"{len(to_decode):,}",
            what,
        )
    progress = ProgressLog(log, "checked", what, len(to_decode))
    # Filters are process-wide: set here, around the pool, they cover its threads, and the
    # processes forked from this one.
    with (
        quiet_decompression_bomb_warnings(),
        _pool(workers or min(8, os.cpu_count() or 1), len(to_decode)) as pool,
    ):
        for path, (reason, size) in zip(to_decode, pool.map(_decode, to_decode, chunksize=256), strict=True):
            progress.advance()
            if reason is not None:
                reasons[path] = reason
            elif exceeds_pixel_warning_limit(size):
                sizes[path] = size
    progress.finish()
    if cache_path and to_decode:
        remarked = {os.path.abspath(path) for path in [*reasons, *sizes]}
        readable = {key: signature for key, signature in signatures.items() if key not in remarked}
        try:
            write_atomically(json.dumps(readable).encode(), cache_path)
        except OSError as exc:  # a read-only home only costs the next run the decoding again
            log.debug("could not write %s: %s", cache_path, exc)
    return ImageCheck(
        unreadable=[(path, reasons[str(path)]) for path in paths if str(path) in reasons],
        large=[(path, sizes[str(path)]) for path in paths if str(path) in sizes],
    )


def checked_dataset(samples: list[tuple[Path, int]], policy: str, where: str | Path) -> ImageFileDataset:
    """The readable images of `samples` (found in `where`, a folder or CSV); a warning names each
    file left out as missing or undecodable, and each one read although over PIL's pixel warning
    limit. With policy 'error', unreadable files fail instead, listing all of them."""
    if policy not in BAD_IMAGE_POLICIES:
        raise UserError(f"data.on_bad_image={policy!r} is not one of {', '.join(BAD_IMAGE_POLICIES)}")
    check = check_images(
        [path for path, _ in samples], cache_key=str(Path(where).resolve()), what=f"image files in {where}"
    )
    if check.unreadable and policy == "error":
        listing = "; ".join(f"{path} ({reason})" for path, reason in check.unreadable)
        raise UserError(
            f"{len(check.unreadable)} unreadable image(s) in {where} (data.on_bad_image=error): {listing}"
        )
    for path, reason in check.unreadable:
        log.warning("skipping unreadable image %s (%s)", path, reason)
    for path, (width, height) in check.large:
        log.warning(
            "large image %s (%dx%d = %d pixels, over PIL's decompression-bomb warning limit"
            " PIL.Image.MAX_IMAGE_PIXELS=%d): read anyway; over twice the limit it would be skipped",
            path,
            width,
            height,
            width * height,
            Image.MAX_IMAGE_PIXELS,
        )
    bad_paths = {path for path, _ in check.unreadable}
    kept = [(path, label) for path, label in samples if path not in bad_paths]
    return ImageFileDataset(kept, large=[path for path, _ in check.large])
