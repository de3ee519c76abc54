"""Files on disk: paths as users write them (`~` and environment variables work in every path key),
where the project keeps what it caches between runs, a file's identity for cache keys, and writes
that a crash leaves either the old content or the new, never a torn file."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
import threading
from pathlib import Path

from classifier.errors import UserError

_umask_lock = threading.Lock()
HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file


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
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        _raise_if_disk_full(exc, path)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        _raise_if_disk_full(exc, path)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _raise_if_disk_full(exc: BaseException, path: Path) -> None:
    """A full disk (or quota) while writing `path` is the user's to fix: one line naming the folder
    and saying what is kept; the temporary file is already gone."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return
    kept = f"the previous {path.name} is intact" if path.exists() else f"there was no {path.name} before"
    raise UserError(
        f"no space left on the disk of {path.parent} ({exc.strerror}): {path.name} was not written,"
        f" {kept}; free some space there and run again"
    ) from exc


def expand_path(value: str | os.PathLike) -> Path:
    """`value` with `~`, `~user` and `$VAR` / `${VAR}` expanded (unset variables stay as written)."""
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(value))))


def existing_file(value: str | os.PathLike, key: str) -> Path:
    """The file `key=value` names, with `~` and $VARS expanded.

    Raises:
        UserError: there is no file there.
    """
    path = expand_path(value)
    if not path.is_file():
        raise UserError(f"{key}={value} does not exist (looked for {path.resolve()})")
    return path


def cache_home() -> Path:
    """$XDG_CACHE_HOME/classifier (~/.cache/classifier): what later runs on the same data reuse."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "classifier"


def file_identity(path: str | os.PathLike) -> list:
    """[resolved path, size, modification time in ns] of a file: what a cache keys a file by, so that
    an entry is rebuilt when the file is replaced or edited (size and mtime None for a missing file)."""
    path = Path(path)
    stat = path.stat() if path.is_file() else None
    return [str(path.resolve()), stat and stat.st_size, stat and stat.st_mtime_ns]


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, read in chunks (a teacher checkpoint can be gigabytes): what
    a run records to tell later whether a file it used is still the same."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
