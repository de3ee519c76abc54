"""Finding image files that cannot be decoded, before training trips over them.

Each file is decoded once; files found readable are remembered by size and modification time in
a cache under $XDG_CACHE_HOME (~/.cache)/classifier, so later runs on the same data only stat them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from classifier.atomic import write_atomically
from classifier.errors import UserError

log = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("skip", "error")


def _decode_error(path: str) -> str | None:
    """Why `path` cannot be decoded, or None when it can. JPEGs decode at reduced scale: it is
    several times faster and still reads every byte, so truncated files are caught."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))
            img.load()
    except Exception as exc:  # PIL raises many types for corrupt data; all mean "unreadable"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _cache_file(key: str) -> Path:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    return cache_home / "classifier" / "readable-images" / f"{digest}.json"


def _load_cache(path: Path) -> dict[str, list[int]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def find_unreadable(
    paths: Sequence[Path], cache_key: str | None = None, workers: int | None = None
) -> list[tuple[Path, str]]:
    """(path, reason) for each file of `paths` that is missing or cannot be decoded, in order.

    Args:
        paths: image files.
        cache_key: names the set of files (a folder, a CSV); files that decoded before with the
            same size and mtime are not decoded again. None: no cache.
        workers: decoding threads (decoding releases the GIL); None: one per core, up to 8.
    """
    cache_path = _cache_file(cache_key) if cache_key else None
    known = _load_cache(cache_path) if cache_path else {}
    reasons: dict[str, str] = {}
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
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for path, reason in zip(to_decode, pool.map(_decode_error, to_decode, chunksize=256), strict=True):
            if reason is not None:
                reasons[path] = reason
    if cache_path and to_decode:
        bad = {os.path.abspath(path) for path in reasons}
        readable = {key: signature for key, signature in signatures.items() if key not in bad}
        try:
            write_atomically(json.dumps(readable).encode(), cache_path)
        except OSError as exc:  # a read-only home only costs the next run the decoding again
            log.debug("could not write %s: %s", cache_path, exc)
    return [(path, reasons[str(path)]) for path in paths if str(path) in reasons]


def drop_unreadable(
    samples: list[tuple[Path, int]], policy: str, where: str | Path
) -> list[tuple[Path, int]]:
    """Remove missing or undecodable images from `samples` (found in `where`, a folder or CSV),
    warning about each one; with policy 'error', fail listing all of them instead."""
    if policy not in BAD_IMAGE_POLICIES:
        raise UserError(f"data.on_bad_image={policy!r} is not one of {', '.join(BAD_IMAGE_POLICIES)}")
    bad = find_unreadable([path for path, _ in samples], cache_key=str(Path(where).resolve()))
    if not bad:
        return samples
    if policy == "error":
        listing = "; ".join(f"{path} ({reason})" for path, reason in bad)
        raise UserError(f"{len(bad)} unreadable image(s) in {where} (data.on_bad_image=error): {listing}")
    for path, reason in bad:
        log.warning("skipping unreadable image %s (%s)", path, reason)
    bad_paths = {path for path, _ in bad}
    return [(path, label) for path, label in samples if path not in bad_paths]
