"""Files on disk: paths as users write them (`~` and environment variables work in every path key),
where the project keeps what it caches between runs, a file's identity for cache keys, and writes
that a crash leaves either the old content or the new, never a torn file."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    # The only portable way to read the umask is to set it; the lock keeps threads of this process
    # from seeing the temporary value.
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def write_atomically(data: bytes, path: str | Path) -> None:
    """Write `data` to `path` so that a crash or kill -9 leaves either the old file or the new one.

    The bytes go to a temporary file in the same folder, are fsynced, and replace `path` with
    os.replace, which is atomic within one file system. The file gets the mode any new file
    would (0666 less the umask), not the 0600 of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


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
