"""Checks for chapter 7's exercises (self-supervision guided by a meta-learner).

Example:
    >>> def masked(logits, primary, classes, psi):
    ...     raise NotImplementedError("a softmax over each image's psi auxiliary classes")
    >>> check_masked(masked).status
    'not done'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from companion.exercises import Feedback, attempt, compare_number, right, wrong
from companion.guided import lookahead_hypergradient
from companion.guided.maxl import MAXL, LabelledBatch, MAXLConfig, hierarchy_mask, masked_softmax

EX1, EX2, EX3 = "Exercise 7.1", "Exercise 7.2", "Exercise 7.3"


def check_masked(masked: Callable) -> Feedback:
    """Exercise 7.1: the label generator's masked softmax, against the package's
    ``masked_softmax(logits, hierarchy_mask(primary, N, psi))``."""
    g = torch.Generator().manual_seed(7)
    for classes, psi in ((3, 4), (4, 2), (2, 1)):
        primary = torch.arange(classes).repeat(2)[torch.randperm(2 * classes, generator=g)]
        logits = torch.randn(len(primary), classes * psi, generator=g)
        run = attempt(EX1, masked, logits.clone(), primary.clone(), classes, psi)
        if run.feedback:
            return run.feedback
        got, want = run.value, masked_softmax(logits, hierarchy_mask(primary, classes, psi))
        if not isinstance(got, torch.Tensor):
            return wrong(EX1, f"return a tensor of probabilities; got {type(got).__name__}.")
        if got.shape != want.shape:
            return wrong(EX1, f"the output has shape {tuple(got.shape)}; for {len(primary)} "
                         f"images, N = {classes} and psi = {psi} it is {tuple(want.shape)}.",
                         "one row per image, one column per auxiliary class (N * psi).")
        got = got.detach().float()
        if torch.allclose(got, want, atol=1e-6):
            continue
        mask = hierarchy_mask(primary, classes, psi)
        message = (f"with N = {classes}, psi = {psi} your output differs from "
                   f"masked_softmax(logits, hierarchy_mask(primary, N, psi)) by up to "
                   f"{(got - want).abs().max():.3g}.")
        if not torch.isfinite(got).all():
            return wrong(EX1, message + " It has NaN or infinite values.",
                         "fill the entries outside the mask with -inf, then softmax; a row "
                         "never has all entries masked.")
        if not torch.allclose(got.sum(1), torch.ones(len(got)), atol=1e-5):
            return wrong(EX1, message + " Its rows do not sum to 1.",
                         "a softmax over the masked entries only: fill the others with -inf "
                         "first; multiplying a full softmax by the mask does not renormalise.")
        if got.masked_select(~mask).abs().max() > 1e-6:
            return wrong(EX1, message + " It puts probability outside the image's psi "
                         "auxiliary classes.",
                         "auxiliary class j belongs to primary class j // psi (blocks of psi "
                         "consecutive classes), not j % N.")
        return wrong(EX1, message, "softmax of the logits themselves, with the mask's "
                     "entries left as they are.")
    return right(EX1, "your masked softmax equals the package's for (N, psi) = (3, 4), "
                 "(4, 2) and (2, 1).")


def _tiny_maxl(seed: int) -> tuple[MAXL, LabelledBatch]:
    """A MAXL of two linear networks on 12 random 4 x 4 images, 3 primary classes, psi = 2."""
    def encoder() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh())

    model = MAXL(encoder(), encoder(), 8, primary_classes=3, fine_classes=6,
                 config=MAXLConfig(psi=2))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights from the seed, without touching the global generator
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    primary = torch.arange(3).repeat(4)
    batch = LabelledBatch(torch.randn(12, 1, 4, 4, generator=g), primary, 2 * primary)
    return model, batch


def entropy_of_mean_reference(target: torch.Tensor) -> float:
    """H(1/M sum_i G_i) over a batch of M images, with 0 log 0 = 0."""
    mean = target.mean(0)
    return float(-torch.special.xlogy(mean, mean).sum())


def check_entropy_of_mean(entropy_of_mean: Callable) -> Feedback:
    """Exercise 7.2: MAXL's regulariser, against the ``aux_entropy`` that
    :meth:`MAXL.meta_loss` logs, and on a collapsed generator (``log N``)."""
    hint = ("the entropy of the MEAN distribution over the batch, H(mean_i G_i), not the mean "
            "of each image's entropy: each image may be sure of its class, as long as the "
            "batch uses all of them.")
    for seed in (0, 1):
        model, batch = _tiny_maxl(seed)
        with torch.no_grad():
            target = model.generate(batch.x, batch.primary)  # (12, 6)
        want = model.meta_loss(batch)[1]["aux_entropy"]
        run = attempt(EX2, entropy_of_mean, target.clone())
        if run.feedback:
            return run.feedback
        if run.value is None:
            return Feedback(EX2, "not done", "entropy_of_mean returned None.")
        result = compare_number(EX2, run.value, want, atol=1e-5, rtol=1e-5, hint=hint,
                                name="the entropy of a tiny MAXL's generated labels")
        if not result.passed:
            return wrong(EX2, result.message + " (the reference is the aux_entropy that "
                         "MAXL.meta_loss logs)", hint)
    classes, psi = 4, 3
    collapsed = torch.zeros(2 * classes, classes * psi)  # every image: its block's first class
    collapsed[torch.arange(2 * classes), psi * torch.arange(classes).repeat(2)] = 1.0
    run = attempt(EX2, entropy_of_mean, collapsed.clone())
    if run.feedback:
        return run.feedback
    value = run.value.item() if isinstance(run.value, torch.Tensor) and run.value.numel() == 1 \
        else run.value
    if isinstance(value, float) and not math.isfinite(value):
        return wrong(EX2, f"a collapsed generator (one auxiliary class per primary class) gives "
                     f"{value}: some auxiliary classes have probability 0.",
                     "0 log 0 is 0: use torch.special.xlogy(p, p), or add a small epsilon "
                     "inside the log.")
    result = compare_number(EX2, run.value, math.log(classes), atol=1e-5, rtol=1e-5, hint=hint,
                            name=f"the entropy of a collapsed generator (N = {classes})")
    if not result.passed:
        return result
    return right(EX2, "your entropy equals MAXL.meta_loss's aux_entropy on a tiny model, and a "
                 f"collapsed generator gets log N = {math.log(classes):.3f} (uniform over "
                 f"N psi classes would be log {classes * psi} = "
                 f"{math.log(classes * psi):.3f}).")


def quadratic_reference(theta: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        c: torch.Tensor, weight: float, step_size: float) -> float:
    """The package's ``lookahead_hypergradient`` on the three quadratic losses."""
    def half_square(target: torch.Tensor) -> Callable:
        return lambda p: 0.5 * (p["theta"] - target).pow(2).sum()

    params = {"theta": theta.clone().requires_grad_(True)}
    value, _ = lookahead_hypergradient(params, half_square(a), half_square(c), half_square(b),
                                       weight=weight, step_size=step_size)
    return value


def check_quadratic_hypergradient(quadratic_hypergradient: Callable) -> Feedback:
    """Exercise 7.3: the closed form, against ``lookahead_hypergradient`` on random cases."""
    g = torch.Generator().manual_seed(3)
    for weight, step_size in ((1.0, 0.1), (0.3, 0.5), (2.0, 0.05), (0.0, 0.2)):
        theta, a, b, c = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4))
        run = attempt(EX3, quadratic_hypergradient, theta.clone(), a.clone(), b.clone(),
                      c.clone(), weight, step_size)
        if run.feedback:
            return run.feedback
        if run.value is None:
            return Feedback(EX3, "not done", "quadratic_hypergradient returned None.")
        want = quadratic_reference(theta, a, b, c, weight, step_size)
        result = compare_number(
            EX3, run.value, want, atol=1e-9, rtol=1e-7,
            name=f"the hypergradient at lambda = {weight}, alpha = {step_size}",
            hint="theta' = theta - alpha ((theta - u_tr) + lambda (theta - u_aux)); the held-out "
                 "gradient is taken at theta' (after the step), the auxiliary one at theta.")
        if not result.passed:
            return result
    return right(EX3, "your closed form equals lookahead_hypergradient on 4 random quadratic "
                 "problems.")
