"""Omniglot, read from the official archives with Pillow and NumPy (no torchvision).

Omniglot (Lake, Salakhutdinov and Tenenbaum, *Human-level concept learning through
probabilistic program induction*, Science 2015) has 1,623 handwritten characters from 50
alphabets, each drawn once by 20 people: the *background* set (964 characters, 30
alphabets) and the *evaluation* set (659 characters, 20 alphabets).

The path from the web to an :class:`ImageDataset`:

1. ``images_<set>.zip`` is downloaded with pooch from the official repository and checked
   against its MD5 (pooch streams into a temporary file in the dataset folder and moves it
   into place only when complete and verified);
2. :func:`parse_omniglot_archive` turns the archive into one bool array
   ``(C, 20, 105, 105)``, characters in the official order (numeric character id);
3. the array is cached as ``<root>/omniglot/images_<set>.npz`` (written atomically);
4. :func:`load_omniglot` picks a split, makes ink = 1, resizes (28x28 is the standard
   few-shot size) and optionally adds rotations by 90/180/270 degrees as new classes
   (Santoro et al. 2016, *One-shot learning with memory-augmented neural networks*;
   Vinyals et al. 2016, *Matching networks for one shot learning*).

With ``COMPANION_DATA`` pointing at a folder that already holds ``omniglot/*.npz``, only
step 4 runs: nothing is downloaded or written.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from companion.checks import check_int
from companion.data.archives import fetch_archive, save_npz_atomic
from companion.data.base import ImageDataset, resize_images
from companion.data.paths import DatasetNotFoundError, dataset_dir

OMNIGLOT_SPLITS = ("train", "val", "test", "background", "evaluation")
"""``train``/``val``: background rows ``[:800]``/``[800:]``; ``test`` = ``evaluation``."""

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
# MD5s of the official zips as listed in torchvision's Omniglot class
# (torchvision/datasets/omniglot.py, `zips_md5`), read at pytorch/vision commit
# 738bb42169380ef4d56afdf0bb5eb3e83b66815e; later torchvision releases list the same values.
# Not recomputed from the zips here (written without network access).
OMNIGLOT_MD5 = {
    "background": "md5:68d2efa1b9178cc56df9314c21c6e718",
    "evaluation": "md5:6b91aef0f799c5bb55b94e3f2daec811",
}
NUM_DRAWERS = 20
IMAGE_SIDE = 105
NUM_TRAIN_CHARACTERS = 800  # background rows [:800] train, [800:] (164 characters) val
_PNG_NAME = re.compile(r"(\d+)_(\d+)\.png")  # <character id>_<drawer>.png


def parse_omniglot_archive(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read an archive laid out as ``<top>/<alphabet>/characterNN/<id>_<drawer>.png``.

    Characters are sorted by their numeric id (the official order, in which each alphabet
    is a contiguous run), drawings by drawer number. Pixels are kept exactly as in the
    1-bit PNGs: ink is ``False``, paper ``True``.

    Returns:
        ``(images, labels, alphabets)``: row ``c`` of ``labels`` repeats ``c``;
        ``alphabets[c]`` is the alphabet folder of character ``c``.

    Shape:
        - images: ``(C, 20, 105, 105)`` bool
        - labels: ``(C, 20)`` int64

    Raises:
        ValueError: no PNGs, a file name outside the layout, a character id in two
            folders, a character without exactly 20 drawings, or an image not 105x105.
    """
    drawings: dict[int, dict[int, str]] = {}  # character id -> drawer -> member name
    folder_of: dict[int, tuple[str, str]] = {}  # character id -> (alphabet, characterNN)
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            parts = name.split("/")
            if not name.endswith(".png") or "__MACOSX" in parts:
                continue
            match = _PNG_NAME.fullmatch(parts[-1])
            if match is None or len(parts) < 3:
                raise ValueError(
                    f"{path}: {name!r} is not <alphabet>/characterNN/<id>_<drawer>.png"
                )
            char_id, drawer = int(match[1]), int(match[2])
            if folder_of.setdefault(char_id, (parts[-3], parts[-2])) != (parts[-3], parts[-2]):
                raise ValueError(f"{path}: character id {char_id} is in two folders: "
                                 f"{'/'.join(folder_of[char_id])} and {'/'.join(parts[-3:-1])}")
            drawings.setdefault(char_id, {})[drawer] = name
        if not drawings:
            raise ValueError(f"{path}: no PNG files; is this an Omniglot archive?")
        ids = sorted(drawings)
        images = np.empty((len(ids), NUM_DRAWERS, IMAGE_SIDE, IMAGE_SIDE), dtype=bool)
        for c, char_id in enumerate(ids):
            members = drawings[char_id]
            if len(members) != NUM_DRAWERS:
                raise ValueError(f"{path}: character {'/'.join(folder_of[char_id])} (id "
                                 f"{char_id}) has {len(members)} drawings, expected 20")
            for d, drawer in enumerate(sorted(members)):
                images[c, d] = _read_png(archive, members[drawer])
    labels = np.repeat(np.arange(len(ids), dtype=np.int64)[:, None], NUM_DRAWERS, axis=1)
    return images, labels, [folder_of[i][0] for i in ids]


def _read_png(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    """One drawing as a ``(105, 105)`` bool array, ``False`` where the PNG is black."""
    with Image.open(io.BytesIO(archive.read(name))) as image:
        if image.size != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"{name}: image is {image.size[0]}x{image.size[1]}, expected 105x105")
        return np.asarray(image.convert("L")) >= 128


def omniglot_arrays(set_name: str, *, root: str | os.PathLike[str] | None = None,
                    download: bool = True, known_hash: str | None = None) -> np.ndarray:
    """The cached ``background`` or ``evaluation`` set, building the cache if needed.

    Args:
        set_name: ``"background"`` or ``"evaluation"``.
        root: data root (default ``$COMPANION_DATA`` or the user cache folder).
        download: fetch the official zip when neither the ``.npz`` nor the zip is there.
        known_hash: pooch-style checksum of the zip (``"md5:..."``, ``"sha256:..."``);
            ``None`` means the official one in :data:`OMNIGLOT_MD5`.

    Shape:
        - returns: ``(C, 20, 105, 105)`` bool, ink ``False`` (C = 964 or 659)
    """
    return _cached_set(set_name, root=root, download=download, known_hash=known_hash)[0]


def _cached_set(set_name: str, *, root: str | os.PathLike[str] | None, download: bool,
                known_hash: str | None = None) -> tuple[np.ndarray, list[str] | None, Path]:
    """``(images, alphabets or None, cache path)``; parses and caches the zip if needed."""
    if set_name not in OMNIGLOT_MD5:
        raise ValueError(f"unknown Omniglot set {set_name!r}; expected 'background' or "
                         "'evaluation'")
    folder = dataset_dir("omniglot", root)
    cache = folder / f"images_{set_name}.npz"
    if not cache.exists():
        archive = _ensure_archive(set_name, folder, download, known_hash or OMNIGLOT_MD5[set_name])
        images, labels, alphabets = parse_omniglot_archive(archive)
        save_npz_atomic(cache, {"images": images, "labels": labels,
                                "alphabets": np.array(alphabets)})
    with np.load(cache, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
        alphabets = [str(a) for a in npz["alphabets"]] if "alphabets" in npz.files else None
    if images.dtype != bool or images.shape[1:] != (NUM_DRAWERS, IMAGE_SIDE, IMAGE_SIDE) \
            or labels.shape != images.shape[:2]:
        raise ValueError(f"{cache} is not an Omniglot cache: images {images.dtype} "
                         f"{images.shape}, labels {labels.shape}; delete it to rebuild it")
    return images, alphabets, cache


def _ensure_archive(set_name: str, folder: Path, download: bool, known_hash: str) -> Path:
    """The verified zip in ``folder``: checked if present, else downloaded (or an error)."""
    name = f"images_{set_name}.zip"
    return fetch_archive(f"{OMNIGLOT_URL}/{name}", known_hash, folder / name, download=download,
                         not_found=lambda reason: _not_found(set_name, folder, reason))


def _not_found(set_name: str, folder: Path, reason: str) -> DatasetNotFoundError:
    """The error for a missing set; it lists every Omniglot file still missing in ``folder``."""
    missing = [f"images_{name}.zip" for name in OMNIGLOT_MD5
               if not (folder / f"images_{name}.npz").exists()
               and not (folder / f"images_{name}.zip").exists()]
    urls = " and ".join(f"{OMNIGLOT_URL}/{name}" for name in missing)
    return DatasetNotFoundError(
        f"Omniglot {set_name} set not found ({reason}). Missing in {folder}: "
        f"{', '.join(missing)} (or their ready .npz caches "
        f"{', '.join(m.replace('.zip', '.npz') for m in missing)}). Download {urls} and put "
        f"them in {folder}, or set COMPANION_DATA to a data root whose omniglot/ folder "
        "has them."
    )


def load_omniglot(split: str = "train", *, root: str | os.PathLike[str] | None = None,
                  image_size: int = 28, rotations: bool = False,
                  download: bool = True) -> ImageDataset:
    """An Omniglot split as an :class:`ImageDataset` (float32, ink = 1, 20 images a class).

    Splits: ``background`` (964 characters) and ``evaluation`` (659) are Lake et al.'s sets;
    ``test`` is ``evaluation``; ``train`` is the first 800 background characters and ``val``
    the remaining 164. Alphabets are contiguous runs of rows, so ``val`` is whole alphabets
    except (at most) one alphabet cut at row 800.

    Args:
        split: one of :data:`OMNIGLOT_SPLITS`.
        root: data root (default ``$COMPANION_DATA`` or the user cache folder).
        image_size: side of the square images (Lanczos resize, as in the MAML code); 105 keeps the
            original pixels.
        rotations: add the rotations by 90, 180 and 270 degrees (``torch.rot90``,
            counter-clockwise) as new classes: class ``k * C + c`` is character ``c``
            rotated ``k`` times, ``k = 0..3``, with the group of character ``c``.
        download: fetch the official zip if the cache is missing.

    The group of a character is its alphabet's index (order of first appearance) and its
    name ``"<alphabet>/characterNN"`` (NN counts the alphabet's characters in id order,
    like the archive's folders) when the cache has alphabet names; a cache without them
    (like the shared one) gives each character its own group and names ``"char0123"``
    (the row in the set). Rotated classes append ``"/rot90"``, ``"/rot180"``, ``"/rot270"``.

    Shape:
        - images: ``(M, 1, image_size, image_size)`` with ``M = 20 * classes``
        - labels: ``(M,)``, class-major (the 20 drawings of class 0 first)

    Raises:
        ValueError: unknown split or an image size that is not a positive int.
        DatasetNotFoundError: neither the cache nor the zip is there and it cannot be
            downloaded (the message says which file to put where).
    """
    if split not in OMNIGLOT_SPLITS:
        raise ValueError(
            f"unknown Omniglot split {split!r}; available: {', '.join(OMNIGLOT_SPLITS)}"
        )
    check_int("image_size", image_size)
    set_name = "evaluation" if split in ("test", "evaluation") else "background"
    images, alphabets, source = _cached_set(set_name, root=root, download=download)
    groups, names = _groups_and_names(alphabets, images.shape[0])
    rows = {"train": slice(0, NUM_TRAIN_CHARACTERS), "val": slice(NUM_TRAIN_CHARACTERS, None)}
    keep = rows.get(split, slice(None))
    images, groups, names = images[keep], groups[keep], names[keep]
    if images.shape[0] == 0:
        raise ValueError(f"split {split!r} of {source} is empty (the set has fewer than "
                         f"{NUM_TRAIN_CHARACTERS + 1} characters)")
    num_chars = images.shape[0]
    x = _ink_resized(images.reshape(-1, IMAGE_SIDE, IMAGE_SIDE), image_size)  # (C*20, 1, S, S)
    x = x.view(num_chars, NUM_DRAWERS, 1, image_size, image_size)  # (C, 20, 1, S, S)
    if rotations:
        x = torch.cat([x] + [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3)])  # (4C, ...)
        groups = groups.repeat(4)
        names = names + [f"{n}/rot{90 * k}" for k in (1, 2, 3) for n in names]
    return ImageDataset(
        name="omniglot",
        split=split,
        images=x.reshape(-1, 1, image_size, image_size),
        labels=torch.arange(x.shape[0]).repeat_interleave(NUM_DRAWERS),
        groups=groups,
        class_names=tuple(names),
        source=str(source),
    )


def _groups_and_names(
    alphabets: list[str] | None, num_chars: int
) -> tuple[torch.Tensor, list[str]]:
    """Group id and readable name of every character of a whole set (see load_omniglot)."""
    if alphabets is None:
        return torch.arange(num_chars), [f"char{c:04d}" for c in range(num_chars)]
    index: dict[str, int] = {}
    counts: dict[str, int] = {}
    names = []
    for alphabet in alphabets:
        index.setdefault(alphabet, len(index))
        counts[alphabet] = counts.get(alphabet, 0) + 1
        names.append(f"{alphabet}/character{counts[alphabet]:02d}")
    return torch.tensor([index[a] for a in alphabets]), names


def _ink_resized(paper: np.ndarray, size: int, chunk: int = 2048) -> torch.Tensor:
    """Ink = 1.0 (``~paper``), resized in chunks so only one float chunk is 105x105.

    Shape:
        - paper: ``(M, 105, 105)`` bool, ink ``False``
        - returns: ``(M, 1, size, size)`` float32
    """
    paper_t = torch.from_numpy(paper)
    out = torch.empty((paper.shape[0], 1, size, size))
    for start in range(0, paper.shape[0], chunk):
        ink = (~paper_t[start:start + chunk]).unsqueeze(1).float()  # (chunk, 1, 105, 105)
        out[start:start + chunk] = resize_images(ink, size, method="lanczos")
    return out
