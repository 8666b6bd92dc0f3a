"""Datasets and episodes.

``load_dataset(name, split=...)`` is the one entry point for every dataset; each returns an
:class:`ImageDataset`. :class:`EpisodeSampler` turns one into N-way K-shot
:class:`Episode`\\ s, and :class:`TaskBatch` stacks episodes for ``torch.func.vmap``.

=============  ==================================================  =====================
name           what                                                needs
=============  ==================================================  =====================
``glyphs``     procedural Omniglot-like characters (the default)   nothing
``digits``     scikit-learn's 8x8 handwritten digits               nothing
``omniglot``   Lake et al.'s 1,623 characters x 20 drawers         download or cache
``cifar_fs``   CIFAR-100 as 64/16/20 classes of 32x32 colour       download or cache
=============  ==================================================  =====================

Grey-scale sets have one channel with ink = 1 and paper = 0; ``cifar_fs`` has three (RGB
intensities, 0 = black).
"""

from __future__ import annotations

import os
from typing import Any

from companion.data.base import ImageDataset, resize_images
from companion.data.cifar_fs import CIFAR_FS_SPLITS, load_cifar_fs
from companion.data.digits import DIGITS_SPLITS, load_digits
from companion.data.episodes import Episode, EpisodeSampler, TaskBatch
from companion.data.glyphs import GLYPH_SPLITS, load_glyphs
from companion.data.omniglot import OMNIGLOT_SPLITS, load_omniglot
from companion.data.paths import DatasetNotFoundError, data_root, dataset_dir

DATASETS: dict[str, tuple[str, ...]] = {
    "glyphs": tuple(GLYPH_SPLITS),
    "digits": DIGITS_SPLITS,
    "omniglot": OMNIGLOT_SPLITS,
    "cifar_fs": CIFAR_FS_SPLITS,
}
"""Every dataset name and its splits."""


def load_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    **options: Any,
) -> ImageDataset:
    """Load a dataset split as an :class:`ImageDataset` (images in ``[0, 1]``).

    Grey-scale sets (glyphs, digits, omniglot) have one channel, ink = 1; ``cifar_fs`` has
    three, RGB intensities (0 = black).

    Args:
        name: one of :data:`DATASETS` (``"glyphs"``, ``"digits"``, ``"omniglot"``,
            ``"cifar_fs"``).
        split: a split of that dataset (``"train"``, ``"val"``, ``"test"``, ...).
        root: data folder for downloaded datasets (default: ``$COMPANION_DATA`` or the user
            cache folder); ignored by the generated and bundled ones.
        image_size: side of the square images (default 28; 8 for digits, 32 for cifar_fs).
        **options: dataset-specific options, e.g. ``seed``/``alphabets`` for glyphs,
            ``rotations``/``download`` for omniglot, ``download`` for cifar_fs.

    Raises:
        ValueError: unknown name, split or option value.
        DatasetNotFoundError: a downloadable dataset is neither cached nor reachable.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in DATASETS[name]:
        raise ValueError(
            f"unknown split {split!r} for {name}; available: {', '.join(DATASETS[name])}"
        )
    if name == "glyphs":
        return load_glyphs(split, image_size=image_size or 28, **options)
    if name == "digits":
        return load_digits(split, image_size=image_size or 8, **options)
    if name == "cifar_fs":
        return load_cifar_fs(split, root=root, image_size=image_size or 32, **options)
    return load_omniglot(split, root=root, image_size=image_size or 28, **options)


__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "Episode",
    "EpisodeSampler",
    "ImageDataset",
    "TaskBatch",
    "data_root",
    "dataset_dir",
    "load_cifar_fs",
    "load_dataset",
    "load_digits",
    "load_glyphs",
    "load_omniglot",
    "resize_images",
]
