"""Helpers shared by the meta-learner tests."""

from __future__ import annotations

import torch

from companion.data import EpisodeSampler


def meta_train(learner: torch.nn.Module, optimiser: torch.optim.Optimizer,
               sampler: EpisodeSampler, *, steps: int, tasks: int) -> list[float]:
    """A bare meta-training loop (no companion.train): the losses of ``steps`` updates."""
    losses = []
    for _ in range(steps):
        loss, _ = learner.meta_loss(sampler.sample_batch(tasks))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses
