"""Chapter 5's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from companion.data.augment import AugmentConfig, two_views
from companion.evaluate import embed
from companion.exercises import ch05


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


# ---- 5.1 -----------------------------------------------------------------------------------------


def nt_xent_loss(z1, z2, temperature):  # the book's solution
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool), -math.inf)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, targets)


def test_nt_xent_loss() -> None:
    feedback = ch05.check_nt_xent_loss(nt_xent_loss)
    assert feedback.passed, feedback
    assert "2.3979" in feedback.message  # log(2 * 6 - 1)
    assert ch05.check_nt_xent_loss(stub).status == "not done"

    def loop(z1, z2, temperature):  # eq. (nt-xent) term by term, as the chapter's loop
        z = torch.cat([z1, z2])
        n = len(z1)
        terms = []
        for i in range(2 * n):
            sim = F.cosine_similarity(z[i:i + 1], z, dim=1) / temperature
            others = torch.cat([sim[:i], sim[i + 1:]])
            terms.append(torch.logsumexp(others, 0) - sim[(i + n) % (2 * n)])
        return torch.stack(terms).mean()

    assert ch05.check_nt_xent_loss(loop).passed

    def self_pair_kept(z1, z2, temperature):
        n = len(z1)
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(z @ z.T / temperature, targets)

    def unnormalised(z1, z2, temperature):
        n = len(z1)
        z = torch.cat([z1, z2])
        logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool),
                                                     -math.inf)
        return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))

    def wrong_positive(z1, z2, temperature):  # target i + 1 instead of the other view
        n = len(z1)
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool),
                                                     -math.inf)
        return F.cross_entropy(logits, (torch.arange(2 * n) + 1) % (2 * n))

    def per_anchor(z1, z2, temperature):  # no mean: one loss per anchor
        n = len(z1)
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool),
                                                     -math.inf)
        return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]),
                               reduction="none")

    for mistake in (self_pair_kept, unnormalised, wrong_positive, per_anchor):
        feedback = ch05.check_nt_xent_loss(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
    assert "diagonal" in ch05.check_nt_xent_loss(self_pair_kept).hint
    assert "normalise" in ch05.check_nt_xent_loss(unnormalised).hint


# ---- 5.2 -----------------------------------------------------------------------------------------


def invariance_ratio(encoder, images, config, seed):  # the book's solution
    x1, x2 = two_views(images, config, torch.Generator().manual_seed(seed))
    h1 = F.normalize(embed(encoder, x1), dim=1)
    h2 = F.normalize(embed(encoder, x2), dim=1)
    d = torch.cdist(h1, h2).square()  # (M, M)
    same = torch.eye(len(images), dtype=torch.bool)
    return (d[same].mean() / d[~same].mean()).item()


def test_invariance_ratio() -> None:
    feedback = ch05.check_invariance_ratio(invariance_ratio)
    assert feedback.passed, feedback
    assert ch05.check_invariance_ratio(stub).status == "not done"

    def via_cosines(encoder, images, config, seed):  # 2 - 2 cos is the same distance
        x1, x2 = two_views(images, config, torch.Generator().manual_seed(seed))
        cos = F.normalize(embed(encoder, x1), dim=1) @ F.normalize(embed(encoder, x2), dim=1).T
        d = 2 - 2 * cos
        off = ~torch.eye(len(images), dtype=torch.bool)
        return float(d.diagonal().mean() / d[off].mean())

    assert ch05.check_invariance_ratio(via_cosines).passed

    def diagonal_in_denominator(encoder, images, config, seed):
        x1, x2 = two_views(images, config, torch.Generator().manual_seed(seed))
        h1 = F.normalize(embed(encoder, x1), dim=1)
        h2 = F.normalize(embed(encoder, x2), dim=1)
        d = torch.cdist(h1, h2).square()
        return (d.diagonal().mean() / d.mean()).item()

    def unnormalised(encoder, images, config, seed):
        x1, x2 = two_views(images, config, torch.Generator().manual_seed(seed))
        d = torch.cdist(embed(encoder, x1), embed(encoder, x2)).square()
        off = ~torch.eye(len(images), dtype=torch.bool)
        return (d.diagonal().mean() / d[off].mean()).item()

    def fixed_config(encoder, images, config, seed):  # the chapter's augmentations, always
        return invariance_ratio(encoder, images, AugmentConfig.glyphs(), seed)

    def against_the_original(encoder, images, config, seed):  # one view vs the image itself
        x1, _ = two_views(images, config, torch.Generator().manual_seed(seed))
        h1 = F.normalize(embed(encoder, x1), dim=1)
        h0 = F.normalize(embed(encoder, images), dim=1)
        d = torch.cdist(h1, h0).square()
        off = ~torch.eye(len(images), dtype=torch.bool)
        return (d.diagonal().mean() / d[off].mean()).item()

    for mistake in (diagonal_in_denominator, unnormalised, fixed_config, against_the_original):
        feedback = ch05.check_invariance_ratio(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
    assert "AugmentConfig()" in ch05.check_invariance_ratio(fixed_config).hint


# ---- 5.3 -----------------------------------------------------------------------------------------


def siamese_loss(p1, p2, z1, z2):  # the book's solution
    d12 = -F.cosine_similarity(p1, z2.detach(), dim=1).mean()
    d21 = -F.cosine_similarity(p2, z1.detach(), dim=1).mean()
    return d12 / 2 + d21 / 2


def test_siamese_loss() -> None:
    feedback = ch05.check_siamese_loss(siamese_loss)
    assert feedback.passed, feedback
    assert ch05.check_siamese_loss(stub).status == "not done"

    def no_stop_gradient(p1, p2, z1, z2):
        return (-F.cosine_similarity(p1, z2, dim=1).mean()
                - F.cosine_similarity(p2, z1, dim=1).mean()) / 2

    def no_half(p1, p2, z1, z2):
        return 2 * siamese_loss(p1, p2, z1, z2)

    def plus_cosine(p1, p2, z1, z2):
        return -siamese_loss(p1, p2, z1, z2)

    def same_view(p1, p2, z1, z2):
        return siamese_loss(p1, p2, z2, z1)

    def as_a_number(p1, p2, z1, z2):
        return siamese_loss(p1, p2, z1, z2).item()

    def detached_everywhere(p1, p2, z1, z2):
        return siamese_loss(p1.detach(), p2.detach(), z1, z2)

    for mistake in (no_stop_gradient, no_half, plus_cosine, same_view, as_a_number,
                    detached_everywhere):
        feedback = ch05.check_siamese_loss(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
    assert "stop-gradient" in ch05.check_siamese_loss(no_stop_gradient).message
    assert "1/2" in ch05.check_siamese_loss(no_half).hint
    assert "sign" in ch05.check_siamese_loss(plus_cosine).hint
    assert "other" in ch05.check_siamese_loss(same_view).hint
