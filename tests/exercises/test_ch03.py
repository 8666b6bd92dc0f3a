"""Chapter 3's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad

from companion.exercises import ch03
from companion.meta.maml import subparams


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


# ---- Exercise 3.1: one inner SGD step ---------------------------------------------------------

def sgd_step(loss_fn, params, lr, first_order):  # the book's solution
    at = {k: v.detach() for k, v in params.items()} if first_order else params
    g = grad(loss_fn)(at)
    return {k: params[k] - lr * g[k] for k in params}


def sgd_step_autograd(loss_fn, params, lr, first_order):  # the same with torch.autograd
    g = torch.autograd.grad(loss_fn(params), list(params.values()), create_graph=not first_order)
    return {k: v - lr * gk for (k, v), gk in zip(params.items(), g, strict=True)}


def always_first_order(loss_fn, params, lr, first_order):
    return sgd_step(loss_fn, params, lr, True)


def always_second_order(loss_fn, params, lr, first_order):
    return sgd_step(loss_fn, params, lr, False)


def uphill(loss_fn, params, lr, first_order):
    return sgd_step(loss_fn, params, -lr, first_order)


def detached(loss_fn, params, lr, first_order):
    return {k: v.detach() for k, v in sgd_step(loss_fn, params, lr, first_order).items()}


def weights_only(loss_fn, params, lr, first_order):
    return {k: v for k, v in sgd_step(loss_fn, params, lr, first_order).items()
            if k.endswith("weight")}


def test_sgd_step() -> None:
    for solution in (sgd_step, sgd_step_autograd):
        feedback = ch03.check_sgd_step(solution)
        assert feedback.passed, feedback
    assert ch03.check_sgd_step(stub).status == "not done"


@pytest.mark.parametrize("mistake, says", [
    (always_first_order, "is the first-order one"), (always_second_order,
                                                     "is the second-order one"),
    (uphill, "uphill"), (detached, "no graph"), (weights_only, "wrong names")])
def test_sgd_step_mistakes(mistake, says) -> None:
    feedback = ch03.check_sgd_step(mistake)
    assert feedback.status == "not right", feedback
    assert says in feedback.message, feedback


# ---- Exercise 3.2: Reptile's update -----------------------------------------------------------

def reptile_step(learner, batch, epsilon):  # the book's solution
    theta = {k: v.detach() for k, v in learner.params().items()}
    phis = [learner.adapt(theta, e.support_x, e.support_y) for e in batch]
    return {k: theta[k] + epsilon * (torch.stack([p[k] for p in phis]).mean(0) - theta[k])
            for k in theta}


def last_task_only(learner, batch, epsilon):
    theta = {k: v.detach() for k, v in learner.params().items()}
    episode = list(batch)[-1]
    phi = learner.adapt(theta, episode.support_x, episode.support_y)
    return {k: theta[k] + epsilon * (phi[k] - theta[k]) for k in theta}


def test_reptile_step() -> None:
    feedback = ch03.check_reptile_step(reptile_step)
    assert feedback.passed, feedback
    assert ch03.check_reptile_step(stub).status == "not done"


@pytest.mark.parametrize("mistake, says", [
    (lambda learner, batch, eps: reptile_step(learner, batch, -eps), "away"),
    (last_task_only, "last task"),
    (lambda learner, batch, eps: reptile_step(learner, batch, 1.0), "epsilon is missing"),
    (lambda learner, batch, eps: reptile_step(learner, batch, eps / 2), "differs"),
    (lambda learner, batch, eps: list(reptile_step(learner, batch, eps).values()), "dict"),
])
def test_reptile_step_mistakes(mistake, says) -> None:
    feedback = ch03.check_reptile_step(mistake)
    assert feedback.status == "not right", feedback
    assert says in feedback.message, feedback


# ---- Exercise 3.3: ANIL's head-only inner loop ------------------------------------------------

def anil_adapt(learner, params, support_x, support_y, steps):  # the book's solution
    head = f"{len(learner.model) - 1}."
    body = {k: v for k, v in params.items() if not k.startswith(head)}
    z = functional_call(learner.model[:-1], body, (support_x,)).detach()  # (N*K, D), once
    w = subparams(params, head)

    def loss(w):
        return torch.nn.functional.cross_entropy(
            functional_call(learner.model[-1], w, (z,)), support_y)

    for _ in range(steps):
        g = grad(loss)(w)
        w = {k: w[k] - learner.config.inner_lr * g[k] for k in w}
    return {**params, **{head + k: v for k, v in w.items()}}


def test_anil_adapt() -> None:
    feedback = ch03.check_anil_adapt(anil_adapt)
    assert feedback.passed, feedback
    assert ch03.check_anil_adapt(stub).status == "not done"


def test_anil_check_leaves_the_global_random_stream_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ch03.check_anil_adapt(anil_adapt)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("mistake, says", [
    (lambda learner, p, x, y, steps: learner.adapt(p, x, y, steps=steps, test=True),
     "changed the body"),
    (lambda learner, p, x, y, steps: anil_adapt(learner, p, x, y, 3), "differs from ANIL"),
    (lambda learner, p, x, y, steps: anil_adapt(learner, p, x, y, 0), "no inner step"),
    (lambda learner, p, x, y, steps: {k: v for k, v in anil_adapt(learner, p, x, y, steps).items()
                                      if k.startswith("1.")}, "wrong names"),
])
def test_anil_adapt_mistakes(mistake, says) -> None:
    feedback = ch03.check_anil_adapt(mistake)
    assert feedback.status == "not right", feedback
    assert says in feedback.message, feedback
