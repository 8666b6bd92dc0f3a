"""PsCo (Jang, Lee & Shin, 2023): Sinkhorn pseudo-labels from a queue, a supervised-contrastive
few-shot loss, MoCo's state updates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.tasks.psco import PsCo, PsCoConfig, pseudo_shots, sinkhorn, supcon_task_loss


def _slow_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn on one device, written with the queue as rows."""
    q = torch.exp(scores.double() / epsilon).T  # (M, B)
    q /= q.sum()
    m, b = q.shape
    for _ in range(iterations):
        q /= q.sum(1, keepdim=True)
        q /= m
        q /= q.sum(0, keepdim=True)
        q /= b
    return (q * b).T


def test_sinkhorn_matches_swav_and_balances_the_queue():
    scores = F.normalize(torch.randn(6, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    ours = sinkhorn(scores.double(), epsilon=0.05, iterations=3)
    torch.testing.assert_close(ours, _slow_sinkhorn(scores, 0.05, 3))
    torch.testing.assert_close(ours.sum(1), torch.ones(6, dtype=torch.float64))
    many = sinkhorn(scores.double(), epsilon=0.5, iterations=200)
    torch.testing.assert_close(many.sum(0), torch.full((10,), 0.6, dtype=torch.float64),
                               atol=1e-6, rtol=0)  # every queue entry: mass B / M


def test_pseudo_shots_are_the_top_k_of_the_assignment():
    scores = torch.randn(4, 9, generator=torch.Generator().manual_seed(1))
    index = pseudo_shots(scores, 3)
    assignment = sinkhorn(scores)
    for row, chosen in zip(assignment, index, strict=True):
        assert set(chosen.tolist()) == set(row.argsort(descending=True)[:3].tolist())


def test_the_task_loss_is_supervised_contrastive_over_all_shots():
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    shots = F.normalize(torch.randn(5, 3, 4, generator=g, dtype=torch.float64), dim=-1)
    expected = 0.0
    for i in range(5):
        all_logits = torch.stack([q[i] @ shots[j, k] / 0.5 for j in range(5) for k in range(3)])
        own = torch.stack([q[i] @ shots[i, k] / 0.5 for k in range(3)])
        expected += torch.logsumexp(all_logits, 0) - own.mean()
    assert supcon_task_loss(q, shots, temperature=0.5).item() == pytest.approx(
        expected.item() / 5, abs=1e-12)
    # one shot per class: a cross-entropy with class i as the target of query i
    one = shots[:, :1]
    torch.testing.assert_close(supcon_task_loss(q, one, temperature=0.5),
                               F.cross_entropy(q @ one[:, 0].T / 0.5, torch.arange(5)))


def test_a_step_trains_the_online_network_and_then_moves_the_queue_and_keys():
    torch.manual_seed(0)
    model = PsCo(nn.Sequential(nn.Flatten(), nn.Linear(16, 6)), 6,
                 PsCoConfig(shots=2, queue_size=12, hidden_dim=8, out_dim=4),
                 generator=torch.Generator().manual_seed(0))
    x1, x2 = torch.rand(2, 5, 1, 4, 4)
    loss, logs = model.loss(x1, x2)
    assert set(logs) == {"loss", "task_loss", "moco_loss"}
    assert loss.item() == pytest.approx((logs["task_loss"] + logs["moco_loss"]).item())
    loss.backward()
    for part in (model.encoder, model.projector, model.predictor):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in model.key_encoder.parameters())
    keys = model.last_keys.clone()
    model.after_step(1, 10)
    assert torch.equal(model.queue.features[:5], keys) and int(model.queue.ptr) == 5
    with pytest.raises(RuntimeError, match="needs the keys"):
        model.after_step(2, 10)


def test_more_shots_than_the_queue_is_refused():
    with pytest.raises(ValueError, match="at most queue_size"):
        PsCoConfig(shots=5, queue_size=4)
