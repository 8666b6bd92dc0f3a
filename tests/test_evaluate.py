"""Evaluation: the CI against a hand computation, 1-NN against a slow loop."""

from __future__ import annotations

import math

import pytest
import torch

from companion.data import EpisodeSampler, load_dataset
from companion.evaluate import (
    EvalResult,
    episode_accuracy,
    evaluate_episodes,
    mean_ci95,
    nearest_neighbour_logits,
    pairwise_distance,
    pixel_nearest_neighbour,
)


def test_mean_ci95_by_hand() -> None:
    values = [0.2, 0.4, 0.6, 0.8]
    # mean 0.5; sample variance ((.3^2 + .1^2) * 2) / 3 = 0.2 / 3; s = 0.2582
    s = math.sqrt(0.2 / 3)
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * s / 2)
    assert ci == pytest.approx(0.25303, abs=1e-5)
    assert math.isnan(mean_ci95([0.7])[1])
    with pytest.raises(ValueError, match="empty"):
        mean_ci95([])


def test_pairwise_distance_matches_cdist_and_cosine_definition() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 3, 4, generator=g), torch.randn(5, 12, generator=g)
    ref = torch.cdist(a.flatten(1).double(), b.double()).pow(2)
    assert torch.allclose(pairwise_distance(a, b).double(), ref, atol=1e-4)
    cos = torch.stack([torch.stack([1 - torch.dot(x, y) / (x.norm() * y.norm()) for y in b])
                       for x in a.flatten(1)])
    assert torch.allclose(pairwise_distance(a, b, "cosine"), cos, atol=1e-5)
    with pytest.raises(ValueError, match="allowed: sqeuclidean, cosine"):
        pairwise_distance(a, b, "manhattan")


def slow_nearest_neighbour(support_x, support_y, query_x) -> torch.Tensor:
    predictions = []
    for q in query_x:
        best, label = math.inf, -1
        for s, y in zip(support_x, support_y, strict=True):
            d = float(((q - s) ** 2).sum())
            if d < best:
                best, label = d, int(y)
        predictions.append(label)
    return torch.tensor(predictions)


def test_nearest_neighbour_equals_slow_loop() -> None:
    ds = load_dataset("digits", "test")
    for ep in EpisodeSampler(ds, 5, 3, 6, seed=1).episodes(5):
        fast = pixel_nearest_neighbour(ep).argmax(1)
        assert torch.equal(fast, slow_nearest_neighbour(ep.support_x, ep.support_y, ep.query_x))


def test_nearest_neighbour_logits_are_minus_min_distance() -> None:
    support = torch.tensor([[0.0], [10.0], [1.0], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    logits = nearest_neighbour_logits(support, labels, torch.tensor([[3.0]]))
    assert logits.tolist() == [[-9.0, -1.0]]


def test_episode_accuracy_takes_logits_or_labels() -> None:
    y = torch.tensor([0, 1, 1, 2])
    assert episode_accuracy(torch.tensor([0, 1, 2, 2]), y) == 0.75
    assert episode_accuracy(torch.eye(3)[[0, 1, 1, 0]], y) == 0.75
    with pytest.raises(ValueError, match="one prediction per query"):
        episode_accuracy(torch.zeros(3), y)


def test_evaluate_episodes_on_digits_is_far_above_chance() -> None:
    sampler = EpisodeSampler(load_dataset("digits", "test"), 5, 1, 10, seed=0)
    result = evaluate_episodes(pixel_nearest_neighbour, sampler, episodes=50)
    assert isinstance(result, EvalResult)
    assert result.episodes == 50 == len(result.accuracies)
    assert result.accuracy == pytest.approx(sum(result.accuracies) / 50)
    # Digits are easy in pixel space; chance is 20%.
    assert 0.6 < result.accuracy < 1.0
    assert 0 < result.ci95 < 0.1
    assert "episodes" in str(result)
    with pytest.raises(ValueError, match="at least 1"):
        evaluate_episodes(pixel_nearest_neighbour, sampler, episodes=0)
