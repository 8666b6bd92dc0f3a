"""Sinusoid tasks: the ranges and formula of Finn et al. (2017, Sec. 5.1), seeds, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from companion.data import Episode, TaskBatch
from companion.data.sinusoid import SinusoidTask, SinusoidTasks


def test_shapes_and_dtypes() -> None:
    episode = SinusoidTasks(shots=5, queries=7, seed=0).sample()
    assert isinstance(episode, Episode)
    assert episode.support_x.shape == (5, 1) and episode.support_y.shape == (5,)
    assert episode.query_x.shape == (7, 1) and episode.query_y.shape == (7,)
    assert episode.support_y.dtype == torch.float32
    double = SinusoidTasks(shots=5, queries=0, seed=0, dtype=torch.float64).sample()
    assert double.support_x.dtype == double.support_y.dtype == torch.float64
    assert double.query_x.shape == (0, 1)


def test_ranges_cover_the_papers_intervals() -> None:
    tasks = SinusoidTasks(shots=20, queries=20, seed=1)
    draws = [tasks.sample_with_params() for _ in range(2000)]
    amplitude = torch.tensor([t.amplitude for _, t in draws])
    phase = torch.tensor([t.phase for _, t in draws])
    x = torch.cat([torch.cat([e.support_x, e.query_x]) for e, _ in draws])
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi
    assert -5.0 <= x.min() and x.max() <= 5.0
    # Uniform, not just inside the range: near both ends and mean at the midpoint.
    assert amplitude.min() < 0.2 and amplitude.max() > 4.9
    assert phase.min() < 0.05 and phase.max() > math.pi - 0.05
    assert x.min() < -4.99 and x.max() > 4.99
    assert abs(amplitude.mean() - 2.55) < 0.1
    assert abs(phase.mean() - math.pi / 2) < 0.1
    assert abs(x.mean()) < 0.05


def test_targets_follow_the_formula() -> None:
    tasks = SinusoidTasks(shots=10, queries=10, seed=2, dtype=torch.float64)
    for _ in range(20):
        episode, task = tasks.sample_with_params()
        for xs, ys in ((episode.support_x, episode.support_y), (episode.query_x, episode.query_y)):
            expected = [task.amplitude * math.sin(x - task.phase) for x in xs[:, 0].tolist()]
            torch.testing.assert_close(ys, torch.tensor(expected, dtype=torch.float64))


def test_curve_is_the_true_wave_on_a_grid() -> None:
    task = SinusoidTask(amplitude=2.0, phase=0.5)
    x, y = task.curve(points=11, dtype=torch.float64)
    assert x.tolist() == pytest.approx([-5.0 + i for i in range(11)])
    assert y.tolist() == pytest.approx([2.0 * math.sin(v - 0.5) for v in x.tolist()])
    assert task(torch.tensor(0.5)).item() == 0.0


def test_same_seed_same_tasks_and_generator_is_used() -> None:
    a, b = SinusoidTasks(5, 5, seed=3), SinusoidTasks(5, 5, seed=3)
    for _ in range(3):
        (ea, ta), (eb, tb) = a.sample_with_params(), b.sample_with_params()
        assert ta == tb
        for f in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(ea, f), getattr(eb, f))
    assert not torch.equal(SinusoidTasks(5, 5, seed=4).sample().support_x,
                           SinusoidTasks(5, 5, seed=5).sample().support_x)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    e1 = SinusoidTasks(5, 5, seed=0, generator=g1).sample()
    e2 = SinusoidTasks(5, 5, seed=1, generator=g2).sample()  # generator wins over seed
    assert torch.equal(e1.support_y, e2.support_y)


def test_sample_batch_stacks_distinct_tasks() -> None:
    batch = SinusoidTasks(shots=10, queries=3, seed=6).sample_batch(4)
    assert isinstance(batch, TaskBatch) and len(batch) == 4
    assert batch.support_x.shape == (4, 10, 1) and batch.query_y.shape == (4, 3)
    assert not torch.equal(batch.support_y[0], batch.support_y[1])


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"shots": 0, "queries": 5}, ValueError),
        ({"shots": 5, "queries": -1}, ValueError),
        ({"shots": 2.5, "queries": 5}, ValueError),
        ({"shots": True, "queries": 5}, ValueError),
        ({"shots": 5, "queries": 5, "dtype": torch.int64}, ValueError),
    ],
)
def test_bad_arguments(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match="shots|queries|dtype"):
        SinusoidTasks(**kwargs)


def test_bad_batch_and_grid_sizes() -> None:
    with pytest.raises(ValueError, match="tasks"):
        SinusoidTasks(5, 5).sample_batch(0)
    with pytest.raises(ValueError, match="points"):
        SinusoidTask(1.0, 0.0).curve(points=1)
