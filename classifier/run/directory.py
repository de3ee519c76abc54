"""The run directory as a resource: one run at a time, and writable before the first epoch."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from classifier.errors import UserError

LOCK_FILE = ".lock"


@contextmanager
def run_dir_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold the run directory for the duration of the block; a second run there is refused in one line.

    filelock's FileLock, not a marker file: an flock on Unix and LockFileEx on Windows (so runs are held
    there too), which the kernel releases when the process ends in any way (kill -9 included), so a
    crashed run never leaves the directory blocked. The holder's pid is written into the lock file
    for the refusal to name (on Windows the locked file cannot be read by others: the refusal says `?`).

    Raises:
        UserError: another process holds the directory.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(output_dir, on_acquired=_write_holder_pid)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise _in_use(output_dir) from None
    try:
        yield
    finally:
        lock.release()


def _lock(output_dir: Path, on_acquired: Callable[[int], None] | None = None) -> FileLock:
    # The file stays after release (filelock removes it on Windows otherwise), so no other run can race
    # on its creation. A contender that loses does not truncate it (filelock>=3.30): the pid survives.
    return FileLock(output_dir / LOCK_FILE, preserve_lock_file=True, on_acquired=on_acquired)


def _write_holder_pid(fd: int) -> None:
    """filelock's on_acquired hook: the pid of the process that now holds the lock, in its file."""
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())


def _in_use(output_dir: Path) -> UserError:
    try:
        holder = (output_dir / LOCK_FILE).read_text(errors="replace").strip()
    except OSError:  # Windows: the holder's lock keeps others from reading it
        holder = ""
    return UserError(
        f"hydra.run.dir={output_dir} is in use by another run (pid {holder or '?'}): wait for it to end,"
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
    """Raises UserError when another run holds `output_dir` (run_dir_lock); holds nothing itself: the
    lock, when free, is taken and released at once."""
    output_dir = Path(output_dir)
    if not (output_dir / LOCK_FILE).is_file():
        return
    lock = _lock(output_dir)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise _in_use(output_dir) from None
    except OSError:  # not writable: run_dir_lock decides when the run starts
        return
    lock.release()
