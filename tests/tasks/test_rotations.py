"""Task augmentation by large rotations (Ni et al., 2022, sec. 4): every class of a task in
four rotations, as four classes. Label numbering, the images against ``torch.rot90`` class
by class, and the source's randomness left alone. Reading no labels, reproducibility and
resuming through ``fit`` are tested with the other sources in ``test_sources.py``."""

from __future__ import annotations

import pytest
import torch

from companion.data import EpisodeSampler, load_dataset
from companion.data.episodes import Episode, TaskBatch
from companion.meta.protonet import class_first_shape
from companion.tasks import UMTRA, RotatedClasses, rotate_classes

N, K, Q, S = 3, 2, 4, 6  # ways, shots, queries, image side


def _batch(tasks: int = 2, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N)
    return TaskBatch.stack([
        Episode(torch.rand(N * K, 1, S, S, generator=g), labels.repeat_interleave(K),
                torch.rand(N * Q, 1, S, S, generator=g), labels.repeat_interleave(Q))
        for _ in range(tasks)])


def test_every_class_appears_in_four_rotations_with_label_r_times_n_plus_c():
    batch = _batch()
    rotated = rotate_classes(batch)
    assert rotated.support_x.shape == (2, 4 * N * K, 1, S, S)
    assert rotated.query_x.shape == (2, 4 * N * Q, 1, S, S)
    assert class_first_shape(rotated.support_y) == (4 * N, K)  # class-first, 4N ways
    for t in range(2):
        for r in range(4):
            for c in range(N):  # written from the definition, one class at a time
                shots = batch.support_x[t, batch.support_y[t] == c]
                queries = batch.query_x[t, batch.query_y[t] == c]
                label = r * N + c
                assert torch.equal(rotated.support_x[t, rotated.support_y[t] == label],
                                   torch.rot90(shots, r, dims=(2, 3)))
                assert torch.equal(rotated.query_x[t, rotated.query_y[t] == label],
                                   torch.rot90(queries, r, dims=(2, 3)))


def test_rotation_zero_is_the_task_as_it_was_and_the_others_differ():
    batch = _batch()
    rotated = rotate_classes(batch)
    assert torch.equal(rotated.support_x[:, : N * K], batch.support_x)
    assert torch.equal(rotated.query_y[:, : N * Q], batch.query_y)
    for r in range(1, 4):
        assert not torch.equal(rotated.support_x[:, r * N * K: (r + 1) * N * K],
                               batch.support_x)


def test_the_wrapper_draws_nothing_of_its_own():
    """Its tasks are the source's tasks, rotated; its generators are the source's."""
    images = load_dataset("glyphs", "train", alphabets=1, image_size=16).images
    source = UMTRA(images, ways=N, shots=K, queries=Q, augment_support=True, seed=3)
    wrapped = RotatedClasses(UMTRA(images, ways=N, shots=K, queries=Q, augment_support=True,
                                   seed=3))
    assert wrapped.generators().keys() == source.generators().keys()
    assert wrapped.generators()["tasks"] is wrapped.source.generator
    for _ in range(2):
        expected, got = rotate_classes(source.sample_batch(2)), wrapped.sample_batch(2)
        assert all(torch.equal(getattr(expected, f), getattr(got, f))
                   for f in Episode.__dataclass_fields__)


def test_labelled_episodes_are_rotated_too():
    data = load_dataset("glyphs", "train", alphabets=1, image_size=16)
    batch = RotatedClasses(EpisodeSampler(data, ways=N, shots=K, queries=Q, seed=0)
                           ).sample_batch(1)
    assert batch.support_x.shape == (1, 4 * N * K, 1, 16, 16)
    assert batch.query_y[0].tolist() == torch.arange(4 * N).repeat_interleave(Q).tolist()


def test_bad_arguments_fail_loudly():
    with pytest.raises(TypeError, match="not a task source"):
        RotatedClasses(torch.zeros(3, 1, 8, 8))
    with pytest.raises(TypeError, match="TaskBatch"):
        rotate_classes(_batch()[0])
    wide = _batch()
    wide = TaskBatch(wide.support_x[..., :-1], wide.support_y, wide.query_x[..., :-1],
                     wide.query_y)
    with pytest.raises(ValueError, match="square"):
        rotate_classes(wide)
    with pytest.raises(ValueError, match="tasks"):
        RotatedClasses(EpisodeSampler(load_dataset("glyphs", "train", alphabets=1),
                                      ways=2, shots=1, queries=1, seed=0)).sample_batch(0)
