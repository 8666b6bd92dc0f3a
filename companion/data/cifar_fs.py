"""CIFAR-FS, read from the official CIFAR-100 archive with tarfile and pickle (no torchvision).

CIFAR-FS (Bertinetto, Henriques, Torr and Vedaldi, *Meta-learning with differentiable
closed-form solvers*, ICLR 2019) turns CIFAR-100 (Krizhevsky, *Learning multiple layers of
features from tiny images*, 2009) into a few-shot benchmark: its 100 classes, each with 600
colour images of 32x32 (CIFAR-100's 500 training and 100 test images of the class, pooled),
are split by class into 64 classes for meta-training, 16 for validation and 20 for
meta-testing (:data:`CIFAR_FS_CLASSES`).

The path from the web to an :class:`ImageDataset`:

1. ``cifar-100-python.tar.gz`` (161 MB) is downloaded with pooch from Krizhevsky's page and
   checked against its MD5 (:func:`companion.data.archives.fetch_archive`);
2. :func:`parse_cifar100_archive` reads its pickles ``cifar-100-python/{train,test,meta}``
   into one ``uint8`` array ``(100, 600, 3, 32, 32)``, classes in CIFAR-100's label order;
   its unpickler builds NumPy arrays and plain Python values and refuses everything else;
3. each split is cached as ``<root>/cifar_fs/<split>.npz`` (``uint8``, uncompressed: the
   photos barely compress; written atomically), by :func:`build_cifar_fs_cache`;
4. :func:`load_cifar_fs` reads one split's cache, scales it to ``[0, 1]`` and resizes it if
   asked.

Pixels are RGB intensities, channels in the order red, green, blue: 0 is black and 1 full
intensity. The grey-scale sets' convention (ink = 1, blank paper = 0) does not apply.

With ``COMPANION_DATA`` pointing at a folder that already holds ``cifar_fs/<split>.npz``,
only step 4 runs: nothing is downloaded or written.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from companion.checks import check_int
from companion.data.archives import fetch_archive, save_npz_atomic
from companion.data.base import ImageDataset, resize_images
from companion.data.paths import DatasetNotFoundError, dataset_dir

CIFAR_FS_SPLITS = ("train", "val", "test")

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# MD5 of the official archive as listed in torchvision's CIFAR100 class
# (torchvision/datasets/cifar.py, `tgz_md5`), read at pytorch/vision commit
# 5c2bb42d9594c4d1a2c892fca7279538626b2aad; an older commit,
# 00ce2d0f416bd3a3ec2aa65a6bb609f24c1b4c0c, lists the same value. Not recomputed from the
# archive here (written without network access).
CIFAR100_MD5 = "md5:eb9058c3a382ffc7106e4002c42a8d85"
ARCHIVE_NAME = "cifar-100-python.tar.gz"
ARCHIVE_TOP = "cifar-100-python"  # the archive's one folder: train, test, meta (and a readme)
IMAGE_SIDE = 32

# The class split of Bertinetto et al. (2019), from the authors' repository:
# bertinetto/r2d2, cifar-fs_splits/{train,val,test}.txt at commit
# 9ed0090cb4979113c97d07f75789b9618a308e52 ("added cifar-fs splits"; a later commit, 6adaabf,
# took the folder out of the repository's tree, and the README now points to a data download
# that carries it). Classes in the order of the files. torchmeta's copy
# (tristandeleu/pytorch-meta, torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json)
# holds the same three sets.
CIFAR_FS_CLASSES: dict[str, tuple[str, ...]] = {
    "train": (
        "train", "skyscraper", "turtle", "raccoon", "spider", "orange", "castle", "keyboard",
        "clock", "pear", "girl", "seal", "elephant", "apple", "aquarium_fish", "bus",
        "mushroom", "possum", "squirrel", "chair", "tank", "plate", "wolf", "road", "mouse",
        "boy", "shrew", "couch", "sunflower", "tiger", "caterpillar", "lion", "streetcar",
        "lawn_mower", "tulip", "forest", "dolphin", "cockroach", "bear", "porcupine", "bee",
        "hamster", "lobster", "bowl", "can", "bottle", "trout", "snake", "bridge", "pine_tree",
        "skunk", "lizard", "cup", "kangaroo", "oak_tree", "dinosaur", "rabbit", "orchid",
        "willow_tree", "ray", "palm_tree", "mountain", "house", "cloud",
    ),
    "val": (
        "otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly",
        "beaver", "beetle", "tractor", "flatfish", "maple_tree", "camel", "crab", "sea",
        "cattle",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
        "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
        "wardrobe", "whale", "woman", "worm",
    ),
}
"""The classes of each split (64 / 16 / 20), as CIFAR-100's fine label names."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes, numbers and NumPy arrays, and refuses any other global.

    A pickle can name any importable callable and run it; CIFAR-100's pickles need only the
    three globals that rebuild a NumPy array (``numpy.core`` in the official Python 2 files,
    ``numpy._core`` when NumPy 2 writes one), so nothing else is looked up.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}: a "
                                         "CIFAR-100 pickle holds only arrays, lists and numbers")
        return super().find_class(module, name)


def _unpickle(archive: tarfile.TarFile, path: str | os.PathLike[str], name: str) -> dict:
    """The dict pickled in member ``cifar-100-python/<name>``; keys are ``bytes``."""
    member = f"{ARCHIVE_TOP}/{name}"
    try:
        file = archive.extractfile(member)
    except KeyError:
        file = None
    if file is None:
        raise ValueError(f"{path}: no file {member!r}; is this CIFAR-100's python archive?")
    with file:
        try:
            # encoding="bytes": the official pickles come from Python 2 (as on the CIFAR page)
            content = _ArrayUnpickler(file, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError) as err:
            raise ValueError(f"{path}: cannot read {member}: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"{path}: {member} holds a {type(content).__name__}, expected a dict")
    return content


def _field(content: dict, key: bytes, path: str | os.PathLike[str], name: str) -> Any:
    """``content[key]``, or a ValueError naming the member and the keys it does have."""
    if key not in content:
        raise ValueError(f"{path}: {ARCHIVE_TOP}/{name} has no {key!r} entry; keys: "
                         f"{sorted(content)}")
    return content[key]


def parse_cifar100_archive(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read CIFAR-100's python archive into one class-major array.

    Each row of a pickle's ``b"data"`` is one image: 1,024 red values, then 1,024 green,
    then 1,024 blue, each plane row-major (the first 32 values are the top row), so a row
    reshaped to ``(3, 32, 32)`` is the image channels-first. The training and test images
    of a class are pooled, training images first, each in the archive's order.

    Returns:
        ``(images, class_names, superclasses)``: class ``c`` is CIFAR-100's fine label
        ``c``, named ``class_names[c]`` (``b"fine_label_names"`` of ``meta``), and belongs
        to the superclass (coarse label) ``superclasses[c]``.

    Shape:
        - images: ``(C, K, 3, 32, 32)`` uint8 (C = 100, K = 600 in the official archive)
        - superclasses: ``(C,)`` int64

    Raises:
        ValueError: not a gzip tar archive, a member or entry missing, a pickle that names
            anything but NumPy's array globals, rows that are not 3,072 bytes, labels out
            of range, a class with a different number of images than the others, or a
            class filed under two superclasses.
    """
    try:
        archive = tarfile.open(path, "r:gz")
    except (tarfile.TarError, OSError) as err:  # gzip's errors are OSErrors
        raise ValueError(f"{path} is not a gzip tar archive: {err}") from err
    with archive:
        parts = {name: _unpickle(archive, path, name) for name in ("train", "test", "meta")}
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _field(parts["meta"], b"fine_label_names", path, "meta")]
    rows, fine, coarse = [], [], []
    for name in ("train", "test"):
        data = np.asarray(_field(parts[name], b"data", path, name))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIDE ** 2:
            raise ValueError(f"{path}: {ARCHIVE_TOP}/{name} data is {data.dtype} "
                             f"{data.shape}, expected uint8 (N, 3072)")
        rows.append(data)
        for key, out in ((b"fine_labels", fine), (b"coarse_labels", coarse)):
            labels = np.asarray(_field(parts[name], key, path, name), dtype=np.int64)
            if labels.shape != (len(data),):
                raise ValueError(f"{path}: {ARCHIVE_TOP}/{name} has {len(data)} images but "
                                 f"{key.decode()} of shape {labels.shape}")
            out.append(labels)
    data, fine, coarse = np.concatenate(rows), np.concatenate(fine), np.concatenate(coarse)
    if fine.size and (fine.min() < 0 or fine.max() >= len(names)):
        raise ValueError(f"{path}: fine labels span {fine.min()}..{fine.max()}, but meta "
                         f"names {len(names)} classes")
    counts = np.bincount(fine, minlength=len(names))
    if len(names) == 0 or (counts != counts[0]).any() or counts[0] == 0:
        raise ValueError(f"{path}: every class needs the same number of images; counts per "
                         f"class {counts.tolist()}")
    order = np.argsort(fine, kind="stable")  # class-major; stable keeps train before test
    images = data[order].reshape(len(names), counts[0], 3, IMAGE_SIDE, IMAGE_SIDE)
    coarse = coarse[order].reshape(len(names), counts[0])  # (C, K)
    mixed = np.flatnonzero((coarse != coarse[:, :1]).any(axis=1))
    if mixed.size:
        raise ValueError(f"{path}: class {names[mixed[0]]!r} has images in several "
                         "superclasses")
    return images, names, coarse[:, 0].copy()


def _check_class_names(names: list[str], path: Path) -> None:
    """The split lists must cover exactly the archive's 100 fine labels, once each."""
    listed = [c for split in CIFAR_FS_SPLITS for c in CIFAR_FS_CLASSES[split]]
    if sorted(listed) != sorted(names):
        raise ValueError(f"{path}: the archive's class names do not match CIFAR-FS's split "
                         f"lists; only in the archive: {sorted(set(names) - set(listed))}, "
                         f"only in the lists: {sorted(set(listed) - set(names))}")


def build_cifar_fs_cache(root: str | os.PathLike[str] | None = None, *, download: bool = True,
                         known_hash: str | None = None) -> dict[str, Path]:
    """Write ``<root>/cifar_fs/{train,val,test}.npz`` from the archive (fetched if needed).

    Each cache holds ``images`` ``(C, K, 3, 32, 32)`` uint8, ``class_names`` ``(C,)`` (the
    split's list, in order) and ``superclasses`` ``(C,)`` int64 (CIFAR-100's coarse label).

    Args:
        root: data root (default ``$COMPANION_DATA`` or the user cache folder).
        download: fetch the official archive when it is not in ``<root>/cifar_fs``.
        known_hash: pooch-style checksum of the archive; ``None`` means the official
            :data:`CIFAR100_MD5`.

    Returns:
        The cache path of each split.

    Raises:
        DatasetNotFoundError: no archive, and ``download=False`` or no network.
        ValueError: the archive does not match its checksum (it is deleted) or is not
            CIFAR-100's python archive.
    """
    folder = dataset_dir("cifar_fs", root)
    archive = fetch_archive(
        CIFAR100_URL, known_hash or CIFAR100_MD5, folder / ARCHIVE_NAME, download=download,
        not_found=lambda reason: _not_found(folder, reason),
    )
    images, names, superclasses = parse_cifar100_archive(archive)
    _check_class_names(names, archive)
    caches = {}
    for split in CIFAR_FS_SPLITS:
        index = [names.index(c) for c in CIFAR_FS_CLASSES[split]]
        caches[split] = folder / f"{split}.npz"
        save_npz_atomic(caches[split], {
            "images": images[index],
            "class_names": np.array(CIFAR_FS_CLASSES[split]),
            "superclasses": superclasses[index],
        }, compress=False)
    return caches


def _not_found(folder: Path, reason: str) -> DatasetNotFoundError:
    missing = [f"{s}.npz" for s in CIFAR_FS_SPLITS if not (folder / f"{s}.npz").exists()]
    return DatasetNotFoundError(
        f"CIFAR-FS not found ({reason}). Missing in {folder}: {ARCHIVE_NAME} (or its ready "
        f"caches {', '.join(missing)}). Download {CIFAR100_URL} (161 MB, "
        f"{CIFAR100_MD5}) and put it in {folder}, or set COMPANION_DATA to a data root whose "
        "cifar_fs/ folder has it."
    )


def load_cifar_fs(split: str = "train", *, root: str | os.PathLike[str] | None = None,
                  image_size: int = 32, download: bool = True) -> ImageDataset:
    """A CIFAR-FS split as an :class:`ImageDataset` (float32 RGB in ``[0, 1]``, 600 a class).

    Splits are Bertinetto et al.'s: ``train`` 64 classes, ``val`` 16, ``test`` 20
    (:data:`CIFAR_FS_CLASSES`, in that order). The group of a class is its CIFAR-100
    superclass (coarse label ``0..19``), so classes of one group are related (``oak_tree``,
    ``pine_tree``) and a split may hold only part of a group.

    Args:
        split: one of :data:`CIFAR_FS_SPLITS`.
        root: data root (default ``$COMPANION_DATA`` or the user cache folder).
        image_size: side of the square images; 32 keeps the original pixels, any other
            size is an anti-aliased bilinear resize.
        download: fetch the official archive if the split's cache and the archive are
            both missing.

    Shape:
        - images: ``(M, 3, image_size, image_size)`` with ``M = 600 * classes``, RGB
        - labels: ``(M,)``, class-major (the 600 images of class 0 first)

    Raises:
        ValueError: unknown split, an image size that is not a positive int, or a cache or
            archive that is not what it should be.
        DatasetNotFoundError: neither the cache nor the archive is there and it cannot be
            downloaded (the message says which file to put where).
    """
    if split not in CIFAR_FS_SPLITS:
        raise ValueError(
            f"unknown CIFAR-FS split {split!r}; available: {', '.join(CIFAR_FS_SPLITS)}"
        )
    check_int("image_size", image_size)
    cache = dataset_dir("cifar_fs", root) / f"{split}.npz"
    if not cache.exists():
        build_cifar_fs_cache(root, download=download)
    with np.load(cache, allow_pickle=False) as npz:
        if set(npz.files) != {"images", "class_names", "superclasses"}:
            raise ValueError(f"{cache} is not a CIFAR-FS cache (arrays {npz.files}); delete "
                             "it to rebuild it")
        images, names, superclasses = npz["images"], npz["class_names"], npz["superclasses"]
    names = tuple(str(n) for n in names)
    if (images.dtype != np.uint8 or images.ndim != 5
            or images.shape[2:] != (3, IMAGE_SIDE, IMAGE_SIDE)
            or names != CIFAR_FS_CLASSES[split] or superclasses.shape != (len(names),)):
        raise ValueError(f"{cache} is not the CIFAR-FS {split} cache (images {images.dtype} "
                         f"{images.shape}, {len(names)} classes); delete it to rebuild it")
    num_classes, per_class = images.shape[:2]
    return ImageDataset(
        name="cifar_fs",
        split=split,
        images=_scaled(images.reshape(-1, 3, IMAGE_SIDE, IMAGE_SIDE), image_size),
        labels=torch.arange(num_classes).repeat_interleave(per_class),
        groups=torch.from_numpy(superclasses.astype(np.int64)),
        class_names=names,
        source=str(cache),
    )


def _scaled(pixels: np.ndarray, size: int, chunk: int = 4096) -> torch.Tensor:
    """``pixels / 255`` as float32, resized in chunks (one float copy of the images at most).

    Shape:
        - pixels: ``(M, 3, 32, 32)`` uint8
        - returns: ``(M, 3, size, size)`` float32
    """
    out = torch.empty((pixels.shape[0], 3, size, size))
    for start in range(0, pixels.shape[0], chunk):
        x = torch.from_numpy(pixels[start:start + chunk]).float().div_(255.0)
        out[start:start + chunk] = resize_images(x, size)
    return out
