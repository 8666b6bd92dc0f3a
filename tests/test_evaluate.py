"""Evaluation: the CI against a hand computation, 1-NN against a slow loop."""

from __future__ import annotations

import math

import pytest
import torch

from companion.data import EpisodeSampler, load_dataset
from companion.evaluate import (
    EvalResult,
    embed,
    episode_accuracy,
    evaluate_episodes,
    knn_probe,
    linear_probe,
    mean_ci95,
    nearest_neighbour_logits,
    pairwise_distance,
    pixel_nearest_neighbour,
    prototype_probe,
    split_per_class,
)
from companion.nets import Conv4


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


# ---------------------------------------------------------------- probes of a frozen encoder


def test_embed_in_batches_equals_one_forward_in_eval_mode() -> None:
    torch.manual_seed(0)
    encoder = Conv4(1, hidden=4).train()
    x = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    z = embed(encoder, x, batch_size=3)
    assert encoder.training  # restored
    with torch.no_grad():
        # The package's BatchNorm normalises with each batch's statistics, even in eval mode,
        # so the reference is the same 3-image batches.
        reference = torch.cat([encoder(x[i:i + 3]) for i in range(0, 10, 3)])
    torch.testing.assert_close(z, reference)
    assert not z.requires_grad


def test_split_per_class_partitions_each_class() -> None:
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, 0])
    train, test = split_per_class(labels)
    assert sorted(torch.cat([train, test]).tolist()) == list(range(9))
    assert train.tolist() == [0, 2, 1, 3, 6] and test.tolist() == [4, 8, 5, 7]
    with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\)"):
        split_per_class(labels, 1.0)


def test_knn_probe_equals_a_slow_vote() -> None:
    g = torch.Generator().manual_seed(0)
    train_z, test_z = torch.randn(40, 5, generator=g), torch.randn(15, 5, generator=g)
    train_y = torch.randint(0, 3, (40,), generator=g)
    test_y = torch.randint(0, 3, (15,), generator=g)
    for k in (1, 5):
        right = 0
        for z, y in zip(test_z, test_y, strict=True):
            cos = [float(torch.nn.functional.cosine_similarity(z, t, dim=0)) for t in train_z]
            order = sorted(range(40), key=lambda i: -cos[i])[:k]
            votes = {}  # class -> [votes, sum of k - rank]: ties go to nearer neighbours
            for rank, i in enumerate(order):
                vote = votes.setdefault(int(train_y[i]), [0, 0])
                vote[0], vote[1] = vote[0] + 1, vote[1] + k - rank
            right += max(votes, key=lambda c: tuple(votes[c])) == int(y)
        assert knn_probe(train_z, train_y, test_z, test_y, k=k, temperature=None) == \
            pytest.approx(right / 15)
    with pytest.raises(ValueError, match=r"k must be an int in 1\.\.40"):
        knn_probe(train_z, train_y, test_z, test_y, k=41)


def test_weighted_knn_probe_equals_a_slow_vote() -> None:
    """Wu et al. (2018) eq. 7: each of the k neighbours adds exp(cos / tau) to its class."""
    g = torch.Generator().manual_seed(1)
    train_z, test_z = torch.randn(40, 5, generator=g), torch.randn(30, 5, generator=g)
    train_y = torch.randint(0, 4, (40,), generator=g)
    test_y = torch.randint(0, 4, (30,), generator=g)
    for k, tau in ((5, 0.07), (20, 0.5)):
        right = 0
        for z, y in zip(test_z, test_y, strict=True):
            cos = [float(torch.nn.functional.cosine_similarity(z, t, dim=0)) for t in train_z]
            votes = [0.0] * 4
            for i in sorted(range(40), key=lambda i: -cos[i])[:k]:
                votes[int(train_y[i])] += math.exp(cos[i] / tau)
            right += max(range(4), key=votes.__getitem__) == int(y)
        assert knn_probe(train_z, train_y, test_z, test_y, k=k, temperature=tau) == \
            pytest.approx(right / 30)
    with pytest.raises(ValueError, match="temperature must be positive"):
        knn_probe(train_z, train_y, test_z, test_y, temperature=0.0)


def test_linear_probe_separates_separable_classes_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.eye(4)
    y = torch.arange(4).repeat(30)
    z = centres[y] + torch.randn(120, 4, generator=g)
    train, test = split_per_class(y)
    assert linear_probe(z[train], y[train], z[test], y[test]) > 0.95
    noise = torch.randn(120, 4, generator=g)  # features that know nothing of the labels
    assert linear_probe(noise[train], y[train], noise[test], y[test]) < 0.5


@pytest.mark.gpu
def test_probes_run_on_cuda_and_agree_with_the_cpu() -> None:
    # float64 so that kernel choice cannot move a vote; the CPU run is the reference.
    torch.manual_seed(0)
    encoder = Conv4(1, 8).double()
    images = torch.rand(40, 1, 28, 28, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(10)
    episode = EpisodeSampler(load_dataset("glyphs", "test"), 5, 2, 3, seed=0).sample()
    episode = type(episode)(episode.support_x.double(), episode.support_y,
                            episode.query_x.double(), episode.query_y)
    train, test = split_per_class(labels)
    results = {}
    for device in ("cpu", "cuda"):
        encoder = encoder.to(device)
        z = embed(encoder, images)  # the images follow the encoder to its device
        assert z.device.type == device
        y = labels.to(device)
        results[device] = (z.cpu(), prototype_probe(encoder, episode).cpu(),
                           linear_probe(z[train], y[train], z[test], y[test]),
                           knn_probe(z[train], y[train], z[test], y[test], k=5))
    cpu, cuda = results["cpu"], results["cuda"]
    torch.testing.assert_close(cuda[0], cpu[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cuda[1], cpu[1], rtol=1e-9, atol=1e-9)
    assert abs(cuda[2] - cpu[2]) <= 1 / len(test)  # L-BFGS may tip one borderline image
    assert cuda[3] == cpu[3]
