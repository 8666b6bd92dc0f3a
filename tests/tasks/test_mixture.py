"""Several unlabeled sources: a task from one source each (Mixture), or one pool."""

from __future__ import annotations

import pytest
import torch

from companion.data.augment import AugmentConfig
from companion.tasks import UMTRA
from companion.tasks.mixture import Mixture, pooled


def _constant(value: float, m: int = 10) -> torch.Tensor:
    return torch.full((m, 1, 4, 4), value)


def _source(value: float, seed: int = 0) -> UMTRA:
    return UMTRA(_constant(value), 2, augment=AugmentConfig(), seed=seed)


def test_each_task_comes_from_one_source_in_the_weights_proportions():
    mix = Mixture({"zeros": _source(0.0), "ones": _source(1.0)}, weights=[1, 3], seed=0)
    batch = mix.sample_batch(400)
    per_task = batch.support_x.flatten(1).mean(1)  # 0 or 1: the task's source
    assert set(per_task.tolist()) == {0.0, 1.0}  # never a task mixing the two
    assert abs(float(per_task.mean()) - 0.75) < 0.06  # P(ones) = 3/4, 400 draws: sd 0.022


def test_a_mixture_saves_every_generator_under_its_sources_names():
    mix = Mixture({"a": _source(0.0), "b": _source(1.0)}, seed=0)
    assert set(mix.generators()) == {"pick", "a/tasks", "b/tasks"}


def test_pooled_tasks_may_mix_sources():
    pool = pooled([_constant(0.0, 50), _constant(1.0, 50)])
    batch = UMTRA(pool, 2, augment=AugmentConfig(), seed=0).sample_batch(200)
    per_task = batch.support_x.flatten(1).mean(1)
    assert (per_task == 0.5).any()  # one image of each source in some task


def test_sources_must_agree_on_the_shape():
    with pytest.raises(ValueError, match="one shape"):
        Mixture({"a": _source(0.0), "b": UMTRA(_constant(1.0), 3, seed=0)})
    with pytest.raises(ValueError, match="share one shape"):
        pooled([_constant(0.0), torch.zeros(5, 1, 8, 8)])
    with pytest.raises(ValueError, match="weights must be 2"):
        Mixture({"a": _source(0.0), "b": _source(1.0)}, weights=[1.0])
