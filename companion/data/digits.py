"""scikit-learn's 8x8 handwritten digits (Alpaydin & Kaynak, UCI), as an :class:`ImageDataset`.

1,797 grey-scale images of the digits 0-9 at 8x8, with intensities 0..16 (ink high). It
ships inside scikit-learn, so it needs no download: the book uses it for quick, fully
offline demonstrations.

With only ten classes it is a small few-shot problem, split by class:

=========  ==========================================================
split      classes and images
=========  ==========================================================
``train``  digits 0-4, all images
``val``    digits 5-9, the first half of each class's images
``test``   digits 5-9, the second half of each class's images
``all``    digits 0-9, all images (self-supervised training, probes)
=========  ==========================================================
"""

from __future__ import annotations

import torch

from companion.data.base import ImageDataset, resize_images

DIGITS_SPLITS = ("train", "val", "test", "all")


def load_digits(split: str = "train", *, image_size: int = 8) -> ImageDataset:
    """Load the digits as ink-high images in ``[0, 1]``, upsampled to ``image_size`` if asked.

    Shape:
        - returns images: ``(M, 1, image_size, image_size)``
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"unknown digits split {split!r}; allowed: {', '.join(DIGITS_SPLITS)}")
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).long()
    if split == "all":
        keep, classes = torch.arange(len(labels)), list(range(10))
    else:
        classes = list(range(5)) if split == "train" else list(range(5, 10))
        parts = []
        for c in classes:
            ix = torch.nonzero(labels == c).flatten()
            half = len(ix) // 2
            parts.append(ix if split == "train" else ix[:half] if split == "val" else ix[half:])
        keep = torch.cat(parts)
    remap = torch.full((10,), -1, dtype=torch.long)
    remap[classes] = torch.arange(len(classes))
    return ImageDataset(
        name="digits",
        split=split,
        images=resize_images(images[keep], image_size),
        labels=remap[labels[keep]],
        groups=torch.arange(len(classes)),
        class_names=tuple(str(c) for c in classes),
        source="scikit-learn",
    )
