"""LASIUM (Khodadadeh et al., 2021): anchors in a latent space, classes around them."""

from __future__ import annotations

import pytest
import torch

from companion.tasks import LASIUM

D = 6


def _as_images(z: torch.Tensor) -> torch.Tensor:
    """The identity "generator": a code becomes a 1 x 1 x D image, so tasks show their codes."""
    return z.view(-1, 1, 1, D)


def _codes(source: LASIUM) -> tuple[torch.Tensor, torch.Tensor]:
    episode = source.sample()
    n, k, q = source.ways, source.shots, source.queries
    return (episode.support_x.view(n, k, D), episode.query_x.view(n, q, D))


def test_other_class_codes_lie_nearer_their_own_anchor():
    """OC: z' = z_i + a (z_j - z_i) with a < 1/2 is nearer z_i than z_j, for every code."""
    anchors = torch.randn(30, D, generator=torch.Generator().manual_seed(0))
    source = LASIUM(_as_images, D, ways=5, shots=3, queries=4, variant="oc", ratio=0.3,
                    anchors=anchors, seed=0)
    z = source.draw_anchors()
    codes = source.in_class_codes(z)  # (5, 7, D)
    distance = torch.cdist(codes.flatten(0, 1), z).view(5, 7, 5)
    assert (distance.argmin(-1) == torch.arange(5)[:, None]).all()
    # and every code is on a segment from its anchor to another anchor, at the given ratio
    for i in range(5):
        offsets = (codes[i] - z[i]) / 0.3 + z[i]  # the z_j it moved towards
        assert all(torch.isclose(o, z, atol=1e-5).all(1).sum() == 1 for o in offsets)


def test_noise_codes_scatter_around_the_anchor_with_sigma():
    source = LASIUM(_as_images, D, ways=2, shots=500, queries=500, variant="n", noise=0.5,
                    seed=0)
    z = source.draw_anchors()
    codes = source.in_class_codes(z)  # (2, 1000, D)
    assert torch.allclose(codes.mean(1), z, atol=0.06)  # sd of the mean 0.5 / sqrt(1000)
    assert abs(float((codes - z[:, None]).std()) - 0.5) < 0.02


def test_the_task_holds_the_generated_images_of_its_codes_class_first():
    anchors = torch.randn(10, D, generator=torch.Generator().manual_seed(1)) * 3
    source = LASIUM(_as_images, D, ways=4, shots=2, queries=3, anchors=anchors, seed=0)
    support, query = _codes(source)
    centre = torch.cat([support, query], 1).mean(1)  # (4, D): near the class's anchor
    nearest = torch.cdist(centre, anchors).argmin(1)
    assert len(set(nearest.tolist())) == 4  # four different anchors, one per class


def test_prior_anchors_respect_the_minimum_distance():
    source = LASIUM(_as_images, D, ways=5, min_distance=6.0, seed=0)
    for _ in range(20):
        assert torch.pdist(source.draw_anchors()).pow(2).min() > 6.0
    impossible = LASIUM(_as_images, D, ways=5, min_distance=1e6, seed=0)
    with pytest.raises(ValueError, match="lower it"):
        impossible.draw_anchors()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 0.5}, r"ratio must be in \(0, 0.5\)"),
    ({"variant": "x"}, "unknown variant 'x'"),
    ({"anchors": torch.zeros(3, D)}, "M >= ways = 5"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LASIUM(_as_images, D, ways=5, **kwargs)
