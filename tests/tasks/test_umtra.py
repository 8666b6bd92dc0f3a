"""UMTRA (Khodadadeh et al., 2019, Algorithm 1): the support is ``N`` distinct pool images, the
queries their augmentations."""

from __future__ import annotations

import pytest
import torch

from companion.data.augment import AugmentConfig
from companion.tasks import UMTRA

M = 40


def _pool() -> torch.Tensor:
    """``M`` images, image ``i`` a constant ``i / M`` (so an image names its own index)."""
    return (torch.arange(M, dtype=torch.float32) / M).view(M, 1, 1, 1).expand(M, 1, 8, 8).clone()


def test_the_support_is_distinct_pool_images_and_identity_augmentation_copies_them():
    source = UMTRA(_pool(), ways=6, shots=1, queries=3, augment=AugmentConfig(), seed=0)
    episode = source.sample()
    index = (episode.support_x[:, 0, 0, 0] * M).round().long()
    assert len(set(index.tolist())) == 6  # N different images, one per class
    assert torch.equal(episode.support_x, _pool()[index])
    # with an augmentation that changes nothing, every query is its class's image
    assert torch.equal(episode.query_x, episode.support_x.repeat_interleave(3, dim=0))


def test_queries_are_augmentations_and_the_support_stays_as_it_is_by_default():
    images = torch.rand(M, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    source = UMTRA(images, ways=5, shots=2, queries=2, seed=0)
    episode = source.sample()
    support = episode.support_x.view(5, 2, 1, 12, 12)
    rows = [int((images - s).abs().flatten(1).sum(1).argmin()) for s in support[:, 0]]
    assert torch.equal(support[:, 0], images[rows])  # shot 0: the image itself
    assert not torch.equal(support[:, 1], support[:, 0])  # shot 1: an augmentation of it
    assert not torch.equal(episode.query_x.view(5, 2, 1, 12, 12)[:, 0], support[:, 0])


def test_augment_support_augments_every_support_image():
    images = torch.rand(M, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    episode = UMTRA(images, ways=5, augment_support=True, seed=0).sample()
    distance = (episode.support_x[:, None] - images[None]).abs().flatten(2).sum(2)  # (5, M)
    assert (distance.min(1).values > 0).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"ways": M + 1}, "ways must be 1..40"),
    ({"ways": 0}, "ways"),
    ({"ways": 2, "queries": 0}, "queries"),
])
def test_impossible_tasks_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UMTRA(_pool(), **kwargs)


def test_only_image_tensors_or_datasets_are_accepted():
    with pytest.raises(TypeError, match="ImageDataset or an image tensor"):
        UMTRA([[0.0]], ways=2)
    with pytest.raises(ValueError, match=r"\(M, C, H, W\)"):
        UMTRA(torch.rand(5, 8, 8), ways=2)
