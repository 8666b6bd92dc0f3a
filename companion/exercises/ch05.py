"""Checks for chapter 5's exercises (contrastive self-supervision).

Each check compares a student's function with the package on small seeded inputs: the
NT-Xent loss with :func:`companion.ssl.simclr.nt_xent`, the invariance ratio of two views
with :func:`companion.data.augment.two_views` and :func:`companion.evaluate.embed` on a
fixed random encoder, and SimSiam's loss, value and gradients, with
:func:`companion.ssl.byol.simsiam_loss`.

Example:
    >>> def nt_xent_loss(z1, z2, temperature):
    ...     raise NotImplementedError("eq. (nt-xent), averaged over the 2N anchors")
    >>> check_nt_xent_loss(nt_xent_loss).status
    'not done'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from companion.data.augment import AugmentConfig, two_views
from companion.evaluate import embed
from companion.exercises import Feedback, attempt, compare_number, compare_tensors, right, wrong
from companion.nets import Conv4
from companion.ssl.byol import simsiam_loss
from companion.ssl.simclr import nt_xent

EX1, EX2, EX3 = "Exercise 5.1", "Exercise 5.2", "Exercise 5.3"


# ---- Exercise 5.1: NT-Xent ---------------------------------------------------------------------


def _nt_xent_slips(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """The usual wrong versions of eq. (nt-xent), each with the hint that names its slip."""
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    raw = torch.cat([z1, z2])
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    self_pair = torch.eye(2 * n, dtype=torch.bool)
    sim = z @ z.T
    return {
        "the self-similarity k = i is still in the denominator: mask the diagonal with -inf "
        "before the softmax.": F.cross_entropy(sim / tau, targets),
        "sim is the cosine: normalise the rows (F.normalize(z, dim=1)) before the dot product.":
            F.cross_entropy((raw @ raw.T / tau).masked_fill(self_pair, -math.inf), targets),
        "the similarities are divided by the temperature, not multiplied.":
            F.cross_entropy((sim * tau).masked_fill(self_pair, -math.inf), targets),
        "every one of the 2N views is an anchor once: average over all 2N rows, not the first "
        "N.": F.cross_entropy((sim / tau).masked_fill(self_pair, -math.inf)[:n], targets[:n]),
    }


def check_nt_xent_loss(nt_xent_loss: Callable) -> Feedback:
    """Exercise 5.1: ``nt_xent_loss(z1, z2, temperature)``, against ``nt_xent`` of the package.

    Three cases: random projections (N = 6, D = 8, float64) at temperatures 0.2 and 1.0,
    and identical embeddings, where the loss is ``log(2N - 1)``.
    """
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    same = torch.ones(6, 8, dtype=torch.float64)
    for a, b, tau in ((z1, z2, 0.2), (3 * z1, z2, 1.0), (same, same, 0.5)):
        run = attempt(EX1, nt_xent_loss, a, b, tau)
        if run.feedback:
            return run.feedback
        want = nt_xent(a, b, temperature=tau)
        hint = "row i of the (2N, 2N) cosine matrix over tau is a softmax whose target is i's " \
               "other view, i + N (or i - N); the loss is the mean over the 2N rows."
        got = run.value
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            for slip_hint, value in _nt_xent_slips(a, b, tau).items():
                if not torch.allclose(value, want) and abs(got.item() - value.item()) < 1e-6:
                    hint = slip_hint
        result = compare_tensors(EX1, got, want, name=f"nt_xent_loss(..., temperature={tau})",
                                 atol=1e-6, rtol=1e-6, hint=hint)
        if not result.passed:
            return result
    return right(EX1, f"your NT-Xent equals companion.ssl.simclr.nt_xent at temperatures 0.2 "
                 f"and 1.0, and gives log(2N - 1) = {math.log(11):.4f} when all embeddings "
                 "coincide.")


# ---- Exercise 5.2: how invariant are the features? --------------------------------------------


def _invariance_inputs() -> tuple[torch.nn.Module, torch.Tensor]:
    """A random Conv-4 with per-image norms and 16 sparse 'glyphs' ``(16, 1, 28, 28)``."""
    with torch.random.fork_rng():  # the encoder's initial weights, without touching the caller's
        torch.manual_seed(0)
        encoder = Conv4(1, hidden=8, norm="group")
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(16, 1, 28, 28, generator=g) > 0.85).float()
    return encoder, images


def invariance_ratio_reference(encoder: torch.nn.Module, images: torch.Tensor,
                               config: AugmentConfig, seed: int) -> float:
    """Mean squared distance of the unit features of the two views of one image, over that of
    two different images (first view of one, second view of the other)."""
    x1, x2 = two_views(images, config, torch.Generator().manual_seed(seed))
    h1 = F.normalize(embed(encoder, x1), dim=1)
    h2 = F.normalize(embed(encoder, x2), dim=1)
    d = torch.cdist(h1, h2).square()  # (M, M): d[i, k] = |h1_i - h2_k|^2
    same = torch.eye(len(images), dtype=torch.bool)
    return (d[same].mean() / d[~same].mean()).item()


def check_invariance_ratio(invariance_ratio: Callable) -> Feedback:
    """Exercise 5.2: ``invariance_ratio(encoder, images, config, seed)``.

    Recomputed with :func:`invariance_ratio_reference` on a fixed random Conv-4 (group norm,
    so an image's features do not depend on its batch) for three configs: the glyphs
    preset, ``AugmentConfig()``, which changes nothing, so that the ratio must be 0, and the
    preset without its elastic distortion.
    """
    encoder, images = _invariance_inputs()
    configs = {"AugmentConfig.glyphs()": AugmentConfig.glyphs(),
               "AugmentConfig() (no change)": AugmentConfig(),
               "the glyphs preset without elastic distortion": AugmentConfig(
                   crop_scale=(0.6, 1.0), degrees=(-10.0, 10.0), translate=(0.1, 0.1),
                   scale=(0.9, 1.1), shear=(-10.0, 10.0))}
    for (name, config), seed in zip(configs.items(), (0, 1, 2), strict=True):
        run = attempt(EX2, invariance_ratio, encoder, images, config, seed)
        if run.feedback:
            return run.feedback
        want = invariance_ratio_reference(encoder, images, config, seed)
        hint = ("draw both views with two_views(images, config, "
                "torch.Generator().manual_seed(seed)), normalise the features of each with "
                "F.normalize(embed(encoder, x), dim=1); the numerator averages |h1_i - h2_i|^2 "
                "over the images, the denominator |h1_i - h2_k|^2 over the pairs i != k.")
        if want == 0.0:
            hint = ("AugmentConfig() leaves the images unchanged, so the two views are equal and "
                    "the ratio is 0: augment with the `config` argument, not a fixed config.")
        result = compare_number(EX2, run.value, want, name=f"the ratio for {name}", atol=1e-5,
                                rtol=1e-4, hint=hint)
        if not result.passed:
            return result
    return right(EX2, "your invariance ratio matches the reference on a random Conv-4 for the "
                 "glyphs preset, no augmentation (0) and the preset without elastic distortion.")


# ---- Exercise 5.3: SimSiam's loss and its stop-gradient -----------------------------------------


def check_siamese_loss(siamese_loss: Callable) -> Feedback:
    """Exercise 5.3: ``siamese_loss(p1, p2, z1, z2)``, SimSiam's symmetric loss.

    The value and the gradients with respect to ``p1`` and ``p2`` must be those of
    ``simsiam_loss`` of the package, and no gradient may reach ``z1`` or ``z2``.
    """
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(8, 6, generator=g, dtype=torch.float64).requires_grad_()
              for _ in range(4)]
    p1, p2, z1, z2 = leaves
    run = attempt(EX3, siamese_loss, p1, p2, z1, z2)
    if run.feedback:
        return run.feedback
    got = run.value
    want = simsiam_loss(p1, p2, z1, z2)
    hint = "D(p, z) = -cos(p, z), averaged over the batch; the loss is " \
           "1/2 D(p1, z2) + 1/2 D(p2, z1)."
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        value = got.item()
        cos = {(a, b): F.cosine_similarity(p, z, dim=1).mean().item()
               for a, p in ((1, p1), (2, p2)) for b, z in ((1, z1), (2, z2))}
        if abs(value + want.item()) < 1e-6:
            hint = "the sign: D(p, z) = -cos(p, z), so that minimising the loss aligns p and z."
        elif abs(value - 2 * want.item()) < 1e-6:
            hint = "the two directions are averaged, each with weight 1/2, not summed."
        elif abs(value + cos[1, 1] / 2 + cos[2, 2] / 2) < 1e-6:
            hint = "each prediction is compared with the projection of the *other* view: " \
                   "p1 with z2, p2 with z1."
    result = compare_tensors(EX3, got, want, name="siamese_loss(p1, p2, z1, z2)", atol=1e-6,
                             rtol=1e-6, hint=hint)
    if not result.passed:
        return result
    if not got.requires_grad:
        return wrong(EX3, "the loss carries no gradient.",
                     "compute it with torch operations on p1, p2 (no .item(), no torch.no_grad).")
    try:
        grads = torch.autograd.grad(got, leaves, allow_unused=True)
    except RuntimeError as error:  # e.g. the student's graph was already freed
        return wrong(EX3, f"the gradient of your loss could not be computed: {error}")
    for name, grad in zip(("z1", "z2"), grads[2:], strict=True):
        if grad is not None and grad.abs().max() > 0:
            return wrong(EX3, f"a gradient reaches {name}: the stop-gradient is missing.",
                         "use z1.detach() and z2.detach() as the targets.")
    want_grads = torch.autograd.grad(simsiam_loss(p1, p2, z1, z2), [p1, p2])
    for name, grad, want_grad in zip(("p1", "p2"), grads[:2], want_grads, strict=True):
        result = compare_tensors(EX3, torch.zeros_like(want_grad) if grad is None else grad,
                                 want_grad, name=f"the gradient with respect to {name}",
                                 atol=1e-8, rtol=1e-6)
        if not result.passed:
            return result
    return right(EX3, "your loss equals simsiam_loss in value and in its gradients with "
                 "respect to p1 and p2, and no gradient reaches z1 or z2.")
