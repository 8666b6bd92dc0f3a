"""The auxiliary weight's hypergradient (one lookahead step) against finite differences, and
the direction it moves the weight in."""

from __future__ import annotations

import pytest
import torch

from companion.guided import LogWeight, lookahead_hypergradient

ALPHA = 0.1


def _problem(aux_sign: float):
    """Linear regression: the primary task on A and B shares its target weights; the auxiliary
    task's target is ``aux_sign`` times them (1: helpful, -1: harmful)."""
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(4, generator=g, dtype=torch.float64)
    xa, xb, xaux = (torch.randn(32, 4, generator=g, dtype=torch.float64) for _ in range(3))
    params = {"w": torch.zeros(4, dtype=torch.float64, requires_grad=True)}

    def mse(x, target):
        return lambda p: ((x @ p["w"] - x @ target) ** 2).mean()

    return params, mse(xa, w_true), mse(xaux, aux_sign * w_true), mse(xb, w_true)


def _val_after_step(params, primary_a, auxiliary_a, primary_b, lam):
    """The held-out loss after one SGD step on the weighted training loss, computed directly."""
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss = primary_a(p) + lam * auxiliary_a(p)
    (grad,) = torch.autograd.grad(loss, [p["w"]])
    return float(primary_b({"w": p["w"].detach() - ALPHA * grad}))


@pytest.mark.parametrize("aux_sign", [1.0, -1.0])
def test_the_hypergradient_equals_a_finite_difference(aux_sign):
    problem = _problem(aux_sign)
    h, logs = lookahead_hypergradient(*problem, weight=0.5, step_size=ALPHA)
    eps = 1e-5
    numeric = (_val_after_step(*problem, 0.5 + eps) - _val_after_step(*problem, 0.5 - eps)) / (
        2 * eps)
    assert h == pytest.approx(numeric, rel=1e-6)
    assert logs["val_loss_after"] == pytest.approx(_val_after_step(*problem, 0.5))


@pytest.mark.parametrize(("aux_sign", "direction"), [(1.0, "up"), (-1.0, "down")])
def test_the_weight_moves_the_way_that_lowers_the_held_out_loss(aux_sign, direction):
    problem = _problem(aux_sign)
    weight = LogWeight(start=0.5, lr=0.2)
    before = _val_after_step(*problem, weight.value)
    for _ in range(5):
        h, _ = lookahead_hypergradient(*problem, weight=weight.value, step_size=ALPHA)
        weight.step(h)
    assert (weight.value > 0.5) == (direction == "up")
    assert _val_after_step(*problem, weight.value) < before


def test_log_weight_is_a_positive_buffer():
    weight = LogWeight(start=2.0, lr=0.1)
    assert weight.value == pytest.approx(2.0)
    assert "log_weight" in weight.state_dict() and not list(weight.parameters())
    weight.step(100.0)  # a huge step still leaves a positive weight
    assert weight.value > 0
    with pytest.raises(ValueError, match="start"):
        LogWeight(start=0.0, lr=0.1)
