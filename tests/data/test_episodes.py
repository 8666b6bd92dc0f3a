"""Episodes and the sampler: invariants checked on random datasets and requests."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.data import Episode, EpisodeSampler, ImageDataset, TaskBatch, load_dataset


def make_dataset(classes: int, per_class: list[int] | int, size: int = 4) -> ImageDataset:
    """Each image's pixels hold its own global index, so samples can be traced back."""
    counts = [per_class] * classes if isinstance(per_class, int) else per_class
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    # Shuffle the storage order so class_indices must really look the labels up.
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    labels = labels[perm]
    ids = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1)
    images = ids.expand(-1, 1, size, size)
    return ImageDataset("toy", "train", images.clone(), labels, torch.arange(classes),
                        tuple(f"c{c}" for c in range(classes)))


def image_ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].long().tolist()


@settings(max_examples=60, deadline=None)
@given(
    classes=st.integers(1, 12),
    per_class=st.integers(1, 10),
    data=st.data(),
)
def test_episode_invariants(classes: int, per_class: int, data: st.DataObject) -> None:
    ds = make_dataset(classes, per_class)
    ways = data.draw(st.integers(1, classes))
    shots = data.draw(st.integers(1, per_class))
    queries = data.draw(st.integers(0, per_class - shots))
    seed = data.draw(st.integers(0, 2**31))
    ep = EpisodeSampler(ds, ways, shots, queries, seed=seed).sample()

    assert ep.support_x.shape == (ways * shots, 1, 4, 4)
    assert ep.query_x.shape == (ways * queries, 1, 4, 4)
    # Class-first labels 0..N-1.
    assert ep.support_y.tolist() == [c for c in range(ways) for _ in range(shots)]
    assert ep.query_y.tolist() == [c for c in range(ways) for _ in range(queries)]
    s_ids, q_ids = image_ids(ep.support_x), image_ids(ep.query_x)
    # Support and query are disjoint and have no repeats.
    assert len(set(s_ids) | set(q_ids)) == len(s_ids) + len(q_ids)
    # Every image of episode class c comes from one dataset class, distinct per c.
    true = ds.labels
    s_cls = true[s_ids].view(ways, shots)
    assert (s_cls == s_cls[:, :1]).all()
    if queries:
        q_cls = true[q_ids].view(ways, queries)
        assert (q_cls == s_cls[:, :1]).all()
    assert len(set(s_cls[:, 0].tolist())) == ways
    assert (ep.ways, ep.shots, ep.queries) == (ways, shots, queries if queries else 0)


@given(seed=st.integers(0, 2**31))
@settings(max_examples=20, deadline=None)
def test_same_seed_same_episodes(seed: int) -> None:
    ds = make_dataset(10, 8)
    a = EpisodeSampler(ds, 5, 2, 3, seed=seed)
    b = EpisodeSampler(ds, 5, 2, 3, seed=seed)
    for _ in range(3):
        ea, eb = a.sample(), b.sample()
        for field in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(ea, field), getattr(eb, field))


def test_different_seeds_differ_and_generator_is_used() -> None:
    ds = make_dataset(20, 10)
    a = EpisodeSampler(ds, 5, 1, 5, seed=0).sample()
    b = EpisodeSampler(ds, 5, 1, 5, seed=1).sample()
    assert not torch.equal(a.query_x, b.query_x)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    c = EpisodeSampler(ds, 5, 1, 5, generator=g1).sample()
    d = EpisodeSampler(ds, 5, 1, 5, seed=999, generator=g2).sample()  # generator wins
    assert torch.equal(c.query_x, d.query_x)


def test_classes_come_only_from_the_split() -> None:
    train = load_dataset("digits", "train")
    sampler = EpisodeSampler(train, ways=5, shots=2, queries=2, seed=0)
    for ep in sampler.episodes(5):
        # digits/train holds 0-4 only; the images must be digits/train images.
        flat = train.images.flatten(1)
        for x in torch.cat([ep.support_x, ep.query_x]).flatten(1):
            assert (flat == x).all(1).any()


def test_uneven_classes_are_limited_by_the_smallest() -> None:
    ds = make_dataset(3, [5, 9, 4])
    EpisodeSampler(ds, 3, 2, 2, seed=0).sample()
    with pytest.raises(ValueError, match=r"smallest class .*at most 4"):
        EpisodeSampler(ds, 3, 2, 3, seed=0)


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "error", "message"),
    [
        (11, 1, 1, ValueError, r"only 10 classes \(ways must be 1..10\)"),
        (0, 1, 1, ValueError, "ways must be a positive int; got 0"),
        (5, 0, 1, ValueError, "shots must be a positive int"),
        (5, -2, 1, ValueError, "shots must be a positive int"),
        (5, 1, -1, ValueError, "queries must be an int >= 0; got -1"),
        (5, 5, 4, ValueError, r"shots \+ queries = 5 \+ 4 = 9 .*at most 8"),
        (5, 1.5, 1, ValueError, "shots must be a positive int; got 1.5"),
    ],
)
def test_impossible_requests_raise(ways, shots, queries, error, message) -> None:
    with pytest.raises(error, match=message):
        EpisodeSampler(make_dataset(10, 8), ways, shots, queries, seed=0)


def test_task_batch_stacks_and_unstacks() -> None:
    sampler = EpisodeSampler(make_dataset(10, 8), 5, 2, 3, seed=0)
    episodes = [sampler.sample() for _ in range(4)]
    batch = TaskBatch.stack(episodes)
    assert batch.support_x.shape == (4, 10, 1, 4, 4)
    assert batch.query_y.shape == (4, 15)
    assert len(batch) == 4
    for original, back in zip(episodes, batch, strict=True):
        assert torch.equal(original.query_x, back.query_x)
    assert batch.to(dtype=torch.float64).support_x.dtype == torch.float64
    assert batch.to(dtype=torch.float64).support_y.dtype == torch.int64
    other = EpisodeSampler(make_dataset(10, 8), 3, 2, 3, seed=0).sample()
    with pytest.raises(ValueError, match="share one shape"):
        TaskBatch.stack([episodes[0], other])
    assert sampler.sample_batch(3).support_x.shape[0] == 3


def test_episode_validates_shapes() -> None:
    with pytest.raises(ValueError, match="one row per label"):
        Episode(torch.zeros(5, 1, 2, 2), torch.zeros(4, dtype=torch.long),
                torch.zeros(5, 1, 2, 2), torch.zeros(5, dtype=torch.long))
