"""Checks for the book's exercises: each compares a student's answer with a reference.

Every exercise in a chapter has three cells (see "Adding an exercise" in the README):

1. a **stub** the student fills in (tag ``exercise``): a function whose body raises
   ``NotImplementedError("what is missing")``, or a value left as ``None``;
2. a **solution** (tag ``solution``), collapsed in the online book and removed from the
   student notebooks that ``make assignments`` writes;
3. a **check** (tag ``check``): one call such as ``ch02.check_prototypes(prototypes)``
   that returns a :class:`Feedback` and shows it.

A check never raises on a wrong or missing answer: it says what is right or wrong and
gives a hint, so a student notebook runs from top to bottom whatever its state. The
autograder (otter-grader, built by ``python -m companion.exercises.assign``) calls
:meth:`Feedback.assert_passed` on the same checks, which turns "not right" into a failed
test with the same message.

The chapters' checks live in ``ch01.py``, ``ch02.py``, ...; this module holds what they
share: running the student's code (:func:`attempt`), comparing tensors and numbers
(:func:`compare_tensors`, :func:`compare_number`), and the result (:class:`Feedback`).

Example:
    >>> def double(x):
    ...     raise NotImplementedError("return twice x")
    >>> attempt("Exercise 0.1", double, 3).status
    'not done'
    >>> compare_number("Exercise 0.1", 6.0, 6.0, name="double(3)")
    ✅ Exercise 0.1: right. double(3) = 6 as expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

STATUSES = ("right", "not right", "not done")
_MARK = {"right": "✅", "not right": "❌", "not done": "⬜"}


@dataclass(frozen=True)
class Feedback:
    """What a check found: ``status`` is ``"right"``, ``"not right"`` or ``"not done"``.

    Args:
        exercise: the exercise's title, e.g. ``"Exercise 2.1"``.
        status: one of :data:`STATUSES`.
        message: what is right or wrong, with the numbers.
        hint: what to look at next (empty when the answer is right).
    """

    exercise: str
    status: str
    message: str
    hint: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")

    @property
    def passed(self) -> bool:
        return self.status == "right"

    def __str__(self) -> str:
        text = f"{_MARK[self.status]} {self.exercise}: {self.status}. {self.message}"
        if self.hint and not self.passed:
            text += f"\n   Hint: {self.hint}"
        return text

    __repr__ = __str__

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` with the message unless the answer is right (autograder)."""
        if not self.passed:
            raise AssertionError(str(self))


def right(exercise: str, message: str) -> Feedback:
    return Feedback(exercise, "right", message)


def wrong(exercise: str, message: str, hint: str = "") -> Feedback:
    return Feedback(exercise, "not right", message, hint)


def not_done(exercise: str, message: str, hint: str = "") -> Feedback:
    return Feedback(exercise, "not done", message, hint)


@dataclass(frozen=True)
class Attempt:
    """The result of calling a student's function: its ``value`` or a :class:`Feedback`."""

    value: Any = None
    feedback: Feedback | None = None

    @property
    def status(self) -> str:
        return "ran" if self.feedback is None else self.feedback.status


def attempt(exercise: str, fn: Callable, *args: Any, **kwargs: Any) -> Attempt:
    """Call ``fn(*args, **kwargs)``; a stub or a crash becomes feedback, not a traceback.

    ``NotImplementedError`` (the stub) gives "not done" with the stub's own message; any
    other exception gives "not right" with its type and message.
    """
    name = getattr(fn, "__name__", "your function")
    if not callable(fn):
        return Attempt(feedback=not_done(
            exercise, f"`{name}` is {fn!r}, not a function: define it in the cell above."))
    try:
        return Attempt(value=fn(*args, **kwargs))
    except NotImplementedError as error:
        return Attempt(feedback=not_done(
            exercise, f"`{name}` still raises NotImplementedError: {error}"))
    except Exception as error:  # the student's bug is the answer's feedback, not a crash
        return Attempt(feedback=wrong(
            exercise, f"`{name}` raised {type(error).__name__}: {error}",
            "run the function on its own with small inputs and read the error."))


def value_given(exercise: str, name: str, value: Any, what: str) -> Feedback | None:
    """``None`` if ``value`` was filled in; else "not done" telling what to put there."""
    if value is None or value is Ellipsis:
        return not_done(exercise, f"`{name}` is still {value!r}: set it to {what}.")
    return None


def compare_tensors(exercise: str, got: Any, want: torch.Tensor, *, name: str,
                    atol: float = 1e-5, rtol: float = 1e-4, hint: str = "") -> Feedback:
    """Right if ``got`` is a tensor of ``want``'s shape with values close to it."""
    if not isinstance(got, torch.Tensor):
        return wrong(exercise, f"{name} should be a torch.Tensor; got {type(got).__name__}.",
                     hint)
    if got.shape != want.shape:
        return wrong(exercise, f"{name} has shape {tuple(got.shape)}; expected "
                     f"{tuple(want.shape)}.", hint or "check which dimension you reduce over.")
    got = got.detach().to(want.dtype)
    if not torch.isfinite(got).all():
        return wrong(exercise, f"{name} has NaN or infinite values.", hint)
    error = (got - want).abs().max().item() if want.numel() else 0.0
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        return wrong(exercise, f"{name} differs from the reference by up to {error:.3g} "
                     f"(allowed {atol:g} + {rtol:g} x |reference|).", hint)
    return right(exercise, f"{name} matches the reference (largest difference {error:.2g}).")


def compare_number(exercise: str, got: Any, want: float, *, name: str, atol: float = 1e-6,
                   rtol: float = 1e-6, hint: str = "") -> Feedback:
    """Right if ``got`` is a real number within ``atol + rtol * |want|`` of ``want``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, int | float):
        return wrong(exercise, f"{name} should be a number; got {type(got).__name__}.", hint)
    if not math.isfinite(got):
        return wrong(exercise, f"{name} = {got}; the reference is {want:.6g}.", hint)
    if abs(got - want) > atol + rtol * abs(want):
        return wrong(exercise, f"{name} = {got:.6g}; the reference is {want:.6g}.", hint)
    return right(exercise, f"{name} = {got:.6g} as expected.")
