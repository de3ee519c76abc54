"""The run directory as a resource: one run at a time, and writable before the first epoch."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from classifier.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: runs go unlocked
    fcntl = None

LOCK_FILE = ".lock"


@contextmanager
def run_dir_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold the run directory for the duration of the block; a second run there is refused in one line.

    An flock, not a marker file: the kernel releases it when the process ends in any way (kill -9
    included), so a crashed run never leaves the directory blocked.

    Raises:
        UserError: another process holds the directory.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(output_dir, fd) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, so no other run can race on its creation


def _in_use(output_dir: str | Path, fd: int) -> UserError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return UserError(
        f"hydra.run.dir={output_dir} is in use by another run (pid {holder}): wait for it to end,"
        " or give this run another directory"
    )


def check_writable(folder: str | Path, what: str) -> None:
    """Raises UserError when files cannot be created in `folder` (created if missing): found at start,
    not after the first epoch's training."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write {what} to {folder} ({exc.strerror or type(exc).__name__})") from exc


def check_can_create(folder: str | Path, setting: str) -> None:
    """Raises UserError, naming `setting` (`hydra.run.dir=...`, `output=...`), when `folder` could not
    be created, or files written in it, by this process. Tried in its nearest existing folder with a
    folder made and removed there: nothing is left behind, and it can run before Hydra or a task
    creates the folder."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{setting}: cannot write there, {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".write-test-"))
    except OSError as exc:
        raise UserError(
            f"{setting}: cannot write there ({existing}: {exc.strerror or type(exc).__name__})"
        ) from None


def refuse_if_in_use(output_dir: str | Path) -> None:
    """Raises UserError when another run holds `output_dir` (run_dir_lock); holds nothing itself."""
    lock = Path(output_dir) / LOCK_FILE
    if fcntl is None or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:  # unreadable: run_dir_lock decides when the run starts
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(output_dir, fd) from None
    finally:
        os.close(fd)
