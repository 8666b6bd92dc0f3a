"""Tests for the procedural glyphs dataset: format, determinism, splits and difficulty."""

from __future__ import annotations

import math

import pytest
import torch

from companion.data.base import ImageDataset
from companion.data.glyphs import GLYPH_SPLITS, load_glyphs, render


def test_format_shapes_dtype_and_range():
    data = load_glyphs("train", alphabets=2, drawings=5)
    assert isinstance(data, ImageDataset)
    assert (data.name, data.split, data.source) == ("glyphs", "train", "generated")
    C = data.num_classes
    assert data.images.shape == (C * 5, 1, 28, 28)
    assert data.images.dtype == torch.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    assert data.labels.dtype == torch.int64
    assert torch.equal(data.labels, torch.arange(C).repeat_interleave(5))  # class-first
    assert set(data.groups.tolist()) == {0, 1}
    assert data.class_names[0] == "alphabet00/char00"
    assert all(name.startswith(f"alphabet{int(a):02d}/char")
               for name, a in zip(data.class_names, data.groups, strict=True))
    assert 20 <= (data.groups == 0).sum() <= 40  # characters per alphabet, Omniglot-like


def test_every_drawing_has_ink_inside_the_frame():
    images = load_glyphs("val", alphabets=2).images[:, 0]  # (M, 28, 28)
    assert bool((images.amax((1, 2)) > 0.9).all())  # a pen stroke is solid somewhere
    ink = images.mean((1, 2))
    assert 0.015 < float(ink.min()) and float(ink.max()) < 0.4  # not blank, not a blob
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
    assert float(border.max()) < 0.02  # characters are not cut off


def test_same_seed_same_images_other_seed_other_images():
    a = load_glyphs("test", alphabets=2, drawings=3, seed=7)
    b = load_glyphs("test", alphabets=2, drawings=3, seed=7)
    c = load_glyphs("test", alphabets=2, drawings=3, seed=8)
    assert torch.equal(a.images, b.images) and a.class_names == b.class_names
    assert a.images.shape != c.images.shape or not torch.allclose(a.images, c.images)


def test_global_random_state_is_untouched():
    before = torch.get_rng_state()
    load_glyphs("train", alphabets=1, drawings=2)
    assert torch.equal(before, torch.get_rng_state())


def test_an_alphabet_is_the_same_whichever_split_loads_it():
    every = load_glyphs("all", drawings=2)
    for split in ("train", "val", "test"):
        part = load_glyphs(split, alphabets=2, drawings=2)
        first = GLYPH_SPLITS[split][0]
        classes = torch.nonzero(every.groups == first).flatten()
        assert part.class_names[: len(classes)] == tuple(every.class_names[c] for c in classes)
        same = every.subset_classes(classes, split)
        assert torch.equal(part.images[: len(same)], same.images)


def test_a_drawing_is_the_same_whatever_the_number_of_drawings():
    three = load_glyphs("val", alphabets=1, drawings=3).images
    five = load_glyphs("val", alphabets=1, drawings=5).images
    C = len(three) // 3
    assert torch.equal(three.view(C, 3, 28, 28), five.view(C, 5, 28, 28)[:, :3])


def test_splits_are_disjoint_by_alphabet():
    train, val, test = (set(GLYPH_SPLITS[s]) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(GLYPH_SPLITS["all"])
    loaded = {s: set(load_glyphs(s, drawings=1).groups.tolist()) for s in ("val", "test")}
    assert loaded["val"] == val and loaded["test"] == test
    every = load_glyphs("all", drawings=1)
    assert every.num_classes >= 1000  # Omniglot has 1,623
    assert set(every.groups.tolist()) == train | val | test


@pytest.mark.parametrize("size", [20, 40])
def test_image_size_is_respected(size):
    data = load_glyphs("test", alphabets=1, drawings=2, image_size=size)
    assert data.images.shape[1:] == (1, size, size)


def test_image_size_only_changes_the_sampling_grid():
    # Rendered at 56 and averaged over 2x2 blocks, a drawing is the 28-pixel drawing.
    small = load_glyphs("train", alphabets=1, drawings=2, image_size=28).images
    large = load_glyphs("train", alphabets=1, drawings=2, image_size=56).images
    pooled = torch.nn.functional.avg_pool2d(large, 2)
    assert float((pooled - small).abs().mean()) < 0.02


def test_render_matches_the_analytic_ink_of_a_straight_stroke():
    # A long horizontal stroke at y = 0.5: ink(d) = min(1, exp((w^2 - d^2) / 2 sigma^2) / 2).
    size, sigma, w = 28, 0.02, 0.04
    x = torch.linspace(0.05, 0.95, 901)
    mid = torch.stack(((x[1:] + x[:-1]) / 2, torch.full((900,), 0.5)), -1)[None]
    ink = render(mid, (x[1:] - x[:-1])[None], torch.tensor([w]), size, sigma)[0]
    d = (torch.arange(size) + 0.5) / size - 0.5
    expected = (0.5 * torch.exp((w**2 - d**2) / (2 * sigma**2))).clamp(max=1.0)
    expected = torch.where(expected < 1e-6, 0.0, expected)  # the pen tip is cut at 5.7 sigma
    torch.testing.assert_close(ink[:, size // 2], expected, atol=1e-4, rtol=1e-3)
    assert math.isclose(float(ink[14, 3:25].std()), 0.0, abs_tol=1e-4)  # even along it


def test_drawings_of_a_character_are_closer_than_drawings_of_different_ones():
    data = load_glyphs("test", alphabets=3, drawings=10)
    C, x = data.num_classes, data.images.flatten(1)
    dist = (torch.cdist(x, x) ** 2).view(C, 10, C, 10).sum((1, 3))  # (C, C) summed over pairs
    within = dist.diagonal() / (10 * 9)  # mean over pairs of different drawings
    between = (dist.sum(1) - dist.diagonal()) / ((C - 1) * 100)
    assert within.mean() < 0.9 * between.mean()
    assert float((within < between).float().mean()) > 0.9  # for (nearly) every character


def _pixel_nn_accuracy(data, episodes, way=5, shot=1, query=15, seed=0):
    """Mean accuracy of 1-NN (squared Euclidean on pixels) over random episodes."""
    g = torch.Generator().manual_seed(seed)
    per_class = int(data.images_per_class()[0])
    x = data.images.flatten(1).view(data.num_classes, per_class, -1)  # class-first
    correct = 0
    for _ in range(episodes):
        classes = torch.randperm(data.num_classes, generator=g)[:way]
        pick = torch.stack([torch.randperm(per_class, generator=g)[: shot + query]
                            for _ in range(way)])
        episode = x[classes[:, None], pick]  # (way, shot + query, pixels)
        support, queries = episode[:, :shot].mean(1), episode[:, shot:].flatten(0, 1)
        predicted = torch.cdist(queries, support).argmin(1)
        correct += int((predicted == torch.arange(way).repeat_interleave(query)).sum())
    return correct / (episodes * way * query)


def test_pixel_nearest_neighbour_is_far_from_chance_and_far_from_perfect():
    # Omniglot: ~42% for pixel 1-NN at 5-way 1-shot; glyphs measure ~50% +- 1%.
    accuracy = _pixel_nn_accuracy(load_glyphs("test"), episodes=200)
    assert 0.35 < accuracy < 0.65


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "training"}, r"'training'.*allowed: train, val, test, all"),
        ({"image_size": 4}, r"image_size .*at least 8.*got 4"),
        ({"image_size": 28.0}, r"image_size .*integer.*got 28\.0"),
        ({"drawings": 0}, r"drawings .*at least 1.*got 0"),
        ({"alphabets": 0}, r"alphabets .*from 1 to 30.*got 0"),
        ({"split": "val", "alphabets": 11}, r"alphabets .*from 1 to 10.*'val'.*got 11"),
    ],
)
def test_bad_arguments_raise_a_helpful_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_glyphs(**kwargs)
