"""Evaluation: the CI against a hand computation, 1-NN against a slow loop, probe features
per image (with running batch-norm statistics) against images embedded one at a time."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from companion.data import Episode, EpisodeSampler, load_dataset
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
from companion.nets import BatchNorm, Conv4

# Tiny models: one intra-op thread (tests/conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert result.ci95 == pytest.approx(1.96 * statistics.stdev(result.accuracies) / math.sqrt(50))
    assert str(result) == f"{100 * result.accuracy:.2f} +- {100 * result.ci95:.2f} % (50 episodes)"
    with pytest.raises(ValueError, match="episodes must be a positive int; got 0"):
        evaluate_episodes(pixel_nearest_neighbour, sampler, episodes=0)


# ---------------------------------------------------------------- probes of a frozen encoder


def _trained_conv4(track_running_stats: bool, dtype: torch.dtype = torch.float32) -> Conv4:
    """A small Conv4 after five SGD steps on random images, so running statistics (if any)
    are neither their initial 0/1 nor any one batch's."""
    torch.manual_seed(0)  # only for the modules' default init; the data use a Generator
    encoder = Conv4(1, hidden=8, norm="batch", track_running_stats=track_running_stats)
    head = torch.nn.Linear(8, 4)
    encoder, head = encoder.to(dtype), head.to(dtype)
    optimiser = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.rand(16, 1, 28, 28, generator=g, dtype=dtype)
        y = torch.randint(0, 4, (16,), generator=g)
        loss = F.cross_entropy(head(encoder(x)), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return encoder


def _classes(classes: int, per_class: int, dtype: torch.dtype = torch.float32, seed: int = 3):
    """28x28 images of ``classes`` classes, class-sorted: a random template per class plus
    noise, so images of one class are alike and a chunk of one class has its own statistics.

    Shape:
        - returns: images ``(classes * per_class, 1, 28, 28)``, labels ``(classes * per_class,)``
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    templates = torch.rand(classes, 1, 28, 28, generator=g, dtype=dtype)
    noise = torch.randn(len(labels), 1, 28, 28, generator=g, dtype=dtype)
    return (templates[labels] + 0.2 * noise).clamp(0, 1), labels


def _alone(encoder: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Each image embedded on its own: the per-image reference."""
    return torch.cat([embed(encoder, images[i:i + 1]) for i in range(len(images))])


def _three_batchings(encoder: torch.nn.Module, images: torch.Tensor):
    """(alone, in one shuffled batch, in class-sorted chunks of 7 with a last chunk of 2)."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(2))
    shuffled = embed(encoder, images[perm])[perm.argsort()]  # back to the images' order
    return _alone(encoder, images), shuffled, embed(encoder, images, batch_size=7)


def test_probe_embedding_of_an_image_does_not_depend_on_its_batch() -> None:
    encoder = _trained_conv4(track_running_stats=True).train()
    norms = [m for m in encoder.modules() if isinstance(m, BatchNorm)]
    assert all(int(m.num_batches_tracked) == 5 for m in norms)
    assert not any(torch.equal(m.running_mean, torch.zeros(8)) for m in norms)
    assert not any(torch.equal(m.running_var, torch.ones(8)) for m in norms)
    running = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    images, labels = _classes(classes=4, per_class=8)  # 32 images, class-sorted
    assert torch.equal(labels, torch.arange(4).repeat_interleave(8))
    alone, shuffled, chunks = _three_batchings(encoder, images)
    assert encoder.training  # embed gave the encoder back in train mode ...
    for m, (mean, var) in zip(norms, running, strict=True):  # ... and did not update its stats
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert alone.shape == (32, 8) and alone.abs().max() > 0.1  # not trivially equal
    torch.testing.assert_close(shuffled, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(chunks, alone, rtol=0, atol=1e-6)
    assert not chunks.requires_grad
    encoder.eval()
    torch.testing.assert_close(embed(encoder, images, batch_size=5), alone, rtol=0, atol=1e-6)
    assert not encoder.training  # eval mode is kept too


def test_transductive_batchnorm_embedding_depends_on_the_batch() -> None:
    """The meta-learners' default BatchNorm normalises each chunk with its own statistics,
    in eval mode too (MAML's transductive setting), so it is no encoder for a probe."""
    encoder = _trained_conv4(track_running_stats=False)
    assert list(encoder.buffers()) == []
    images, _ = _classes(classes=4, per_class=8)
    alone, shuffled, chunks = _three_batchings(encoder, images)
    assert (shuffled - alone).abs().max() > 1e-2
    assert (chunks - alone).abs().max() > 1e-2
    assert (chunks - shuffled).abs().max() > 1e-2


def test_embed_errors_and_an_encoder_without_parameters() -> None:
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(embed(torch.nn.Flatten(), x, batch_size=2), x.flatten(1))
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        embed(torch.nn.Flatten(), x, batch_size=0)
    with pytest.raises(ValueError, match=r"at least one image.*got \(0, 1, 4, 4\)"):
        embed(torch.nn.Flatten(), x[:0])


def test_prototype_probe_equals_a_hand_built_prototype_classifier() -> None:
    episode = EpisodeSampler(load_dataset("digits", "test"), 3, 2, 4, seed=0).sample()
    logits = {m: prototype_probe(torch.nn.Flatten(), episode, m) for m in ("cosine", "sqeuclidean")}
    support, query = episode.support_x.flatten(1), episode.query_x.flatten(1)
    for j, q in enumerate(query):
        for c in range(3):
            prototype = support[episode.support_y == c].mean(0)  # Snell et al., eq. 1
            cos = float(torch.dot(q, prototype) / (q.norm() * prototype.norm()))
            assert float(logits["cosine"][j, c]) == pytest.approx(cos - 1, abs=1e-5)
            sq = float((q - prototype).square().sum())
            assert float(logits["sqeuclidean"][j, c]) == pytest.approx(-sq, rel=1e-5, abs=1e-4)
    swapped = type(episode)(episode.support_x.flip(0), episode.support_y.flip(0),
                            episode.query_x, episode.query_y)
    with pytest.raises(ValueError, match="class-first"):
        prototype_probe(torch.nn.Flatten(), swapped)
    with pytest.raises(ValueError, match="unknown metric 'l1'; allowed: sqeuclidean, cosine"):
        prototype_probe(torch.nn.Flatten(), episode, "l1")


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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_probes_on_a_device_agree_with_a_per_image_cpu_reference(device: str) -> None:
    # float64 so that kernel choice cannot move a vote; the reference is computed on the CPU
    # from images embedded one at a time.
    encoder = _trained_conv4(track_running_stats=True, dtype=torch.float64)
    images, labels = _classes(classes=4, per_class=10, dtype=torch.float64)
    x, y = _classes(5, 5, torch.float64, seed=4)  # a 5-way 2-shot 3-query episode from them
    shot = (torch.arange(25) % 5) < 2
    episode = Episode(x[shot], y[shot], x[~shot], y[~shot])  # class-first
    train, test = split_per_class(labels)
    reference = _alone(encoder, images)
    z_support, z_query = _alone(encoder, episode.support_x), _alone(encoder, episode.query_x)
    prototypes = torch.stack([z_support[episode.support_y == c].mean(0) for c in range(5)])
    reference_logits = F.cosine_similarity(z_query[:, None], prototypes[None], dim=-1) - 1
    encoder = encoder.to(device)
    z = embed(encoder, images)  # the images follow the encoder to its device
    assert z.device.type == device
    torch.testing.assert_close(z.cpu(), reference, rtol=1e-9, atol=1e-9)
    logits = prototype_probe(encoder, episode)
    assert logits.device.type == device
    torch.testing.assert_close(logits.cpu(), reference_logits, rtol=1e-9, atol=1e-9)
    y = labels.to(device)
    accuracy = linear_probe(z[train], y[train], z[test], y[test])
    expected = linear_probe(reference[train], labels[train], reference[test], labels[test])
    assert abs(accuracy - expected) <= 1 / len(test)  # L-BFGS may tip one borderline image
    assert knn_probe(z[train], y[train], z[test], y[test], k=5) == \
        knn_probe(reference[train], labels[train], reference[test], labels[test], k=5)
