"""Helpers shared by the meta-learner tests."""

from __future__ import annotations

import torch

from companion.data import EpisodeSampler, load_dataset
from companion.evaluate import EvalResult, evaluate_episodes, pixel_nearest_neighbour


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


def short_glyph_run(learner: torch.nn.Module) -> tuple[list[float], EvalResult, EvalResult]:
    """60 steps of 5-way 1-shot (3 queries, meta-batch 4) on six glyph alphabets, then the
    learner and pixel 1-NN on the same 50 test episodes: ``(losses, learned, pixels)``."""
    train = load_dataset("glyphs", "train", alphabets=6)
    test = load_dataset("glyphs", "test")
    optimiser = torch.optim.Adam(learner.parameters(), lr=1e-3)
    sampler = EpisodeSampler(train, ways=5, shots=1, queries=3, seed=0)
    losses = meta_train(learner, optimiser, sampler, steps=60, tasks=4)

    def episodes() -> EpisodeSampler:
        return EpisodeSampler(test, ways=5, shots=1, queries=5, seed=1)

    learned = evaluate_episodes(learner.classify, episodes(), 50)
    pixels = evaluate_episodes(pixel_nearest_neighbour, episodes(), 50)
    return losses, learned, pixels
