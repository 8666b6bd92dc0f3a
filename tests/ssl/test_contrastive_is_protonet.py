"""SimCLR's NT-Xent is a prototypical-network loss on an episode made of views (Ni et al.,
2022; chapter 8), under stated conditions, and only under them.

The episode: the ``N`` images of a batch are its ``N`` classes, one view of each is the
support (one shot, so the prototype is that view's embedding), the other view is the
query. The conditions:

1. the ProtoNet scores with the cosine at scale ``1 / tau`` (NT-Xent's normalised,
   temperature-scaled similarity);
2. negatives come from the other view only: NT-Xent's ``N - 1`` same-view negatives are
   the one difference, and masking them makes the two losses equal;
3. both directions: NT-Xent averages over anchors in both views, so the ProtoNet loss is
   averaged over the episode and its mirror (support and query swapped).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.data.episodes import Episode, TaskBatch
from companion.meta.protonet import ProtoNet, ProtoNetConfig, protonet_logits
from companion.ssl.simclr import nt_xent, nt_xent_logits

N, D, TAU = 6, 5, 0.2


def _views(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(N, D, generator=g, dtype=torch.float64)
    return z1, z1 + 0.5 * torch.randn(N, D, generator=g, dtype=torch.float64)


def _cross_view_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """NT-Xent with the same-view negatives masked: the package's logits, blocks removed."""
    logits, targets = nt_xent_logits(z1, z2, temperature=tau)  # (2N, 2N)
    view = torch.arange(2 * N) // N
    same_view = view[:, None] == view[None, :]
    return F.cross_entropy(logits.masked_fill(same_view, float("-inf")), targets)


def _protonet_both_ways(z1: torch.Tensor, z2: torch.Tensor, *, metric: str = "cosine",
                        scale: float = 1 / TAU) -> torch.Tensor:
    """The ProtoNet loss of the views episode and of its mirror, averaged."""
    labels = torch.arange(N)
    losses = [F.cross_entropy(protonet_logits(s, labels, q, metric=metric, scale=scale), labels)
              for s, q in ((z1, z2), (z2, z1))]
    return (losses[0] + losses[1]) / 2


def test_cross_view_nt_xent_equals_protonet_on_the_views_episode():
    z1, z2 = _views()
    assert _protonet_both_ways(z1, z2).item() == pytest.approx(
        _cross_view_nt_xent(z1, z2, TAU).item(), abs=1e-6)


def test_full_nt_xent_adds_exactly_the_same_view_negatives():
    """l_NT(i) = l_proto(i) + log(1 + sum_same / sum_cross): the one difference, in closed form."""
    z1, z2 = _views(1)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    total = torch.zeros((), dtype=torch.float64)
    for a, b in ((u1, u2), (u2, u1)):  # anchors in view a, positives in view b
        for i in range(N):
            cross = torch.exp(a[i] @ b.T / TAU).sum()
            same = sum(torch.exp(a[i] @ a[j] / TAU) for j in range(N) if j != i)
            proto = -(a[i] @ b[i] / TAU - torch.log(cross))
            total += proto + torch.log(1 + same / cross)
    assert nt_xent(z1, z2, temperature=TAU).item() == pytest.approx(
        (total / (2 * N)).item(), abs=1e-9)
    assert nt_xent(z1, z2, temperature=TAU) > _protonet_both_ways(z1, z2)


@pytest.mark.parametrize("change", ["temperature", "normalisation", "one direction",
                                    "same-view negatives"])
def test_the_equivalence_fails_when_a_condition_changes(change):
    """Break one condition and the two sides part by far more than the 1e-6 tolerance."""
    z1, z2 = _views(3)
    reference = _cross_view_nt_xent(z1, z2, TAU)
    if change == "temperature":
        other = _protonet_both_ways(z1, z2, scale=1 / (1.01 * TAU))
    elif change == "normalisation":  # squared Euclidean on raw features, at the same scale
        other = _protonet_both_ways(z1, z2, metric="sqeuclidean")
    elif change == "one direction":
        labels = torch.arange(N)
        other = F.cross_entropy(protonet_logits(z1, labels, z2, metric="cosine", scale=1 / TAU),
                                labels)
    else:
        other = nt_xent(z1, z2, temperature=TAU)
    assert abs(other.item() - reference.item()) > 1e-4


def test_a_protonet_learner_on_the_views_episode_is_simclr_without_same_view_negatives():
    """The same identity through the package's objects: ``ProtoNet.meta_loss`` on the episode
    (support = view 1, query = view 2) and on its mirror, with SimCLR's encoder and projector
    as the ProtoNet's encoder (per-image, so both sides see the same features)."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, D)).double()
    net = ProtoNet(encoder, ProtoNetConfig(metric="cosine", scale=1 / TAU))
    x1, x2 = torch.rand(2, N, 1, 4, 4, dtype=torch.float64)
    labels = torch.arange(N)
    forward = TaskBatch.stack([Episode(x1, labels, x2, labels)])
    mirror = TaskBatch.stack([Episode(x2, labels, x1, labels)])
    loss = (net.meta_loss(forward)[0] + net.meta_loss(mirror)[0]) / 2
    expected = _cross_view_nt_xent(encoder(x1), encoder(x2), TAU)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    # and the chance level of both: log N when every embedding coincides
    same = torch.ones(N, D, dtype=torch.float64)
    assert _protonet_both_ways(same, same).item() == pytest.approx(math.log(N))
