r"""Checks for chapter 3's exercises (gradient-based meta-learning).

Each check builds a tiny seeded model (an MLP on sine waves, or a Conv-4 of width 4 on
random images) and compares the student's function with the package:
:func:`~companion.meta.maml.inner_sgd` for one inner step and its meta-gradient,
:meth:`Reptile.meta_loss <companion.meta.reptile.Reptile.meta_loss>` with SGD for Reptile's
update, and :class:`~companion.meta.maml.MAML` with ``adapt="head"`` for ANIL. Parameters
are compared as dicts of tensors, in float64 where the model allows it.

Example:
    >>> def stub(loss_fn, params, lr, first_order):
    ...     raise NotImplementedError("take the gradient with torch.func.grad")
    >>> check_sgd_step(stub).status
    'not done'
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
from torch.func import functional_call

from companion.data.sinusoid import SinusoidTasks
from companion.exercises import Feedback, attempt, right, wrong
from companion.meta.maml import MAML, Params, inner_sgd, task_loss
from companion.meta.reptile import Reptile, ReptileConfig
from companion.nets import MLP

EX1, EX2, EX3 = "Exercise 3.1", "Exercise 3.2", "Exercise 3.3"


def _sine_mlp(seed: int) -> tuple[MLP, Params]:
    """A 1-16-16-1 ReLU MLP and seeded float64 weights for it (as a dict, for functional_call)."""
    net = MLP(1, hidden=(16, 16), out_features=1).double()
    g = torch.Generator().manual_seed(seed)
    theta = {k: torch.randn(v.shape, generator=g, dtype=torch.float64)
                / (v.shape[1] ** 0.5 if v.ndim == 2 else 2.0)
             for k, v in net.named_parameters()}
    return net, theta


def _as_params(exercise: str, got: object, want: Params, what: str) -> Feedback | None:
    """``None`` if ``got`` is a dict of tensors with ``want``'s names and shapes."""
    if not isinstance(got, dict):
        return wrong(exercise, f"{what} should be a dict of tensors by name; got "
                     f"{type(got).__name__}.", "start from {k: v ... for k, v in params.items()}.")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        return wrong(exercise, f"{what} has the wrong names: missing {missing}, unexpected "
                     f"{extra}.", "return every entry of params, changed or not.")
    for k, v in want.items():
        if not isinstance(got[k], torch.Tensor) or got[k].shape != v.shape:
            shape = tuple(got[k].shape) if isinstance(got[k], torch.Tensor) else type(got[k])
            return wrong(exercise, f"{what}[{k!r}] should be a tensor of shape "
                         f"{tuple(v.shape)}; got {shape}.")
    return None


def _gap(got: Params, want: Params, names: list[str] | None = None) -> float:
    """The largest absolute difference between two parameter dicts (over ``names``)."""
    names = list(want) if names is None else names
    return max(((got[k].detach().to(want[k].dtype) - want[k].detach()).abs().max().item()
                for k in names), default=0.0)


def _close(got: Params, want: Params, names: list[str] | None = None, tol: float = 1e-8) -> bool:
    names = list(want) if names is None else names
    return all(torch.allclose(got[k].detach().to(want[k].dtype), want[k].detach(), atol=tol,
                              rtol=1e-6) for k in names)


# ---- Exercise 3.1: one inner SGD step, first and second order ---------------------------------

def check_sgd_step(sgd_step: Callable) -> Feedback:
    """Exercise 3.1: ``sgd_step(loss_fn, params, lr, first_order)``, one step of eq.
    (maml-inner) on every entry of ``params``, against :func:`inner_sgd`.

    Checks the new parameters and the meta-gradient of a query loss through them, with
    respect to ``params``: second order ``(I - alpha H) v``, first order ``v`` (``v`` the
    query gradient at the new parameters).
    """
    net, theta = _sine_mlp(seed=0)
    episode = SinusoidTasks(shots=5, queries=10, seed=3, dtype=torch.float64).sample()

    def support_loss(p: Params) -> torch.Tensor:
        return task_loss(functional_call(net, p, (episode.support_x,)), episode.support_y, "mse")

    def query_loss(p: Params) -> torch.Tensor:
        return task_loss(functional_call(net, p, (episode.query_x,)), episode.query_y, "mse")

    lr = 0.05

    def reference(first_order: bool) -> tuple[Params, Params]:
        leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
        fast = inner_sgd(support_loss, leaves, list(leaves), lr=lr, steps=1,
                         create_graph=not first_order)
        meta = torch.autograd.grad(query_loss(fast), list(leaves.values()))
        return fast, dict(zip(leaves, meta, strict=True))

    refs = {order: reference(order) for order in (False, True)}
    for first_order in (False, True):
        order = "first" if first_order else "second"
        leaves = {k: v.clone().requires_grad_() for k, v in theta.items()}
        run = attempt(EX1, sgd_step, support_loss, leaves, lr, first_order)
        if run.feedback:
            return run.feedback
        fast, meta = refs[first_order]
        got = run.value
        bad = _as_params(EX1, got, theta, f"sgd_step(..., first_order={first_order})")
        if bad:
            return bad
        if not _close(got, fast):
            backwards = {k: 2 * theta[k] - fast[k] for k in theta}  # theta + lr g
            if _close(got, backwards):
                return wrong(EX1, "your step goes uphill: it adds the gradient.",
                             "theta' = theta - lr * grad.")
            return wrong(EX1, f"the new parameters ({order} order) differ from inner_sgd's by "
                         f"up to {_gap(got, fast):.3g}.",
                         "one step: {k: params[k] - lr * g[k]}, g = torch.func.grad(loss_fn)"
                         "(params).")
        loss = query_loss({k: v.to(torch.float64) for k, v in got.items()})
        if not loss.requires_grad:
            return wrong(EX1, f"with first_order={first_order} your new parameters have no "
                         "graph back to params: the meta-gradient would be zero.",
                         "detach only where the gradient is taken, never the update "
                         "params[k] - lr * g[k].")
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        got_meta = {k: torch.zeros_like(v) if g is None else g
                    for (k, v), g in zip(leaves.items(), grads, strict=True)}
        if not _close(got_meta, meta):
            other = refs[not first_order][1]
            if _close(got_meta, other):
                other_order = "second" if first_order else "first"
                hint = ("take the gradient at detached parameters: "
                        "grad(loss_fn)({k: v.detach() ...})." if first_order else
                        "take the gradient at params themselves, so that it keeps its graph.")
                return wrong(EX1, f"with first_order={first_order} the meta-gradient through "
                             f"your step is the {other_order}-order one.", hint)
            return wrong(EX1, f"the {order}-order meta-gradient through your step differs from "
                         f"inner_sgd's by up to {_gap(got_meta, meta):.3g}.")
    return right(EX1, "your step equals inner_sgd's, and so do the meta-gradients through it: "
                 "(I - alpha H) v with first_order=False, v with first_order=True.")


# ---- Exercise 3.2: Reptile's update -----------------------------------------------------------

def check_reptile_step(reptile_step: Callable) -> Feedback:
    """Exercise 3.2: ``reptile_step(learner, batch, epsilon)``, eq. (reptile)
    ``theta + epsilon (mean_i phi_i - theta)``, against one SGD step of ``lr=epsilon`` on
    :meth:`Reptile.meta_loss`'s surrogate (the training loop's update)."""
    net, theta = _sine_mlp(seed=1)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(theta[k])
    config = ReptileConfig(inner_optimizer="sgd", inner_lr=0.02, inner_steps=3,
                           inner_batch=None, loss="mse")  # whole support: no random minibatches
    learner = Reptile(net, config)
    batch = SinusoidTasks(shots=10, queries=5, seed=4, dtype=torch.float64).sample_batch(3)
    epsilon = 0.3

    ref = copy.deepcopy(learner)
    optimizer = torch.optim.SGD(ref.parameters(), lr=epsilon)
    surrogate, _ = ref.meta_loss(batch)
    optimizer.zero_grad()
    surrogate.backward()
    optimizer.step()
    want = {k: v.detach() for k, v in ref.params().items()}

    run = attempt(EX2, reptile_step, copy.deepcopy(learner), batch, epsilon)
    if run.feedback:
        return run.feedback
    got = run.value
    bad = _as_params(EX2, got, want, "the new theta")
    if bad:
        return bad
    if _close(got, want):
        return right(EX2, f"your update equals one SGD step (lr = epsilon = {epsilon}) on "
                     f"Reptile.meta_loss's surrogate, over {len(batch)} tasks (largest "
                     f"difference {_gap(got, want):.1g}).")
    phis = [learner.adapt(theta, e.support_x, e.support_y) for e in batch]
    phi_bar = {k: torch.stack([p[k] for p in phis]).mean(0) for k in theta}
    mistakes = [
        ({k: theta[k] - epsilon * (phi_bar[k] - theta[k]) for k in theta},
         "your update moves theta away from the adapted weights.",
         "theta + epsilon * (phi_bar - theta): towards phi_bar."),
        ({k: theta[k] + epsilon * (phis[-1][k] - theta[k]) for k in theta},
         "your update uses the last task's phi only.",
         "average phi_i over all the tasks of the batch first."),
        (phi_bar, "your theta is the mean of the phi_i: the step size epsilon is missing.",
         "move only a fraction epsilon of the way."),
        (phis[0], "your theta is one task's adapted weights.",
         "adapt on every task of the batch, average, then interpolate."),
    ]
    for wrong_theta, message, hint in mistakes:
        if _close(got, wrong_theta):
            return wrong(EX2, message, hint)
    return wrong(EX2, f"your new theta differs from the reference by up to {_gap(got, want):.3g}.",
                 "phi_i = learner.adapt(learner.params(), support_x, support_y) for each task; "
                 "then theta + epsilon * (mean phi - theta).")


# ---- Exercise 3.3: ANIL's head-only inner loop -----------------------------------------------

def check_anil_adapt(anil_adapt: Callable) -> Feedback:
    """Exercise 3.3: ``anil_adapt(learner, params, support_x, support_y, steps)``, ``steps``
    test-time SGD steps on the head only, against ``MAML(model, adapt="head").adapt``."""
    from companion.methods import build_learner

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's stream untouched
        torch.manual_seed(0)
        learner = build_learner("maml", ways=5, image_size=28, in_channels=1, width=4,
                                inner_lr=0.4, inner_steps_test=3)
    g = torch.Generator().manual_seed(5)
    support_x = torch.rand(10, 1, 28, 28, generator=g)  # 5-way 2-shot, class-first
    support_y = torch.arange(5).repeat_interleave(2)
    params = {k: v.detach() for k, v in learner.params().items()}
    steps = 2  # not the config's inner_steps_test: the function must use its argument
    anil = MAML(learner.model, dataclasses.replace(learner.config, adapt="head"))
    want = anil.adapt(params, support_x, support_y, steps=steps, test=True)

    run = attempt(EX3, anil_adapt, learner, dict(params), support_x, support_y, steps)
    if run.feedback:
        return run.feedback
    got = run.value
    bad = _as_params(EX3, got, want, "the adapted parameters")
    if bad:
        return bad
    head = [k for k in params if k.startswith(f"{len(learner.model) - 1}.")]
    body = [k for k in params if k not in head]
    if not _close(got, params, body, tol=1e-6):
        return wrong(EX3, f"your inner loop changed the body (by up to "
                     f"{_gap(got, params, body):.3g}); ANIL adapts the head only.",
                     "compute z = body(support_x) once, then take SGD steps on the head's "
                     f"entries ({', '.join(head)}) only.")
    if _close(got, params, head, tol=1e-6):
        return wrong(EX3, "your head did not change: no inner step was taken.")
    if not _close(got, want, head, tol=1e-5):
        full = learner.adapt(params, support_x, support_y, steps=steps, test=True)
        if _close(got, full, head, tol=1e-5):
            return wrong(EX3, "your head is the one full adaptation gives, but the body was "
                         "kept: the head's steps must use the *unchanged* body's features.")
        return wrong(EX3, f"your adapted head differs from ANIL's by up to "
                     f"{_gap(got, want, head):.3g}.",
                     f"{steps} steps (the `steps` argument) of head - "
                     f"learner.config.inner_lr * grad, on the cross-entropy of the support.")
    return right(EX3, f"your head-only inner loop equals MAML(adapt='head') after {steps} steps "
                 f"(largest difference {_gap(got, want):.1g}); the body is unchanged.")
