r"""Task augmentation: large rotations of every class of a task are new classes.

Ni, Shu, Souri, Goldblum & Goldstein (2022), *The Close Relationship Between Contrastive
Learning and Meta-Learning* (ICLR), sec. 4, carry a trick of meta-learning over to
contrastive learning: **task augmentation by large rotations**. A glyph turned by 90
degrees is not the same character any more (a "6" turned by 180 degrees is a "9"), so
rather than an augmentation the learner must ignore, a rotation makes a new class, and an
``N``-way task becomes a ``4N``-way one with the same images. Omniglot's rotated classes
(Santoro et al., 2016; the ``rotations`` option of :mod:`companion.data.omniglot`) are the
same idea applied to a labelled dataset once, before sampling; here it is applied to every
task of any source, labelled or not (UMTRA's view episodes are chapter 8's case: SimCLR
with four times the classes, and the rotations of one image as hard negatives).

For a task with support :math:`\{(x_i, y_i)\}`, queries :math:`\{(x'_j, y'_j)\}` and
:math:`N` classes, the rotated task has classes :math:`r N + k` for rotation
:math:`r \in \{0, 1, 2, 3\}` (:math:`r` quarter-turns counter-clockwise,
``torch.rot90(x, r, dims=(-2, -1))``, exact on the pixel grid) and class :math:`k`:

.. math::

    \mathcal S_\text{rot} = \{(\operatorname{rot}_r(x_i),\; r N + y_i)\}_{r, i}, \qquad
    \mathcal Q_\text{rot} = \{(\operatorname{rot}_r(x'_j),\; r N + y'_j)\}_{r, j}.

The numbering is rotation-major, as in :func:`companion.ssl.pretext.rotate_batch`: block
``r`` of the support is the whole class-first support rotated, so the result is class-first
again (labels ``[0]*K + [1]*K + ... + [4N-1]*K``) and every meta-learner takes it unchanged.
Rotation 0 is the source's task as it was.

**No randomness of its own**: the wrapper draws nothing, so it reads no labels that the
source does not read, is reproducible from the source's seed, and ``generators()`` is the
source's.

Example:
    >>> from companion.data import load_dataset
    >>> from companion.tasks import UMTRA
    >>> source = RotatedClasses(UMTRA(load_dataset("glyphs", "train"), ways=5, seed=0))
    >>> batch = source.sample_batch(2)
    >>> batch.support_x.shape, batch.support_y[0].tolist()[:7]
    (torch.Size([2, 20, 1, 28, 28]), [0, 1, 2, 3, 4, 5, 6])
"""

from __future__ import annotations

import torch

from companion.checks import check_int
from companion.data.episodes import TaskBatch
from companion.protocols import check_task_source

ROTATIONS = 4  # 0, 90, 180 and 270 degrees


def rotate_classes(batch: TaskBatch) -> TaskBatch:
    """Every class of every task in four rotations, as four classes (rotation-major).

    Args:
        batch: ``T`` class-first tasks with labels ``0..N-1`` and square images.

    Raises:
        TypeError: ``batch`` is not a :class:`TaskBatch`.
        ValueError: the images are not square ``(..., H, H)``.

    Shape:
        - batch: support ``(T, N*K, C, H, H)``, query ``(T, N*Q, C, H, H)``
        - returns: support ``(T, 4*N*K, C, H, H)``, query ``(T, 4*N*Q, C, H, H)``; class
          ``k`` in rotation ``r`` is label ``r*N + k``
    """
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"rotate_classes expects a TaskBatch; got {type(batch).__name__}")
    if batch.support_x.ndim < 4 or batch.support_x.shape[-1] != batch.support_x.shape[-2]:
        raise ValueError("rotated classes need square images (T, N*K, C, H, H); got support "
                         f"{tuple(batch.support_x.shape)}")
    ways = int(batch.support_y.max()) + 1  # N: labels are 0..N-1 in every task

    def rotated(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(ROTATIONS)], dim=1)
        y = torch.cat([y + r * ways for r in range(ROTATIONS)], dim=1)  # (T, 4*len)
        return x, y

    support_x, support_y = rotated(batch.support_x, batch.support_y)
    query_x, query_y = rotated(batch.query_x, batch.query_y)
    return TaskBatch(support_x, support_y, query_x, query_y)


class RotatedClasses:
    """A task source whose tasks are another source's, each class in four rotations.

    Args:
        source: any task source (:class:`companion.protocols.TaskSource`) of class-first
            ``TaskBatch``es of square images: :class:`~companion.tasks.umtra.UMTRA`,
            :class:`~companion.data.episodes.EpisodeSampler`, ...

    Raises:
        TypeError: ``source`` is not a task source.

    Shape:
        - sample_batch(T): a ``TaskBatch`` with support ``(T, 4*N*K, C, H, H)`` and query
          ``(T, 4*N*Q, C, H, H)``, where the source gives ``N``-way tasks
          (:func:`rotate_classes`)
    """

    def __init__(self, source: object) -> None:
        check_task_source(source)
        self.source = source

    def sample_batch(self, tasks: int) -> TaskBatch:
        """``tasks`` tasks of the source, with their classes rotated (:func:`rotate_classes`)."""
        check_int("tasks", tasks)
        return rotate_classes(self.source.sample_batch(tasks))

    def generators(self) -> dict[str, torch.Generator]:
        """The source's random streams: the wrapper draws nothing of its own."""
        return self.source.generators()
