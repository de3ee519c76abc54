"""Paths as users write them: `~` and environment variables work in every path key."""

from __future__ import annotations

import os
from pathlib import Path


def expand_path(value: str | os.PathLike) -> Path:
    """`value` with `~`, `~user` and `$VAR` / `${VAR}` expanded (unset variables stay as written)."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(value))))
