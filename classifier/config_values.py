"""Numeric, true/false and one-or-many config values, as Hydra passes them from a command line
(32, '32', 'abc', true, 'maybe', [1,4]), converted or refused in one line that names the key."""

from __future__ import annotations

from collections.abc import Sequence

from classifier.errors import UserError


def to_number(value: object, key: str, kind: type[int] | type[float] = float) -> int | float:
    """`value` as `kind`; an int accepts whole floats (32.0) but not 2.5, and neither accepts bools.

    Raises:
        UserError: `value` is not a number of that kind, naming `key`.
    """
    try:
        if not isinstance(value, bool):
            return _to_int(value) if kind is int else float(value)
    except (TypeError, ValueError):
        pass
    raise UserError(f"{key}={value!r} is not {'an integer' if kind is int else 'a number'}")


def to_flag(value: object, key: str) -> bool:
    """`value` as a bool: true/false (Hydra's), or null for false.

    Raises:
        UserError: anything else ('maybe', 1, 'yes'), naming `key`.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    raise UserError(f"{key}={value!r} must be true or false")


def to_numbers(values: object, key: str, count: int) -> tuple[float, ...]:
    """`values` as `count` floats; items are named as key[i] when one is not a number.

    Raises:
        UserError: `values` is not a list of `count` numbers.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) != count:
        raise UserError(f"{key}={values!r} must be a list of {count} numbers")
    return tuple(to_number(value, f"{key}[{i}]") for i, value in enumerate(values))


def as_list(value: object) -> list:
    """A config value that is one item or a list of them (a list, a tuple, Hydra's ListConfig) as a
    list: `shots=4` and `shots=[1,4]` both work."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


def _to_int(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int | str):
        return int(value)  # int('2.5') raises, as it should
    raise TypeError(type(value).__name__)
