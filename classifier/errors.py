"""User-facing errors: one readable line that names the key or the file at fault."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException


class UserError(Exception):
    """A mistake in the user's config or files; its message is the whole story (no traceback)."""


# Exit statuses of a run stopped by a signal, as shells report them: 128 + the signal's number.
CTRL_C_EXIT, SIGTERM_EXIT = 130, 143


class RunInterrupted(UserError):
    """Training stopped by Ctrl-C or SIGTERM; the message says what was saved and how to resume."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def first_line_of(exc: BaseException) -> str:
    """The first non-blank line of what `exc` says, or its type's name when it says nothing: the
    reason a one-line error quotes from a library's multi-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def config_errors(group: str) -> Iterator[None]:
    """Turn what a library raises while building an object from the `group` config (Lightning's
    MisconfigurationException, torch's ValueError for a negative learning rate, a TypeError for an
    argument it does not take) into a UserError naming the group: the library checked the value,
    and its message says which."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not _is_config_error(exc):
            raise
        raise UserError(f"{group}: {first_line_of(exc)}") from exc


def _is_config_error(exc: Exception) -> bool:
    # Lightning's MisconfigurationException is matched by name: this module must not import Lightning.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, ValueError | TypeError) or "MisconfigurationException" in names


def describe_user_error(exc: BaseException) -> str | None:
    """The one-line message for a user mistake anywhere in `exc`'s cause chain, or None for a bug.

    Hydra's `instantiate` wraps what a `_target_` raises, and OmegaConf raises its own types for
    missing or mistyped keys, so the chain is walked rather than matching `exc` alone.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            return _last_line_if_from_worker(str(current))
        if isinstance(current, MissingMandatoryValue):
            key = current.full_key
            return f"missing value for '{key}': set it on the command line, e.g. {key}=..."
        if isinstance(current, OmegaConfBaseException) and getattr(current, "full_key", None):
            first_line = str(current).splitlines()[0]
            return f"config key '{current.full_key}': {first_line}"
        current = current.__cause__ or current.__context__
    return None


def _last_line_if_from_worker(message: str) -> str:
    # A DataLoader worker re-raises with the worker's whole traceback in the message; its last line
    # is the original "UserError: ..." line.
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split("UserError: ", 1)[-1]
