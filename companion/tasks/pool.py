"""The unlabeled pool a task source draws from: images, and never labels.

Every source of :mod:`companion.tasks` is built from :func:`unlabeled_images`, which keeps
the images of an :class:`~companion.data.base.ImageDataset` and drops everything else, so
no source can read a label by accident.
"""

from __future__ import annotations

import torch

from companion.data.base import ImageDataset


def unlabeled_images(data: object) -> torch.Tensor:
    """The images of ``data`` (an ``ImageDataset`` or an image tensor), without labels.

    Shape:
        - returns: ``(M, C, H, W)`` floating point

    Raises:
        TypeError: ``data`` is neither.
        ValueError: the tensor is not a non-empty floating-point batch of images.
    """
    if isinstance(data, ImageDataset):
        return data.images
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"expected an ImageDataset or an image tensor (M, C, H, W); got "
                        f"{type(data).__name__}")
    if data.ndim != 4 or not data.is_floating_point() or len(data) == 0:
        raise ValueError(f"expected a non-empty floating-point image tensor (M, C, H, W); got "
                         f"{data.dtype} {tuple(data.shape)}")
    return data
