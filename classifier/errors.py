"""User-facing errors: one readable line that names the key or the file at fault."""

from __future__ import annotations

import functools
import inspect
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

PACKAGE_DIR = Path(__file__).resolve().parent


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


# How torch (and timm, which wraps it) names the object a weights-only load refused to build.
_PICKLED_GLOBAL = re.compile(r"(?:GLOBAL|globals?:) (?!GLOBAL\b)([A-Za-z_][\w.]*\w)")


def pickled_code_line(exc: BaseException, what: str, advice: str) -> str | None:
    """The line for a file that torch.load(weights_only=True) refused because its pickle names code
    (a function or class to call while loading): `what` holds code and was not loaded, then `advice`.
    None when `exc` (or its cause) is another failure. torch's own text suggests retrying with
    weights_only=False, which would run that code."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, pickle.UnpicklingError):
            found = _PICKLED_GLOBAL.search(f"{exc}\n{current}")
            if found is None:  # refused for another reason (a damaged or foreign file)
                return None
            return f"{what} holds code (a pickled {found.group(1)}), so it was not loaded: {advice}"
        current = current.__cause__
    return None


@contextmanager
def checked_by_library(group: str) -> Iterator[None]:
    """Turn what a library raises while it checks the values of the `group` config (Lightning's
    MisconfigurationException, torch's ValueError for a negative learning rate) into a UserError
    naming the group: the library checked the value, and its message says which.

    What is raised in this project's own code is a bug, whatever its type, and keeps its traceback:
    an argument the user may have mistyped is checked before the call (`check_arguments`), so a
    TypeError or ValueError from our own frames is never the user's.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not _is_library_check(exc) or raised_in_project(exc):
            raise
        raise UserError(f"{group}: {first_line_of(exc)}") from exc


def call_configured(factory: Callable[..., Any], group: str, *args: Any, **kwargs: Any) -> Any:
    """`factory(*args, **kwargs)` for the object the `group` config describes: its arguments checked
    against the factory's signature first, then what the library checks while building it reported
    as a UserError naming the group (check_arguments, checked_by_library)."""
    check_arguments(factory, group, *args, **kwargs)
    with checked_by_library(group):
        return factory(*args, **kwargs)


def _is_library_check(exc: Exception) -> bool:
    # Lightning's MisconfigurationException is matched by name: this module must not import Lightning.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, ValueError) or "MisconfigurationException" in names


def raised_in_project(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback is in this package's code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def check_arguments(factory: Callable[..., Any], group: str, *args: Any, **kwargs: Any) -> None:
    """Raises UserError when `factory` (a function, class or functools.partial of one, as Hydra's
    `_partial_` makes them) cannot take these arguments together with the config's keys: a key of
    `group` it has no parameter for, or a required one the config leaves out."""
    target = factory
    if isinstance(factory, functools.partial):  # Hydra's own partial type overrides __call__
        target = factory.func
        args, kwargs = (*factory.args, *args), {**factory.keywords, **kwargs}
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins and C extensions without a signature: the call decides
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(target, "__qualname__", repr(target))
        raise UserError(f"{group}: {name} {exc}") from None


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
