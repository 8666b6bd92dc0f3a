"""Checks for chapter 4's exercises (generative self-supervision).

Each check compares a student's function with the package on small seeded inputs: the
beta-VAE objective with :func:`companion.ssl.vae.elbo`, an MAE's random masking with the
properties :func:`companion.ssl.mae.random_masking` guarantees, and the distances between
codes with :func:`companion.evaluate.embed` on a fixed random encoder.

Example:
    >>> def negative_elbo(logits, x, mu, logvar, beta=1.0):
    ...     raise NotImplementedError("the two terms of eq. (vae-eq10)")
    >>> check_negative_elbo(negative_elbo).status
    'not done'
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from companion.evaluate import embed
from companion.exercises import Feedback, attempt, compare_number, compare_tensors, right, wrong
from companion.nets import Conv4
from companion.ssl.vae import elbo, gaussian_kl

EX1, EX2, EX3 = "Exercise 4.1", "Exercise 4.2", "Exercise 4.3"


# ---- Exercise 4.1: the beta-VAE objective ------------------------------------------------------


def _vae_inputs() -> tuple[torch.Tensor, ...]:
    """Decoder logits and images ``(4, 1, 6, 6)``, and ``mu, logvar`` ``(4, 5)``, seeded."""
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(4, 1, 6, 6, generator=g)
    x = torch.rand(4, 1, 6, 6, generator=g)
    mu = torch.randn(4, 5, generator=g)
    logvar = 0.8 * torch.randn(4, 5, generator=g)
    return logits, x, mu, logvar


def _kl_hint(got_kl: torch.Tensor, kl: torch.Tensor) -> str:
    """A hint naming the usual slip, if the KL the student's answer implies is one of them."""
    for factor, slip in ((2.0, "your KL term is twice the reference: the 1/2 of eq. "
                               "(kl-closed) is missing."),
                         (-1.0, "your KL term has the wrong sign: the negative ELBO *adds* "
                                "beta times the KL to the reconstruction error.")):
        if torch.allclose(got_kl, factor * kl, atol=1e-4, rtol=1e-4):
            return slip
    return ("per image, KL = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2), summed over "
            "the J latent coordinates (dim 1), with sigma^2 = exp(logvar).")


def check_negative_elbo(negative_elbo: Callable) -> Feedback:
    """Exercise 4.1: ``negative_elbo(logits, x, mu, logvar, beta)``, per image.

    The reference is ``-elbo(logits, x, mu, logvar, beta)[0]`` of :mod:`companion.ssl.vae`,
    eq. 10 of Kingma & Welling with a Bernoulli decoder and a beta on the KL term. The
    check tries ``beta = 0`` first (the reconstruction term alone), then ``beta = 1`` and
    ``beta = 4``, so its message says which term is wrong.
    """
    logits, x, mu, logvar = _vae_inputs()
    recon = -elbo(logits, x, mu, logvar, 0.0)[1]  # (B,), L_H summed over pixels
    kl = gaussian_kl(mu, logvar)  # (B,)
    for beta in (0.0, 1.0, 4.0):
        run = attempt(EX1, negative_elbo, logits, x, mu, logvar, beta)
        if run.feedback:
            return run.feedback
        want = -elbo(logits, x, mu, logvar, beta)[0]
        if beta == 0.0:
            hint = ("with beta = 0 only the reconstruction term is left: L_H(x, sigmoid(logits))"
                    " summed over the pixels of each image (not averaged), e.g. "
                    "F.binary_cross_entropy_with_logits(logits, x, reduction='none')"
                    ".flatten(1).sum(1).")
        elif beta == 1.0:
            got = run.value
            hint = (_kl_hint(got.detach() - recon, kl)
                    if isinstance(got, torch.Tensor) and got.shape == kl.shape
                    else "return one number per image, shape (B,).")
        else:
            hint = "beta multiplies the KL term only, not the reconstruction term."
        result = compare_tensors(EX1, run.value, want, name=f"negative_elbo(..., beta={beta:g})",
                                 atol=1e-4, rtol=1e-4, hint=hint)
        if not result.passed:
            return result
    return right(EX1, "your negative ELBO matches -elbo(...) of companion.ssl.vae for "
                 "beta = 0, 1 and 4: reconstruction summed over pixels, plus beta times the "
                 "closed-form KL.")


# ---- Exercise 4.2: an MAE's random masking ------------------------------------------------------


def _tokens(batch: int, length: int = 49) -> torch.Tensor:
    """Tokens ``(B, L, 3)`` that say where they come from: ``[b, i, a value]``."""
    b = torch.arange(batch, dtype=torch.float32)[:, None].expand(batch, length)
    i = torch.arange(length, dtype=torch.float32)[None].expand(batch, length)
    value = torch.randn(batch, length, generator=torch.Generator().manual_seed(5))
    return torch.stack([b, i, value], dim=-1)


def _check_one_masking(out: object, tokens: torch.Tensor, ratio: float) -> Feedback | None:
    """``None`` if ``out`` is a valid ``(kept, mask, ids_restore)`` for ``tokens``."""
    if not (isinstance(out, tuple | list) and len(out) == 3
            and all(isinstance(t, torch.Tensor) for t in out)):
        return wrong(EX2, f"return three tensors (kept, mask, ids_restore); got "
                     f"{type(out).__name__}.")
    kept, mask, ids_restore = out
    b, n, d = tokens.shape
    keep = round(n * (1 - ratio))
    if tuple(kept.shape) != (b, keep, d):
        return wrong(EX2, f"at ratio {ratio} kept has shape {tuple(kept.shape)}; expected "
                     f"{(b, keep, d)}: round(n_p (1 - ratio)) = {keep} of n_p = {n} tokens per "
                     "image.", "keep = round(n_p * (1 - ratio)); int() rounds 4.9 down to 4.")
    if tuple(mask.shape) != (b, n) or not ((mask == 0) | (mask == 1)).all():
        return wrong(EX2, f"mask must be (B, n_p) = {(b, n)} of zeros and ones; got shape "
                     f"{tuple(mask.shape)}.")
    if not (mask.sum(1) == n - keep).all():
        return wrong(EX2, f"each row of mask must have {n - keep} ones (masked tokens); got "
                     f"{mask.sum(1).long().tolist()}.")
    for row in range(b):
        visible = (mask[row] == 0).nonzero().flatten()
        origin = kept[row, :, :2].round().long()  # (keep, 2): the sample and the position
        if not (origin[:, 0] == row).all():
            return wrong(EX2, f"kept[{row}] holds tokens of another image.",
                         "gather within each image: tokens.gather(1, index).")
        if not torch.equal(origin[:, 1].sort().values, visible):
            return wrong(EX2, f"the tokens in kept[{row}] are not those where mask[{row}] is 0.",
                         "the mask is in the shuffled order until you un-shuffle it: "
                         "mask.gather(1, ids_restore).")
        if not torch.equal(kept[row], tokens[row, origin[:, 1]]):
            return wrong(EX2, f"kept[{row}] changed the tokens' values.")
    if tuple(ids_restore.shape) != (b, n) or ids_restore.dtype != torch.int64:
        return wrong(EX2, f"ids_restore must be an int64 tensor (B, n_p) = {(b, n)}; got "
                     f"{ids_restore.dtype} {tuple(ids_restore.shape)}.")
    if not (ids_restore.sort(1).values == torch.arange(n)).all():
        return wrong(EX2, "each row of ids_restore must be a permutation of 0..n_p-1.")
    filler = torch.full((b, n - keep, d), -1.0)  # what the decoder's mask tokens would be
    restored = torch.cat([kept, filler], 1).gather(1, ids_restore[..., None].expand(-1, -1, d))
    if not torch.equal(restored[mask == 0], tokens[mask == 0]):
        return wrong(EX2, "appending n_p - keep mask tokens to kept and gathering with "
                     "ids_restore does not put the visible tokens back in place.",
                     "ids_restore is the inverse permutation of the shuffle: "
                     "ids_shuffle.argsort(dim=1).")
    return None


def check_mask_tokens(mask_tokens: Callable) -> Feedback:
    """Exercise 4.2: ``mask_tokens(tokens, ratio, generator) -> (kept, mask, ids_restore)``.

    Any random scheme is accepted if it has the properties of the package's
    :func:`~companion.ssl.mae.random_masking`: ``round(L (1 - ratio))`` tokens kept per
    image, a ``(B, L)`` mask in the original order (1 = masked), kept tokens that are
    exactly the unmasked ones, ``ids_restore`` that puts them back in place, a different
    mask for each image, every position equally likely to be masked, and the same masks
    from the same generator state.
    """
    tokens = _tokens(6)
    masks = {}
    for ratio in (0.75, 0.9, 0.5):
        run = attempt(EX2, mask_tokens, tokens, ratio, torch.Generator().manual_seed(0))
        if run.feedback:
            return run.feedback
        found = _check_one_masking(run.value, tokens, ratio)
        if found:
            return found
        mask = masks[ratio] = run.value[1]
        if all(torch.equal(mask[0], m) for m in mask[1:]):
            return wrong(EX2, f"at ratio {ratio} every image got the same mask.",
                         "draw noise of shape (B, n_p), one row per image, and sort each row.")
    first = masks[0.75]
    again = attempt(EX2, mask_tokens, tokens, 0.75, torch.Generator().manual_seed(0))
    other = attempt(EX2, mask_tokens, tokens, 0.75, torch.Generator().manual_seed(1))
    if again.feedback or not torch.equal(again.value[1], first):
        return wrong(EX2, "the same generator state gave a different mask.",
                     "draw every random number from `generator` (generator=generator).")
    if other.feedback or torch.equal(other.value[1], first):
        return wrong(EX2, "two different generator seeds gave the same mask.")
    many = attempt(EX2, mask_tokens, _tokens(2000), 0.75, torch.Generator().manual_seed(2))
    if many.feedback:
        return many.feedback
    rate = many.value[1].float().mean(0)  # (L,): how often each position was masked
    if (rate - 0.75).abs().max() > 0.06:  # 6 standard errors of a fair 2,000-image estimate
        worst = int((rate - 0.75).abs().argmax())
        return wrong(EX2, f"over 2,000 images position {worst} was masked in {rate[worst]:.0%} "
                     "of them, far from the 75% of a uniformly random mask.",
                     "every position must be equally likely to be hidden.")
    return right(EX2, "valid masks at ratios 0.75, 0.9 and 0.5: the right number of tokens "
                 "kept, ids_restore puts them back, a different mask per image, every "
                 "position masked equally often, reproducible from the generator.")


# ---- Exercise 4.3: what does a code remember? --------------------------------------------------


def _code_inputs() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random Conv-4 with per-image norms, and 4 'characters' x 5 'drawings' of them."""
    with torch.random.fork_rng():  # the encoder's initial weights, without touching the caller's
        torch.manual_seed(0)
        encoder = Conv4(1, hidden=16, norm="group")
    g = torch.Generator().manual_seed(0)
    prototypes = (torch.rand(4, 1, 28, 28, generator=g) > 0.85).float()  # sparse "ink"
    images = prototypes.repeat_interleave(5, 0)  # (20, 1, 28, 28), class-first
    images = (images + 0.3 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    return encoder, images, torch.arange(4).repeat_interleave(5)


def code_distances_reference(encoder: torch.nn.Module, images: torch.Tensor,
                             labels: torch.Tensor) -> tuple[float, float, float]:
    """Mean cosine distances: image to its 2-pixel right shift, same label, different label."""
    h = F.normalize(embed(encoder, images), dim=1)
    shifted = F.normalize(embed(encoder, torch.roll(images, 2, dims=3)), dim=1)
    distance = 1 - h @ h.T  # (M, M)
    same = labels[:, None] == labels[None]
    other_image = ~torch.eye(len(labels), dtype=torch.bool)
    return ((1 - (h * shifted).sum(1)).mean().item(), distance[same & other_image].mean().item(),
            distance[~same].mean().item())


def check_code_distances(code_distances: Callable) -> Feedback:
    """Exercise 4.3: ``code_distances(encoder, images, labels) -> (shift, same, different)``.

    Recomputed with :func:`code_distances_reference` on a fixed random Conv-4 (group norm,
    so an image's features do not depend on the other images of its batch) and 20 images
    of 4 synthetic characters.
    """
    encoder, images, labels = _code_inputs()
    run = attempt(EX3, code_distances, encoder, images, labels)
    if run.feedback:
        return run.feedback
    got = run.value
    if not (isinstance(got, tuple | list) and len(got) == 3):
        return wrong(EX3, f"return three numbers (shift, same, different); got "
                     f"{type(got).__name__}.")
    hints = ("shift every image 2 pixels to the right, torch.roll(images, 2, dims=3), and "
             "compare each image's code with its own shifted code.",
             "average 1 - cos over the pairs of *different* images with the same label: "
             "leave out each image paired with itself.",
             "average 1 - cos over the pairs of images with different labels.")
    for name, value, want, hint in zip(("shift", "same", "different"), got,
                                       code_distances_reference(encoder, images, labels), hints,
                                       strict=True):
        result = compare_number(EX3, value, want, name=f"the {name} distance", atol=1e-4,
                                rtol=1e-3, hint=hint + " The cosine distance is 1 - cos of "
                                "the features from embed(encoder, x).")
        if not result.passed:
            return result
    return right(EX3, "your three mean cosine distances match the reference on a random "
                 "Conv-4: shifted copy, same character, different characters.")
