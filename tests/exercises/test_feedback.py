"""``companion.exercises``: what every check is built from."""

from __future__ import annotations

import pytest
import torch

from companion.exercises import Feedback, attempt, compare_number, compare_tensors, value_given


def test_attempt_turns_a_stub_and_a_crash_into_feedback() -> None:
    def stub():
        raise NotImplementedError("write me")

    def crash():
        return 1 / 0

    assert attempt("E", stub).feedback.status == "not done"
    assert "write me" in attempt("E", stub).feedback.message
    crashed = attempt("E", crash).feedback
    assert crashed.status == "not right" and "ZeroDivisionError" in crashed.message
    assert attempt("E", None).feedback.status == "not done"
    assert attempt("E", lambda x: x + 1, 1).value == 2


@pytest.mark.parametrize("got, status", [(1.0, "right"), (1.1, "not right"),
                                         (float("nan"), "not right"), (float("inf"), "not right"),
                                         ("1.0", "not right"), (True, "not right"),
                                         (torch.tensor(1.0), "right")])
def test_compare_number(got, status) -> None:
    assert compare_number("E", got, 1.0, name="v").status == status


def test_compare_tensors() -> None:
    want = torch.arange(6.0).view(2, 3)
    assert compare_tensors("E", want.clone(), want, name="t").passed
    assert "shape" in compare_tensors("E", want.T, want, name="t").message
    assert compare_tensors("E", want + 1e-3, want, name="t").status == "not right"
    assert compare_tensors("E", want.tolist(), want, name="t").status == "not right"
    nan = want.clone()
    nan[0, 0] = float("nan")
    assert compare_tensors("E", nan, want, name="t").status == "not right"


def test_feedback_reads_and_asserts() -> None:
    ok, bad = Feedback("E", "right", "fine"), Feedback("E", "not right", "off by one", "add 1")
    ok.assert_passed()
    with pytest.raises(AssertionError, match="off by one"):
        bad.assert_passed()
    assert "Hint: add 1" in str(bad) and "Hint" not in str(ok)
    with pytest.raises(ValueError, match="status must be"):
        Feedback("E", "maybe", "")
    assert value_given("E", "answer", None, "a number").status == "not done"
    assert value_given("E", "answer", 3, "a number") is None
