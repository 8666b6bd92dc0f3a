"""``companion.toys``: the 2-D problems behind the book's intuition figures, checked against
autograd and a numerical optimiser rather than their own closed forms."""

from __future__ import annotations

import pytest
import torch

from companion.toys import QuadraticTasks, contrastive_toy


@pytest.fixture
def tasks() -> QuadraticTasks:
    return QuadraticTasks.default()


def test_adapt_takes_autograd_gradient_steps(tasks) -> None:
    theta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    path = tasks.adapt(theta, 0.2, 2)
    for t in range(tasks.tasks):
        p = theta.clone().requires_grad_(True)
        for k in range(2):
            (g,) = torch.autograd.grad(tasks.loss(p)[t], p)
            p = (p - 0.2 * g).detach().requires_grad_(True)
            torch.testing.assert_close(path[t, k + 1], p.detach())


@pytest.mark.parametrize("alpha, steps", [(0.1, 1), (0.3, 1), (0.3, 3), (0.5, 2)])
def test_maml_init_minimises_the_post_adaptation_loss(tasks, alpha, steps) -> None:
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-12,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = tasks.maml_loss(theta, alpha, steps)
        loss.backward()
        return loss

    optimiser.step(closure)
    closed_form = tasks.maml_init(alpha, steps)
    torch.testing.assert_close(closed_form, theta.detach(), atol=1e-4, rtol=0)
    assert tasks.maml_loss(closed_form, alpha, steps) <= closure().detach() + 1e-12


def test_average_init_zeroes_the_average_gradient(tasks) -> None:
    theta = tasks.average_init().requires_grad_(True)
    (g,) = torch.autograd.grad(tasks.loss(theta).mean(), theta)
    assert g.abs().max() < 1e-10


def test_maml_init_adapts_better_than_the_pretrained_one(tasks) -> None:
    for alpha in (0.1, 0.3):
        maml, pre = tasks.maml_init(alpha), tasks.average_init()
        assert tasks.maml_loss(maml, alpha, 1) < tasks.maml_loss(pre, alpha, 1)
    # With no inner step the two objectives, and so the two minimisers, coincide.
    torch.testing.assert_close(tasks.maml_init(0.3, 0), tasks.average_init())


def test_quadratic_tasks_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="optima must be"):
        QuadraticTasks(torch.zeros(3, 2), torch.zeros(2, 2, 2))


def test_contrastive_toy_spreads_with_nt_xent_and_collapses_without_negatives() -> None:
    torch.set_num_threads(1)
    spread = contrastive_toy(loss="nt_xent", steps=200)
    collapsed = contrastive_toy(loss="align", steps=200)
    assert spread["after"].mean(0).norm() < 0.3 < spread["before"].mean(0).norm()
    assert collapsed["after"].mean(0).norm() > 0.95
    torch.testing.assert_close(spread["after"].norm(dim=1), torch.ones(12))
    again = contrastive_toy(loss="nt_xent", steps=200)
    torch.testing.assert_close(again["after"], spread["after"])  # seeded


def test_contrastive_toy_rejects_an_unknown_loss() -> None:
    with pytest.raises(ValueError, match="loss must be"):
        contrastive_toy(loss="byol")


def test_contrastive_toy_trains_on_one_thread_and_gives_the_others_back() -> None:
    threads = torch.get_num_threads()
    contrastive_toy(steps=2)
    assert torch.get_num_threads() == threads
