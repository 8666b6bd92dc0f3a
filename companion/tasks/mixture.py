"""Tasks from several unlabeled sources at once.

Peng's survey (arXiv:2103.00845, sec. 3) stresses that unsupervised meta-learning can use
unlabeled data from several, very different sources together, since no labels need to
agree across them. There are two ways to mix them, and which is better is a question the
chapter measures rather than assumes:

- **per task** (:class:`Mixture`): each task comes from one source, drawn at random with the
  given weights, so every task is internally consistent (all Omniglot, or all glyphs);
- **pooled** (:func:`pooled`): the images of all sources form one pool and a task may mix
  them (an Omniglot character against a digit), which makes tasks easier to tell apart
  and adds diversity.

Both are plain task sources, so any meta-learner trains on them through ``fit``.

Example:
    >>> import torch
    >>> from companion.tasks import UMTRA
    >>> a, b = torch.rand(20, 1, 8, 8), torch.zeros(30, 1, 8, 8)
    >>> mix = Mixture({"a": UMTRA(a, 3, seed=0), "b": UMTRA(b, 3, seed=1)}, seed=0)
    >>> mix.sample_batch(4).support_x.shape
    torch.Size([4, 3, 1, 8, 8])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from companion.checks import check_int
from companion.data.episodes import TaskBatch
from companion.protocols import check_task_source, generators_of, prefixed
from companion.tasks.pool import unlabeled_images


class Mixture:
    """Each task from one of several task sources, drawn at random with ``weights``.

    Args:
        sources: task sources by name; each needs ``sample()`` (one episode) and ``ways``,
            ``shots``, ``queries``, the same for all, so that a batch stacks.
        weights: the probability of each source (default: equal), in the order of
            ``sources``; normalised here.
        seed: seed of the generator that picks the source of each task (ignored if
            ``generator`` is given); each source keeps its own generator.
        generator: a CPU ``torch.Generator``.
    """

    def __init__(self, sources: Mapping[str, Any], weights: Sequence[float] | None = None, *,
                 seed: int | None = None, generator: torch.Generator | None = None) -> None:
        if not sources:
            raise ValueError("a mixture needs at least one source")
        for source in sources.values():
            check_task_source(source)
            if not callable(getattr(source, "sample", None)):
                raise TypeError(f"{type(source).__name__} has no sample() (one episode)")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"weights must be {len(sources)} non-negative numbers, not all "
                             f"zero; got {weights}")
        shapes = {(s.ways, s.shots, s.queries) for s in sources.values()}
        if len(shapes) != 1:
            raise ValueError(f"the sources must make tasks of one shape (ways, shots, queries); "
                             f"got {sorted(shapes)}")
        self.ways, self.shots, self.queries = shapes.pop()
        self.sources = dict(sources)
        self.weights = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        self.generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)

    def generators(self) -> dict[str, torch.Generator]:
        """The mixture's own stream (``"pick"``) and each source's, prefixed by its name."""
        found = {"pick": self.generator}
        for name, source in self.sources.items():
            found.update(prefixed(name, generators_of(source)))
        return found

    def sample_batch(self, tasks: int) -> TaskBatch:
        """``tasks`` tasks, each from a source drawn with the mixture's weights."""
        check_int("tasks", tasks)
        names = list(self.sources)
        picks = torch.multinomial(self.weights, tasks, replacement=True, generator=self.generator)
        return TaskBatch.stack([self.sources[names[i]].sample() for i in picks.tolist()])


def pooled(datasets: Sequence[object]) -> torch.Tensor:
    """One unlabeled pool from several datasets or image tensors of one image shape.

    Shape:
        - returns: ``(M_1 + M_2 + ..., C, H, W)``
    """
    pools = [unlabeled_images(d) for d in datasets]
    shapes = {tuple(p.shape[1:]) for p in pools}
    if len(shapes) != 1:
        raise ValueError(f"pooled images must share one shape (C, H, W); got {sorted(shapes)}")
    return torch.cat(pools)
