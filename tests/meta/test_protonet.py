"""Prototypical Networks: eq. 1-2 against explicit loops, invariances, and a short training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.data import Episode, TaskBatch
from companion.meta.protonet import ProtoNet, ProtoNetConfig, protonet_logits, prototypes
from companion.nets import Conv4
from tests.meta.conftest import short_glyph_run


def class_first(ways: int, shots: int) -> torch.Tensor:
    return torch.arange(ways).repeat_interleave(shots)


def random_embeddings(ways=3, shots=2, queries=5, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_support = torch.randn(ways * shots, dim, generator=g, dtype=torch.float64)
    z_query = torch.randn(queries, dim, generator=g, dtype=torch.float64)
    return z_support, class_first(ways, shots), z_query


def seeded(make, seed=0):
    """``make()`` under a fixed seed, leaving the global RNG as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def random_batch(tasks=2, ways=3, shots=2, queries=2, size=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.rand(tasks, ways * shots, 1, size, size, generator=g),
        class_first(ways, shots).expand(tasks, -1),
        torch.rand(tasks, ways * queries, 1, size, size, generator=g),
        class_first(ways, queries).expand(tasks, -1),
    )


def test_prototypes_equal_masked_class_means() -> None:
    z_support, support_y, _ = random_embeddings(ways=4, shots=3)
    mask = F.one_hot(support_y).to(z_support.dtype)  # (N*K, N)
    expected = (mask.T @ z_support) / mask.sum(0)[:, None]  # sum over each class / its count
    assert torch.allclose(prototypes(z_support, 4), expected)


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_logits_equal_double_loop_of_the_formula(metric: str) -> None:
    z_support, support_y, z_query = random_embeddings()
    scale = 2.5
    logits = protonet_logits(z_support, support_y, z_query, metric=metric, scale=scale)
    expected = torch.empty(len(z_query), 3, dtype=torch.float64)
    for j, q in enumerate(z_query.tolist()):
        for k in range(3):
            rows = [z.tolist() for z, y in zip(z_support, support_y, strict=True) if y == k]
            c = [sum(col) / len(rows) for col in zip(*rows, strict=True)]  # eq. 1
            if metric == "sqeuclidean":
                expected[j, k] = -scale * sum((a - b) ** 2 for a, b in zip(q, c, strict=True))
            else:
                dot = sum(a * b for a, b in zip(q, c, strict=True))
                norms = sum(a * a for a in q) ** 0.5 * sum(b * b for b in c) ** 0.5
                expected[j, k] = scale * dot / norms
    assert torch.allclose(logits, expected)


def test_batched_logits_equal_a_loop_over_tasks() -> None:
    tasks = [random_embeddings(seed=s) for s in range(3)]
    z_s, y, z_q = (torch.stack(parts) for parts in zip(*tasks, strict=True))
    batched = protonet_logits(z_s, y, z_q)
    for t, (zs, ys, zq) in enumerate(tasks):
        assert torch.allclose(batched[t], protonet_logits(zs, ys, zq))


def test_permuting_shots_within_a_class_keeps_the_logits() -> None:
    z_support, support_y, z_query = random_embeddings(ways=3, shots=4)
    perm = torch.cat([k * 4 + torch.randperm(4, generator=torch.Generator().manual_seed(k))
                      for k in range(3)])
    assert not torch.equal(perm, torch.arange(12))
    assert torch.allclose(protonet_logits(z_support[perm], support_y, z_query),
                          protonet_logits(z_support, support_y, z_query))


def test_identity_encoder_classifies_separated_clusters_perfectly() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.eye(4, dtype=torch.float64)  # 4 classes in 4-d, far apart
    support_x = centres.repeat_interleave(3, 0) + 0.3 * torch.randn(12, 4, generator=g,
                                                                   dtype=torch.float64)
    query_x = centres.repeat_interleave(5, 0) + 0.3 * torch.randn(20, 4, generator=g,
                                                                  dtype=torch.float64)
    episode = Episode(support_x, class_first(4, 3), query_x, class_first(4, 5))
    for metric in ("sqeuclidean", "cosine"):
        net = ProtoNet(nn.Identity(), ProtoNetConfig(metric=metric))
        logits = net.classify(episode)
        assert logits.shape == (20, 4) and logits.dtype == torch.float64
        assert torch.equal(logits.argmax(-1), episode.query_y)
        _, logs = net.meta_loss(TaskBatch.stack([episode, episode]))
        assert logs["accuracy"] == 1.0


def test_meta_loss_gradient_reaches_the_encoder_and_learned_scale() -> None:
    config = ProtoNetConfig(metric="cosine", scale=10.0, learn_scale=True)
    net = seeded(lambda: ProtoNet(Conv4(hidden=8), config))
    loss, logs = net.meta_loss(random_batch())
    assert loss.ndim == 0 and set(logs) == {"accuracy", "loss"}
    assert all(isinstance(v, float) for v in logs.values())
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert isinstance(net.scale, nn.Parameter)


def test_meta_loss_equals_the_mean_over_episodes_without_batch_norm() -> None:
    # One encoder forward for the whole meta-batch = a loop over its episodes, when the
    # encoder has no batch statistics (with BN, statistics are over the meta-batch).
    net = seeded(lambda: ProtoNet(Conv4(hidden=8, norm="none"))).double()
    batch = random_batch(tasks=3).to(dtype=torch.float64)
    loss, _ = net.meta_loss(batch)
    assert loss.dtype == torch.float64
    per_task = [F.cross_entropy(net.classify(e), e.query_y) for e in batch]
    assert torch.allclose(loss, torch.stack(per_task).mean())


def test_errors_name_what_was_given() -> None:
    z_support, support_y, z_query = random_embeddings(ways=3, shots=2)
    with pytest.raises(ValueError, match=r"class-first.*\[0, 1, 0, 1, 2, 2\]"):
        protonet_logits(z_support, torch.tensor([0, 1, 0, 1, 2, 2]), z_query)
    with pytest.raises(ValueError, match="integer labels"):
        protonet_logits(z_support, support_y.double(), z_query)
    with pytest.raises(ValueError, match=r"expected z_support.*\(6, 4\), \(5,\)"):
        protonet_logits(z_support, support_y[:5], z_query)
    with pytest.raises(ValueError, match="unknown metric 'l1'"):
        protonet_logits(z_support, support_y, z_query, metric="l1")
    with pytest.raises(ValueError, match=r"divisible by ways=4; got \(6, 4\)"):
        prototypes(z_support, 4)
    with pytest.raises(ValueError, match="unknown metric"):
        ProtoNetConfig(metric="euclid")
    with pytest.raises(ValueError, match="scale must be a positive number; got 0"):
        ProtoNetConfig(scale=0)
    net = ProtoNet(nn.Identity())
    episode = Episode(z_support, support_y, z_query, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"TaskBatch; got Episode \(wrap it"):
        net.meta_loss(episode)
    with pytest.raises(TypeError, match="Episode; got TaskBatch"):
        net.classify(TaskBatch.stack([episode]))


@pytest.mark.slow
def test_short_training_beats_pixel_nearest_neighbour(one_thread) -> None:
    # 60 steps of 5-way 1-shot, 3 queries, meta-batch 4 (~5 s): test accuracy ~72% against
    # 53% for pixel 1-NN on the same 50 episodes.
    losses, learned, pixels = short_glyph_run(seeded(lambda: ProtoNet(Conv4(hidden=32))))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert learned.accuracy > pixels.accuracy + 0.1, (str(learned), str(pixels))
