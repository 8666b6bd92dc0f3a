"""Batches of unlabeled images, the training data of self-supervised methods.

:class:`ImageBatchSampler` is the self-supervised counterpart of
:class:`~companion.data.EpisodeSampler`: ``sample_batch(B)`` returns ``B`` distinct images
of a split, drawn at random without their labels from the sampler's own
``torch.Generator``. It has the attributes the training loop
(:func:`companion.train.fit`) reads from any sampler, ``dataset`` and ``generator``, so
self-supervised methods train, checkpoint and resume through the same loop as the
meta-learners.

Example:
    >>> from companion.data import load_dataset
    >>> sampler = ImageBatchSampler(load_dataset("digits", "train"), seed=0)
    >>> sampler.sample_batch(32).shape
    torch.Size([32, 1, 8, 8])
"""

from __future__ import annotations

import torch

from companion.checks import check_int
from companion.data.base import ImageDataset


class ImageBatchSampler:
    """Random batches of unlabeled images from one dataset split.

    Every batch is a uniformly random set of ``B`` distinct images; the sampler's whole
    state is its generator, so a resumed training run draws the same batches as one that
    never stopped. (A ``DataLoader(shuffle=True)`` differs only in visiting each image
    exactly once per epoch; with thousands of steps the two are indistinguishable.)

    Args:
        dataset: the split whose images are drawn (labels are never returned).
        seed: seed of the sampler's own generator (ignored if ``generator`` is given).
        generator: a CPU ``torch.Generator`` to draw from.

    Shape:
        - sample_batch(B): ``(B, C, H, W)``
    """

    def __init__(
        self,
        dataset: ImageDataset,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(dataset, ImageDataset):
            raise TypeError(f"dataset must be an ImageDataset; got {type(dataset).__name__}")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.dataset = dataset
        self.generator = generator

    def generators(self) -> dict[str, torch.Generator]:
        """The sampler's one random stream (:class:`companion.protocols.TaskSource`)."""
        return {"images": self.generator}

    def __len__(self) -> int:
        return len(self.dataset.images)

    def sample_batch(self, batch_size: int) -> torch.Tensor:
        """``batch_size`` distinct images of the split, drawn at random.

        Shape:
            - returns: ``(batch_size, C, H, W)``, on the dataset's device (the CPU)
        """
        check_int("batch_size", batch_size)
        if batch_size > len(self):
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(self)} images of "
                f"{self.dataset.name}/{self.dataset.split} (at most {len(self)})"
            )
        index = torch.randperm(len(self), generator=self.generator)[:batch_size]
        return self.dataset.images[index]
