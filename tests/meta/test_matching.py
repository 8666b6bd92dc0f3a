"""Matching Networks: eq. 1-2 against slow loops, FCE shapes and gradients, a short run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from companion.data import Episode, TaskBatch
from companion.meta.matching import (
    FullContextEmbedding,
    MatchingConfig,
    MatchingNet,
    cosine_attention,
    matching_log_probs,
)
from companion.nets import Conv4
from tests.meta.conftest import short_glyph_run


def seeded(make, seed=0):
    """``make()`` under a fixed seed, leaving the global RNG as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def random_embeddings(support=6, queries=5, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(support, dim, generator=g, dtype=torch.float64),
            torch.randn(queries, dim, generator=g, dtype=torch.float64))


def random_batch(tasks=2, ways=3, shots=2, queries=2, size=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.rand(tasks, ways * shots, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(shots).expand(tasks, -1),
        torch.rand(tasks, ways * queries, 1, size, size, generator=g),
        torch.arange(ways).repeat_interleave(queries).expand(tasks, -1),
    )


def slow_attention(z_query, z_support, scale):
    """Eq. 2 written out: exp(c(f(x), g(x_i))) / sum_j exp(c(f(x), g(x_j)))."""
    def cos(u, v):
        dot = sum(a * b for a, b in zip(u, v, strict=True))
        return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))

    rows = []
    for q in z_query.tolist():
        e = [math.exp(scale * cos(q, s)) for s in z_support.tolist()]
        rows.append([x / sum(e) for x in e])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 7.0])
def test_attention_equals_a_slow_loop_of_the_cosine_softmax(scale: float) -> None:
    z_support, z_query = random_embeddings()
    a = cosine_attention(z_query, z_support, scale=scale)
    assert torch.allclose(a, slow_attention(z_query, z_support, scale))
    assert torch.allclose(a.sum(-1), torch.ones(5, dtype=torch.float64))


def test_log_probs_are_the_log_of_the_attention_weighted_label_sum() -> None:
    z_support, z_query = random_embeddings(support=7)
    support_y = torch.tensor([2, 0, 1, 0, 2, 1, 1])  # eq. 1 needs no class-first order
    a = slow_attention(z_query, z_support, 1.0)
    expected = torch.tensor([[math.log(sum(a[j, i] for i in range(7) if support_y[i] == k))
                              for k in range(3)] for j in range(5)], dtype=torch.float64)
    log_p = matching_log_probs(z_support, support_y, z_query)
    assert torch.allclose(log_p, expected)
    batched = matching_log_probs(torch.stack([z_support, -z_support]),
                                 torch.stack([support_y, support_y]),
                                 torch.stack([z_query, z_query]))
    assert torch.allclose(batched[0], log_p)
    assert torch.allclose(batched[1], matching_log_probs(-z_support, support_y, z_query))


def test_log_probs_stay_finite_when_a_class_gets_no_attention() -> None:
    z_support = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    log_p = matching_log_probs(z_support, torch.tensor([0, 1]), torch.tensor([[1.0, 0.0]]),
                               scale=1000.0)  # exp(-2000) underflows to 0
    assert torch.isfinite(log_p).all() and log_p[0, 0] == 0.0


def test_identity_encoder_classifies_separated_clusters_perfectly() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.eye(4, dtype=torch.float64)  # orthogonal directions: cosine 0
    support_x = centres.repeat_interleave(3, 0) + torch.randn(12, 4, generator=g,
                                                             dtype=torch.float64)
    query_x = centres.repeat_interleave(5, 0) + torch.randn(20, 4, generator=g,
                                                           dtype=torch.float64)
    labels = torch.arange(4)
    episode = Episode(support_x, labels.repeat_interleave(3), query_x, labels.repeat_interleave(5))
    net = MatchingNet(nn.Identity())
    log_p = net.classify(episode)
    assert log_p.shape == (20, 4) and log_p.dtype == torch.float64
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(20, dtype=torch.float64))
    assert torch.equal(log_p.argmax(-1), episode.query_y)
    _, logs = net.meta_loss(TaskBatch.stack([episode, episode]))
    assert logs["accuracy"] == 1.0


def test_meta_loss_gradient_reaches_the_encoder() -> None:
    net = seeded(lambda: MatchingNet(Conv4(hidden=8)))
    loss, logs = net.meta_loss(random_batch())
    assert loss.ndim == 0 and set(logs) == {"accuracy", "loss"}
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fce_forward_backward_shapes(dtype: torch.dtype) -> None:
    config = MatchingConfig(fce=True, fce_steps=3)
    net = seeded(lambda: MatchingNet(Conv4(hidden=8), config, feature_dim=8)).to(dtype)
    batch = random_batch(tasks=2, ways=3, shots=2, queries=2).to(dtype=dtype)
    loss, _ = net.meta_loss(batch)
    assert loss.dtype == dtype
    loss.backward()
    for name, p in net.named_parameters():  # encoder, bidirectional LSTM and attLSTM
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    log_p = net.classify(batch[0])
    assert log_p.shape == (6, 3) and log_p.dtype == dtype
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(6, dtype=dtype))


def test_fce_embeddings_see_the_support_set() -> None:
    fce = seeded(lambda: FullContextEmbedding(dim=4, steps=2)).double()
    g = torch.Generator().manual_seed(0)
    support = torch.randn(1, 6, 4, generator=g, dtype=torch.float64)
    query = torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    g1, f1 = fce(support, query)
    assert g1.shape == (1, 6, 4) and f1.shape == (1, 3, 4)
    g2, _ = fce(support.flip(1), query)  # same set, other order; the BiLSTM sees the order
    assert not torch.allclose(f1, fce(support + 1.0, query)[1])  # f(x, S) depends on S
    assert not torch.allclose(g1, g2.flip(1))
    # Queries are embedded independently of each other: one at a time gives the same.
    assert torch.allclose(fce(support, query[:, :1])[1], f1[:, :1])


def test_errors_name_what_was_given() -> None:
    z_support, z_query = random_embeddings()
    with pytest.raises(ValueError, match=r"every class 0..N-1.*\[0, 0, 2, 2, 3, 3\]"):
        matching_log_probs(z_support, torch.tensor([0, 0, 2, 2, 3, 3]), z_query)
    with pytest.raises(ValueError, match="integer labels"):
        matching_log_probs(z_support, torch.zeros(6), z_query)
    with pytest.raises(ValueError, match=r"labels 0..N-1; got \[-1"):
        matching_log_probs(z_support, torch.tensor([-1, 0, 1, 1, 2, 2]), z_query)
    with pytest.raises(ValueError, match=r"support_y must be \(..., k\).*\(5,\) and \(6, 4\)"):
        matching_log_probs(z_support, torch.arange(5), z_query)
    with pytest.raises(ValueError, match=r"z_query \(..., M, D\).*\(5, 3\) and \(6, 4\)"):
        cosine_attention(z_query[:, :3], z_support)
    with pytest.raises(ValueError, match="fce=True needs feature_dim.*got None"):
        MatchingNet(nn.Identity(), MatchingConfig(fce=True))
    with pytest.raises(ValueError, match="fce_steps must be a positive int; got 0"):
        MatchingConfig(fce_steps=0)
    with pytest.raises(TypeError, match="MatchingConfig; got dict"):
        MatchingNet(nn.Identity(), {"fce": True})
    episode = Episode(z_support, torch.arange(3).repeat_interleave(2), z_query,
                      torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"TaskBatch; got Episode"):
        MatchingNet(nn.Identity()).meta_loss(episode)


@pytest.mark.slow
def test_short_training_beats_pixel_nearest_neighbour(one_thread) -> None:
    # 60 steps of 5-way 1-shot, 3 queries, meta-batch 4 (~5 s): test accuracy ~64% against
    # 53% for pixel 1-NN on the same 50 episodes (the bounded cosine of eq. 2 learns slower
    # than ProtoNet's distances).
    losses, learned, pixels = short_glyph_run(seeded(lambda: MatchingNet(Conv4(hidden=32))))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.1, (first, last)
    assert learned.accuracy > pixels.accuracy + 0.05, (str(learned), str(pixels))
