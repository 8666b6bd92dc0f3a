r"""Few-shot episodes: the unit of data of meta-learning.

An *N-way K-shot* task (Vinyals et al. 2016; Snell et al. 2017, section 2.1) draws ``N``
classes from a pool of classes, relabels them ``0..N-1`` in a random order, and splits
``K + Q`` random images of each into a **support set** (``K`` labelled examples per class,
what the learner may adapt on) and a **query set** (``Q`` per class, what it is scored on):

.. math::

    S = \{(x_i, y_i)\}_{i=1}^{NK}, \qquad Q = \{(x_j, y_j)\}_{j=1}^{NQ},
    \qquad y \in \{0, \dots, N-1\}.

Episodes here are **class-first**: the support holds all ``K`` shots of class 0, then of
class 1, and so on, so ``support_x.view(N, K, ...)`` groups shots by class and a prototype
is ``z.view(N, K, D).mean(1)`` (as in the Prototypical Networks code). Queries are
class-first too.

Sampling is explicit and reproducible: an :class:`EpisodeSampler` owns a
``torch.Generator``; the same seed yields the same episodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from companion.checks import check_int
from companion.data.base import ImageDataset


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot task, class-first, labels ``0..N-1``.

    Shape:
        - support_x: ``(N*K, channels, H, W)``
        - support_y: ``(N*K,)`` int64, ``[0]*K + [1]*K + ... + [N-1]*K``
        - query_x: ``(N*Q, channels, H, W)``
        - query_y: ``(N*Q,)`` int64, class-first like ``support_y``
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("support", "query"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if y.ndim != 1 or x.shape[:1] != y.shape:
                raise ValueError(
                    f"{name}_x must have one row per label: got {name}_x {tuple(x.shape)} "
                    f"and {name}_y {tuple(y.shape)} (expected (n, ...) and (n,))"
                )

    @property
    def ways(self) -> int:
        """Number of classes ``N``."""
        return int(self.support_y.max()) + 1 if self.support_y.numel() else 0

    @property
    def shots(self) -> int:
        """Support images per class ``K``."""
        return self.support_y.numel() // max(self.ways, 1)

    @property
    def queries(self) -> int:
        """Query images per class ``Q``."""
        return self.query_y.numel() // max(self.ways, 1)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Episode:
        """A copy on ``device``; ``dtype`` (if given) applies to the images only."""
        return Episode(
            self.support_x.to(device=device, dtype=dtype),
            self.support_y.to(device=device),
            self.query_x.to(device=device, dtype=dtype),
            self.query_y.to(device=device),
        )


@dataclass(frozen=True)
class TaskBatch:
    """``T`` episodes of the same N-way K-shot shape stacked along a leading task axis.

    This is what ``torch.func.vmap`` maps over: ``vmap(f)(batch.support_x, batch.support_y,
    ...)`` runs ``f`` once per task.

    Shape:
        - support_x: ``(T, N*K, channels, H, W)``
        - support_y: ``(T, N*K)``
        - query_x: ``(T, N*Q, channels, H, W)``
        - query_y: ``(T, N*Q)``
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @classmethod
    def stack(cls, episodes: list[Episode]) -> TaskBatch:
        """Stack episodes that share one shape; raises ``ValueError`` if they differ."""
        if not episodes:
            raise ValueError("cannot stack an empty list of episodes")
        shapes = {(e.support_x.shape, e.query_x.shape) for e in episodes}
        if len(shapes) != 1:
            raise ValueError(f"episodes must share one shape to be stacked; got {shapes}")
        fields = Episode.__dataclass_fields__
        return cls(*(torch.stack([getattr(e, f) for e in episodes]) for f in fields))

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, t: int) -> Episode:
        return Episode(self.support_x[t], self.support_y[t], self.query_x[t], self.query_y[t])

    def __iter__(self) -> Iterator[Episode]:
        return (self[t] for t in range(len(self)))

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> TaskBatch:
        """A copy on ``device``; ``dtype`` (if given) applies to the images only."""
        return TaskBatch(
            self.support_x.to(device=device, dtype=dtype),
            self.support_y.to(device=device),
            self.query_x.to(device=device, dtype=dtype),
            self.query_y.to(device=device),
        )


class EpisodeSampler:
    """Draws N-way K-shot episodes from the classes of one dataset split.

    Each episode picks ``ways`` distinct classes uniformly at random, then ``shots +
    queries`` distinct images of each, without replacement, so support and query never
    share an image. Classes are relabelled ``0..ways-1`` in the order drawn.

    Args:
        dataset: the split to draw from (its classes are the only ones used).
        ways: classes per episode ``N``.
        shots: support images per class ``K``.
        queries: query images per class ``Q``.
        seed: seed of the sampler's own generator (ignored if ``generator`` is given).
        generator: a ``torch.Generator`` to draw from (on the CPU).

    Raises:
        ValueError: if a size is below 1 (``queries`` may be 0), if ``ways`` exceeds the
            number of classes, or if ``shots + queries`` exceeds the images of some class.

    Example:
        >>> from companion.data import load_dataset, EpisodeSampler
        >>> sampler = EpisodeSampler(load_dataset("digits", split="train"), ways=5, shots=1,
        ...                          queries=15, seed=0)
        >>> episode = sampler.sample()
        >>> episode.support_x.shape, episode.query_y.shape
        (torch.Size([5, 1, 8, 8]), torch.Size([75]))
    """

    def __init__(
        self,
        dataset: ImageDataset,
        ways: int,
        shots: int,
        queries: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.dataset = dataset
        self.ways = check_int("ways", ways)
        self.shots = check_int("shots", shots)
        self.queries = check_int("queries", queries, 0)
        if ways > dataset.num_classes:
            raise ValueError(
                f"cannot draw {ways}-way episodes from {dataset.name}/{dataset.split}: it has "
                f"only {dataset.num_classes} classes (ways must be 1..{dataset.num_classes})"
            )
        per_class = dataset.images_per_class()
        fewest = int(per_class.min())
        if shots + queries > fewest:
            raise ValueError(
                f"shots + queries = {shots} + {queries} = {shots + queries} images per class, but "
                f"{dataset.name}/{dataset.split} has only {fewest} images in its smallest class "
                f"(shots + queries must be at most {fewest})"
            )
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.generator = generator

    def generators(self) -> dict[str, torch.Generator]:
        """The sampler's one random stream (:class:`companion.protocols.TaskSource`)."""
        return {"episodes": self.generator}

    def sample(self) -> Episode:
        """Draw one episode."""
        g, k, q = self.generator, self.shots, self.queries
        classes = torch.randperm(self.dataset.num_classes, generator=g)[: self.ways]
        support, query = [], []
        for c in classes.tolist():
            pool = self.dataset.class_indices(c)
            pick = pool[torch.randperm(len(pool), generator=g)[: k + q]]
            support.append(pick[:k])
            query.append(pick[k:])
        s, qi = torch.cat(support), torch.cat(query)
        labels = torch.arange(self.ways)
        return Episode(
            support_x=self.dataset.images[s],
            support_y=labels.repeat_interleave(k),
            query_x=self.dataset.images[qi],
            query_y=labels.repeat_interleave(q),
        )

    def sample_batch(self, tasks: int) -> TaskBatch:
        """Draw ``tasks`` episodes stacked into a :class:`TaskBatch`."""
        check_int("tasks", tasks)
        return TaskBatch.stack([self.sample() for _ in range(tasks)])

    def episodes(self, n: int) -> Iterator[Episode]:
        """Yield ``n`` episodes."""
        check_int("n", n)
        for _ in range(n):
            yield self.sample()

    def __iter__(self) -> Iterator[Episode]:
        """Yield episodes forever (take what you need with ``itertools.islice``)."""
        while True:
            yield self.sample()
