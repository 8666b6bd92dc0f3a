"""Chapter 4's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from companion.evaluate import embed
from companion.exercises import ch04


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


# ---- 4.1 -----------------------------------------------------------------------------------------


def negative_elbo(logits, x, mu, logvar, beta=1.0):  # the book's solution
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
    return recon + beta * kl


def test_negative_elbo() -> None:
    feedback = ch04.check_negative_elbo(negative_elbo)
    assert feedback.passed, feedback
    assert ch04.check_negative_elbo(stub).status == "not done"

    def no_half(logits, x, mu, logvar, beta=1.0):  # the 1/2 of eq. (kl-closed) forgotten
        recon = negative_elbo(logits, x, mu, logvar, 0.0)
        return recon + beta * (mu.square() + logvar.exp() - 1 - logvar).sum(1)

    def kl_subtracted(logits, x, mu, logvar, beta=1.0):  # the sign of the KL term
        return 2 * negative_elbo(logits, x, mu, logvar, 0.0) - negative_elbo(
            logits, x, mu, logvar, beta)

    def pixel_mean(logits, x, mu, logvar, beta=1.0):  # averaged over pixels, not summed
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).mean(1)
        return recon + beta * 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)

    def kl_over_batch(logits, x, mu, logvar, beta=1.0):  # wrong axis: (J,) instead of (B,)
        recon = negative_elbo(logits, x, mu, logvar, 0.0)
        return recon.sum() + beta * 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(0)

    def beta_on_both(logits, x, mu, logvar, beta=1.0):
        return beta * negative_elbo(logits, x, mu, logvar, 1.0) if beta else negative_elbo(
            logits, x, mu, logvar, 0.0)

    for mistake in (no_half, kl_subtracted, pixel_mean, kl_over_batch, beta_on_both):
        feedback = ch04.check_negative_elbo(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
    assert "1/2" in ch04.check_negative_elbo(no_half).hint
    assert "sign" in ch04.check_negative_elbo(kl_subtracted).hint


# ---- 4.2 -----------------------------------------------------------------------------------------


def mask_tokens(tokens, ratio, generator):  # the book's solution
    b, n, d = tokens.shape
    keep = round(n * (1 - ratio))
    noise = torch.rand(b, n, generator=generator, device=generator.device).to(tokens.device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(b, n, dtype=tokens.dtype, device=tokens.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore


def test_mask_tokens() -> None:
    feedback = ch04.check_mask_tokens(mask_tokens)
    assert feedback.passed, feedback
    assert ch04.check_mask_tokens(stub).status == "not done"

    def package(tokens, ratio, generator):  # the package's own masking passes too
        from companion.ssl.mae import random_masking
        return random_masking(tokens, ratio, generator)

    def randperm_rows(tokens, ratio, generator):  # another valid scheme: one randperm per row
        b, n, d = tokens.shape
        keep = round(n * (1 - ratio))
        ids_shuffle = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])
        ids_restore = ids_shuffle.argsort(1)
        kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        mask = (ids_restore >= keep).float()
        return kept, mask, ids_restore

    assert ch04.check_mask_tokens(package).passed
    assert ch04.check_mask_tokens(randperm_rows).passed

    def same_mask(tokens, ratio, generator):  # one noise row for the whole batch
        b, n, d = tokens.shape
        keep = round(n * (1 - ratio))
        ids_shuffle = torch.rand(1, n, generator=generator).argsort(1).expand(b, n)
        ids_restore = ids_shuffle.argsort(1)
        kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        return kept, (ids_restore >= keep).float(), ids_restore

    def int_keep(tokens, ratio, generator):  # int(49 * 0.1) = 4, not round(4.9) = 5
        b, n, d = tokens.shape
        keep = int(n * (1 - ratio))
        ids_shuffle = torch.rand(b, n, generator=generator).argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        return kept, (ids_restore >= keep).float(), ids_restore

    def shuffled_mask(tokens, ratio, generator):  # the mask left in the shuffled order
        kept, _, ids_restore = mask_tokens(tokens, ratio, generator)
        mask = torch.ones(ids_restore.shape)
        mask[:, :kept.shape[1]] = 0
        return kept, mask, ids_restore

    def not_inverted(tokens, ratio, generator):  # ids_shuffle returned as ids_restore
        kept, mask, ids_restore = mask_tokens(tokens, ratio, generator)
        return kept, mask, ids_restore.argsort(1)

    def unseeded(tokens, ratio, generator):
        return mask_tokens(tokens, ratio, torch.Generator().manual_seed(
            int(torch.randint(10**6, (1,)))))

    def first_positions_likelier(tokens, ratio, generator):  # noise biased by position
        b, n, d = tokens.shape
        keep = round(n * (1 - ratio))
        noise = torch.rand(b, n, generator=generator) + torch.linspace(0, 0.5, n)
        ids_shuffle = noise.argsort(1)
        ids_restore = ids_shuffle.argsort(1)
        kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        return kept, (ids_restore >= keep).float(), ids_restore

    for mistake in (same_mask, int_keep, shuffled_mask, not_inverted, unseeded,
                    first_positions_likelier):
        feedback = ch04.check_mask_tokens(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)


# ---- 4.3 -----------------------------------------------------------------------------------------


def code_distances(encoder, images, labels):  # the book's solution
    h = F.normalize(embed(encoder, images), dim=1)
    shifted = F.normalize(embed(encoder, torch.roll(images, 2, dims=3)), dim=1)
    cos = h @ h.T
    same = labels[:, None] == labels[None]
    other = ~torch.eye(len(labels), dtype=torch.bool)
    return ((1 - (h * shifted).sum(1)).mean().item(), (1 - cos[same & other]).mean().item(),
            (1 - cos[~same]).mean().item())


def test_code_distances() -> None:
    feedback = ch04.check_code_distances(code_distances)
    assert feedback.passed, feedback
    assert ch04.check_code_distances(stub).status == "not done"

    def with_self_pairs(encoder, images, labels):
        h = F.normalize(embed(encoder, images), dim=1)
        shift, _, different = code_distances(encoder, images, labels)
        same = labels[:, None] == labels[None]
        return shift, (1 - h @ h.T)[same].mean().item(), different

    def shifted_down(encoder, images, labels):  # dims=2 moves the image down, not right
        h = F.normalize(embed(encoder, images), dim=1)
        down = F.normalize(embed(encoder, torch.roll(images, 2, dims=2)), dim=1)
        _, same, different = code_distances(encoder, images, labels)
        return (1 - (h * down).sum(1)).mean().item(), same, different

    def unnormalised(encoder, images, labels):  # 1 - dot product of raw features
        h = embed(encoder, images)
        shifted = embed(encoder, torch.roll(images, 2, dims=3))
        same = labels[:, None] == labels[None]
        other = ~torch.eye(len(labels), dtype=torch.bool)
        return ((1 - (h * shifted).sum(1)).mean().item(), (1 - h @ h.T)[same & other].mean()
                .item(), (1 - h @ h.T)[~same].mean().item())

    for mistake in (with_self_pairs, shifted_down, unnormalised):
        feedback = ch04.check_code_distances(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
    assert ch04.check_code_distances(lambda e, x, y: (0.1, 0.2)).status == "not right"
