"""Chapter 7's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import math

import torch

from companion.exercises import ch07


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


def test_masked() -> None:
    def solution(logits, primary, classes, psi):  # the book's solution
        owner = torch.arange(classes * psi) // psi  # auxiliary class j belongs to j // psi
        mask = owner[None, :] == primary[:, None]
        return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)

    assert ch07.check_masked(solution).passed
    assert ch07.check_masked(stub).status == "not done"

    def not_renormalised(logits, primary, classes, psi):
        owner = torch.arange(classes * psi) // psi
        return torch.softmax(logits, dim=1) * (owner[None, :] == primary[:, None])

    def interleaved(logits, primary, classes, psi):  # owner j % K
        owner = torch.arange(classes * psi) % classes
        mask = owner[None, :] == primary[:, None]
        return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=1)

    def unmasked(logits, primary, classes, psi):
        return torch.softmax(logits, dim=1)

    hints = {not_renormalised: "renormalise", interleaved: "j // psi", unmasked: "j // psi"}
    for mistake, hint in hints.items():
        feedback = ch07.check_masked(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
        assert hint in feedback.hint, (mistake.__name__, feedback)


def test_entropy_of_mean() -> None:
    def solution(target):  # the book's solution
        mean = target.mean(0)
        return -torch.special.xlogy(mean, mean).sum()

    feedback = ch07.check_entropy_of_mean(solution)
    assert feedback.passed, feedback
    assert ch07.check_entropy_of_mean(stub).status == "not done"
    assert ch07.check_entropy_of_mean(lambda target: None).status == "not done"

    def mean_of_entropies(target):  # the regulariser the paper does not use
        return -torch.special.xlogy(target, target).sum(1).mean()

    def naive_log(target):  # 0 log 0 = nan on a collapsed generator
        mean = target.mean(0)
        return -(mean * mean.log()).sum()

    def bits(target):  # log base 2
        mean = target.mean(0)
        return -(torch.special.xlogy(mean, mean) / math.log(2)).sum()

    hints = {mean_of_entropies: "MEAN", naive_log: "xlogy", bits: "MEAN"}
    for mistake, hint in hints.items():
        feedback = ch07.check_entropy_of_mean(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
        assert hint in feedback.hint, (mistake.__name__, feedback)


def test_quadratic_hypergradient() -> None:
    def solution(theta, a, b, c, weight, step_size):  # the book's solution
        moved = theta - step_size * ((theta - a) + weight * (theta - c))
        return float(-step_size * (moved - b) @ (theta - c))

    feedback = ch07.check_quadratic_hypergradient(solution)
    assert feedback.passed, feedback
    assert ch07.check_quadratic_hypergradient(stub).status == "not done"

    def before_the_step(theta, a, b, c, weight, step_size):  # held-out gradient at theta
        return float(-step_size * (theta - b) @ (theta - c))

    def wrong_sign(theta, a, b, c, weight, step_size):
        return -solution(theta, a, b, c, weight, step_size)

    def no_weight_in_step(theta, a, b, c, weight, step_size):  # theta' = theta - alpha grad_pri
        moved = theta - step_size * (theta - a)
        return float(-step_size * (moved - b) @ (theta - c))

    for mistake in (before_the_step, wrong_sign, no_weight_in_step):
        feedback = ch07.check_quadratic_hypergradient(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
