"""Paths as users write them (`~` and environment variables work in every path key), and where the
project keeps what it caches between runs."""

from __future__ import annotations

import os
from pathlib import Path


def expand_path(value: str | os.PathLike) -> Path:
    """`value` with `~`, `~user` and `$VAR` / `${VAR}` expanded (unset variables stay as written)."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(value))))


def cache_home() -> Path:
    """$XDG_CACHE_HOME/classifier (~/.cache/classifier): what later runs on the same data reuse."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "classifier"


def file_identity(path: str | os.PathLike) -> list:
    """[resolved path, size, modification time in ns] of a file: what a cache keys a file by, so that
    an entry is rebuilt when the file is replaced or edited (size and mtime None for a missing file)."""
    path = Path(path)
    stat = path.stat() if path.is_file() else None
    return [str(path.resolve()), stat and stat.st_size, stat and stat.st_mtime_ns]
