r"""UMTRA: unsupervised meta-learning with tasks built by random sampling and augmentation.

Khodadadeh, Bölöni & Shah (2019), *Unsupervised Meta-Learning for Few-Shot Image
Classification* (NeurIPS), Algorithm 1. With no labels at all, an ``N``-way task is made
from ``N`` images drawn at random from the unlabeled pool: **each image is its own
class**. Its support set is the images themselves (one shot each), and its query set is an
augmentation of each:

.. math::

    x_1, \dots, x_N \sim \mathcal{U}(\mathcal{D}), \qquad
    S = \{(x_i, i)\}_{i=1}^{N}, \qquad Q = \{(\mathcal{A}(x_i), i)\}_{i=1}^{N}.

Two drawn images may show the same character, so a few tasks are wrong; with ``N`` much
smaller than the number of classes in the pool this is rare (the paper's sec. 3 bounds
the probability: with 20 drawings of each of 1,200 characters, two of 5 random images
share a character with probability about 1%). The augmentation :math:`\mathcal{A}` is what
the learner learns to ignore, the same role it plays in SimCLR (chapter 8 makes the link
exact). Any meta-learner trains on these tasks unchanged: ProtoNet, MAML, Reptile.

Generalisations used here, both off by default except where a recipe turns them on:

- ``shots > 1``: shot 0 is the image itself, the others augmentations of it;
- ``augment_support``: the support images are augmented too, so that the two sides of a
  task are symmetric (the paper augments the queries only).

**No labels are read**: the source is built from a tensor of images (or an
:class:`~companion.data.base.ImageDataset`, of which it keeps the images only); the tests
check that shuffling or removing the labels gives the same tasks.

Example:
    >>> from companion.data import load_dataset
    >>> source = UMTRA(load_dataset("glyphs", "train"), ways=5, queries=2, seed=0)
    >>> batch = source.sample_batch(3)
    >>> batch.support_x.shape, batch.query_y[0].tolist()
    (torch.Size([3, 5, 1, 28, 28]), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
"""

from __future__ import annotations

import torch

from companion.checks import check_int
from companion.data.augment import AugmentConfig, augment
from companion.data.episodes import Episode, TaskBatch
from companion.tasks.pool import unlabeled_images


class UMTRA:
    """``N``-way tasks from ``N`` random unlabeled images and their augmentations.

    Args:
        images: the unlabeled pool, a tensor ``(M, C, H, W)`` or an ``ImageDataset`` (its
            labels are never read).
        ways: images, hence classes, per task ``N``.
        shots: support images per class ``K`` (shot 0 is the image itself unless
            ``augment_support``; the rest are augmentations).
        queries: augmented query images per class ``Q``.
        augment: the augmentation :math:`\\mathcal{A}` (default: :meth:`AugmentConfig.glyphs`
            for one channel, :meth:`AugmentConfig.rgb` for three).
        augment_support: augment every support image too.
        seed: seed of the source's generator (ignored if ``generator`` is given), which
            draws the images and every augmentation.
        generator: a CPU ``torch.Generator``.

    Raises:
        ValueError: a size below 1, or more ways than images in the pool.

    Shape:
        - sample_batch(T): a ``TaskBatch`` with support ``(T, N*K, C, H, W)`` and query
          ``(T, N*Q, C, H, W)``, class-first
    """

    def __init__(self, images: object, ways: int, shots: int = 1, queries: int = 1, *,
                 augment: AugmentConfig | None = None, augment_support: bool = False,
                 seed: int | None = None, generator: torch.Generator | None = None) -> None:
        self.images = unlabeled_images(images)
        self.ways = check_int("ways", ways)
        self.shots = check_int("shots", shots)
        self.queries = check_int("queries", queries)
        if ways > len(self.images):
            raise ValueError(f"cannot draw {ways}-way UMTRA tasks from {len(self.images)} images "
                             f"(ways must be 1..{len(self.images)})")
        if augment is None:
            augment = AugmentConfig.glyphs() if self.images.shape[1] == 1 else AugmentConfig.rgb()
        if not isinstance(augment, AugmentConfig):
            raise TypeError(f"augment must be an AugmentConfig; got {type(augment).__name__}")
        self.augment = augment
        self.augment_support = bool(augment_support)
        self.generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)

    def generators(self) -> dict[str, torch.Generator]:
        """The source's one random stream (:class:`companion.protocols.TaskSource`)."""
        return {"tasks": self.generator}

    def sample(self) -> Episode:
        """One task: ``N`` random images, each a class."""
        g, n, k, q = self.generator, self.ways, self.shots, self.queries
        x = self.images[torch.randperm(len(self.images), generator=g)[:n]]  # (N, C, H, W)
        copies = x.repeat_interleave(k + q, dim=0).view(n, k + q, *x.shape[1:])
        views = augment(copies.flatten(0, 1), self.augment, g).view_as(copies)
        if not self.augment_support:
            views[:, 0] = x  # the paper's support: the image as it is
        labels = torch.arange(n)
        return Episode(support_x=views[:, :k].flatten(0, 1),  # (N*K, C, H, W), class-first
                       support_y=labels.repeat_interleave(k),
                       query_x=views[:, k:].flatten(0, 1),  # (N*Q, C, H, W)
                       query_y=labels.repeat_interleave(q))

    def sample_batch(self, tasks: int) -> TaskBatch:
        """``tasks`` tasks stacked into a :class:`TaskBatch`."""
        check_int("tasks", tasks)
        return TaskBatch.stack([self.sample() for _ in range(tasks)])
