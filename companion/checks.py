"""Argument checks shared by the whole package: one helper each, one wording each.

Every public function and config in ``companion`` validates its arguments and raises a
``ValueError`` (or ``TypeError``) that says what was given and what is allowed (STYLE.md,
"fail loudly"). The checks that recur everywhere live here, so a message reads the same
wherever it comes from and a fix lands once.

Example:
    >>> check_int("ways", 5)
    5
    >>> check_int("steps", 0, minimum=0)
    0
    >>> check_int("shots", True)
    Traceback (most recent call last):
    ...
    ValueError: shots must be a positive int; got True
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_int(name: str, value: object, minimum: int = 1, *, optional: bool = False) -> int:
    """``value`` if it is an ``int >= minimum`` (``bool`` is not), else a ``ValueError``.

    Args:
        name: the argument's name, for the message.
        value: what was given.
        minimum: the smallest value allowed (1: "a positive int").
        optional: ``None`` is allowed too, and returned as it is.
    """
    if optional and value is None:
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        want = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {want}{' or None' if optional else ''}; "
                         f"got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """``value`` if it is a real number ``> 0`` (not ``bool``, not NaN), else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return value


def check_choice(name: str, value: object, allowed: Iterable[object]) -> object:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` listing them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def preview(t: torch.Tensor, n: int = 12) -> str:
    """The first ``n`` values of a tensor and its shape, for an error message."""
    values = t.reshape(-1)[:n].tolist()
    return f"{values}{' ...' if t.numel() > n else ''} (shape {tuple(t.shape)})"
