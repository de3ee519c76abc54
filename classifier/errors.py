"""User-facing errors: one readable line that names the key or the file at fault."""

from __future__ import annotations

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException


class UserError(Exception):
    """A mistake in the user's config or files; its message is the whole story (no traceback)."""


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
