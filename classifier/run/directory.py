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
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"hydra.run.dir={output_dir} is in use by another run (pid {holder}): wait for it to end,"
                " or give this run another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, so no other run can race on its creation


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
