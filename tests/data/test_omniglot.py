"""Tests for companion.data.omniglot: archive parsing, the cache, splits and errors.

References are independent of the code under test: file names and PNGs read straight from
the zip, the shared ``.npz`` read with ``np.load``, rotations checked with ``torch.rot90``.
No test touches the network: downloads are replaced by functions that fail.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pooch
import pytest
import requests
import torch
from PIL import Image

from companion.data import archives, omniglot
from companion.data.omniglot import (
    OMNIGLOT_SPLITS,
    load_omniglot,
    omniglot_arrays,
    parse_omniglot_archive,
)
from companion.data.paths import DatasetNotFoundError

SHARED = Path(
    os.environ.get("COMPANION_DATA") or Path(__file__).resolve().parents[2].parent / "shared/data"
)
SMALL_ZIP = SHARED / "omniglot" / "images_background_small1.zip"
needs_small_zip = pytest.mark.skipif(
    not SMALL_ZIP.exists(), reason=f"test archive {SMALL_ZIP} is absent (set COMPANION_DATA)"
)
needs_shared_cache = pytest.mark.skipif(
    not (SHARED / "omniglot" / "images_evaluation.npz").exists()
    or not (SHARED / "omniglot" / "images_background.npz").exists(),
    reason=f"shared Omniglot cache {SHARED / 'omniglot'} is absent (set COMPANION_DATA)",
)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def fail_download(*args, **kwargs):
    raise AssertionError("the test tried to download")


def small_zip_sha256() -> str:
    for line in (SHARED / "omniglot" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        if name == SMALL_ZIP.name:
            return f"sha256:{digest}"
    raise AssertionError(f"{SMALL_ZIP.name} not in SHA256SUMS")


def write_archive(path: Path, drawings: dict[str, int], size: int = 105) -> None:
    """A synthetic zip: member name -> a PNG with that many ink pixels in the top row."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, ink in drawings.items():
            pixels = np.ones((size, size), dtype=bool)
            pixels[0, :ink] = False
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            archive.writestr(name, buffer.getvalue())


# ----------------------------------------------------------------------------- parsing


@needs_small_zip
def test_parse_small_archive_matches_the_zip():
    images, labels, alphabets = parse_omniglot_archive(SMALL_ZIP)
    assert images.shape == (136, 20, 105, 105) and images.dtype == bool
    assert labels.dtype == np.int64
    assert np.array_equal(labels, np.repeat(np.arange(136)[:, None], 20, axis=1))
    assert 0.05 < 1.0 - images.mean() < 0.11  # about 8% ink (False)
    assert len(set(alphabets)) == 5

    # reference: ids and alphabets from the member names, sorted numerically by id
    with zipfile.ZipFile(SMALL_ZIP) as archive:
        pngs = [n for n in archive.namelist() if n.endswith(".png")]
        alphabet_of = {int(n.split("/")[-1][:4]): n.split("/")[-3] for n in pngs}
        ids = sorted(alphabet_of)
        assert alphabets == [alphabet_of[i] for i in ids]
        for c, d in [(0, 0), (57, 9), (135, 19)]:
            member = next(n for n in pngs if n.endswith(f"/{ids[c]:04d}_{d + 1:02d}.png"))
            with Image.open(io.BytesIO(archive.read(member))) as png:
                assert png.mode == "1"
                assert np.array_equal(images[c, d], np.asarray(png))
    # official order: each alphabet is one contiguous run of rows
    runs = [a for i, a in enumerate(alphabets) if i == 0 or alphabets[i - 1] != a]
    assert len(runs) == 5


def test_parse_orders_by_numeric_id_and_drawer(tmp_path):
    # id 9 < id 10 numerically (not as strings); the alphabet folders sort the other way
    drawings = {}
    for char_id, folder in [(10, "Alpha/character01"), (9, "Zeta/character01")]:
        for drawer in range(1, 21):
            drawings[f"top/{folder}/{char_id}_{drawer}.png"] = drawer + char_id
    write_archive(tmp_path / "a.zip", drawings)
    images, labels, alphabets = parse_omniglot_archive(tmp_path / "a.zip")
    assert alphabets == ["Zeta", "Alpha"]
    ink_per_drawing = (~images).sum(axis=(2, 3))
    assert np.array_equal(ink_per_drawing[0], np.arange(1, 21) + 9)
    assert np.array_equal(ink_per_drawing[1], np.arange(1, 21) + 10)


@pytest.mark.parametrize("problem", ["size", "drawings", "empty", "name"])
def test_parse_rejects_malformed_archives(tmp_path, problem):
    drawings = {f"top/A/character01/0001_{d:02d}.png": 1 for d in range(1, 21)}
    size = 105
    if problem == "size":
        size = 28
    elif problem == "drawings":
        del drawings["top/A/character01/0001_20.png"]
    elif problem == "empty":
        drawings = {}
    else:
        drawings["top/A/character01/notes.png"] = 1
    write_archive(tmp_path / "bad.zip", drawings, size=size)
    message = {"size": "105x105", "drawings": "19 drawings", "empty": "no PNG", "name": "notes"}
    with pytest.raises(ValueError, match=message[problem]):
        parse_omniglot_archive(tmp_path / "bad.zip")


# ------------------------------------------------------------------------ cache building


@needs_small_zip
def test_cache_built_from_archive_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "download_file", fail_download)
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "images_background.zip").write_bytes(SMALL_ZIP.read_bytes())

    images = omniglot_arrays("background", root=tmp_path, known_hash=small_zip_sha256())
    assert files_under(tmp_path) == [
        "omniglot/images_background.npz", "omniglot/images_background.zip"
    ]  # no temporary files left
    expected, labels, alphabets = parse_omniglot_archive(SMALL_ZIP)
    assert np.array_equal(images, expected)
    with np.load(folder / "images_background.npz") as npz:
        assert set(npz.files) == {"images", "labels", "alphabets"}
        assert npz["images"].dtype == bool and np.array_equal(npz["labels"], labels)
        assert npz["alphabets"].tolist() == alphabets

    # the cache alone now suffices
    (folder / "images_background.zip").unlink()
    data = load_omniglot("background", root=tmp_path, image_size=105, download=False)
    assert data.num_classes == 136 and len(data) == 136 * 20
    assert data.class_names[0] == "Balinese/character01"
    assert data.class_names[-1] == "Latin/character26"
    assert torch.unique(data.groups).tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(data.images[:, 0], torch.from_numpy(~expected).reshape(-1, 105, 105).float())
    assert data.source == str(folder / "images_background.npz")


# -------------------------------------------------------------------------------- errors


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot("train", root=tmp_path, download=False)
    message = str(info.value)
    assert "images_background.zip" in message and "images_background.npz" in message
    assert "images_evaluation.zip" in message  # every missing file is named, not just one
    assert str(tmp_path / "omniglot") in message
    assert f"{omniglot.OMNIGLOT_URL}/images_background.zip" in message
    assert "COMPANION_DATA" in message
    assert files_under(tmp_path) == []


def test_offline_download_fails_cleanly(tmp_path, monkeypatch):
    # the real pooch.retrieve runs; only the HTTP transfer fails, after writing some bytes
    def offline(self, url, output_file, pooch_instance, check_only=False):
        Path(output_file).write_bytes(b"partial download")
        raise requests.exceptions.ConnectionError("no network (test)")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_omniglot("test", root=tmp_path)
    assert "images_evaluation.zip" in str(info.value) and "no network" in str(info.value)
    assert str(tmp_path / "omniglot") in str(info.value)
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)
    assert files_under(tmp_path) == []


def test_corrupt_archive_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "download_file", fail_download)
    folder = tmp_path / "omniglot"
    folder.mkdir()
    (folder / "images_background.zip").write_bytes(b"not the official zip")
    with pytest.raises(ValueError, match="corrupt.*68d2efa1b9178cc56df9314c21c6e718"):
        omniglot_arrays("background", root=tmp_path)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("split", ["training", "", "Train"])
def test_bad_split(tmp_path, split):
    with pytest.raises(ValueError, match="split"):
        load_omniglot(split, root=tmp_path, download=False)


@pytest.mark.parametrize("size", [0, -28, 28.0, True])
def test_bad_image_size(tmp_path, size):
    with pytest.raises(ValueError, match="image_size"):
        load_omniglot("train", root=tmp_path, image_size=size, download=False)


def test_bad_set_name(tmp_path):
    with pytest.raises(ValueError, match="background"):
        omniglot_arrays("train", root=tmp_path, download=False)


# ------------------------------------------------------------------ the shared ready cache


@pytest.fixture(scope="module")
def shared_npz():
    with np.load(SHARED / "omniglot" / "images_background.npz") as npz:
        return {"background": npz["images"]}


@needs_shared_cache
@pytest.mark.parametrize("split, classes", [("background", 964), ("evaluation", 659)])
def test_shared_sets_at_28(split, classes, monkeypatch):
    monkeypatch.setenv("COMPANION_DATA", str(SHARED))  # the default root; read-only folder
    monkeypatch.setattr(archives, "download_file", fail_download)
    data = load_omniglot(split)
    assert data.num_classes == classes and len(data) == classes * 20
    assert data.images.shape == (classes * 20, 1, 28, 28) and data.images.dtype == torch.float32
    assert torch.equal(data.images_per_class(), torch.full((classes,), 20))
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0
    assert 0.05 < float(data.images.mean()) < 0.12  # ink = 1, about 8% of the area
    assert torch.equal(data.groups, torch.arange(classes))  # no alphabet names in the cache
    assert data.class_names[3] == "char0003"
    assert data.source == str(SHARED / "omniglot" / f"images_{split}.npz")


@needs_shared_cache
def test_shared_splits(shared_npz):
    train = load_omniglot("train", root=SHARED, download=False)
    val = load_omniglot("val", root=SHARED, image_size=105, download=False)
    test = load_omniglot("test", root=SHARED, image_size=14, download=False)
    assert (train.num_classes, val.num_classes, test.num_classes) == (800, 164, 659)
    assert test.images.shape[-2:] == (14, 14)
    assert val.class_names[0] == "char0800" and int(val.groups[0]) == 800
    # at 105 the pixels are the cache's, with ink = 1
    reference = torch.from_numpy(~shared_npz["background"][800:]).float()
    assert torch.equal(val.images.reshape(164, 20, 105, 105), reference)


@needs_shared_cache
def test_shared_rotations():
    plain = load_omniglot("val", root=SHARED, download=False)
    rotated = load_omniglot("val", root=SHARED, rotations=True, download=False)
    c = plain.num_classes
    assert rotated.num_classes == 4 * c and len(rotated) == 4 * len(plain)
    assert torch.equal(rotated.groups, plain.groups.repeat(4))
    assert rotated.class_names[c + 5] == plain.class_names[5] + "/rot90"
    for k in range(4):
        for original in (0, 77, c - 1):
            got = rotated.images[rotated.class_indices(k * c + original)]
            expected = torch.rot90(plain.images[plain.class_indices(original)], k, dims=(-2, -1))
            assert torch.equal(got, expected)


def test_every_split_is_what_its_name_says(shared_npz):
    # background = train + val (disjoint), evaluation = test, and the two sets share no
    # character. A character is known by the bytes of its first drawing (the shared cache
    # names classes by number only).
    def characters(split):
        data = load_omniglot(split, root=SHARED, image_size=14, download=False)
        return {data.images[data.class_indices(c)[0]].numpy().tobytes()
                for c in range(data.num_classes)}

    chars = {split: characters(split) for split in OMNIGLOT_SPLITS}
    assert chars["train"] | chars["val"] == chars["background"]
    assert not chars["train"] & chars["val"]
    assert chars["test"] == chars["evaluation"]
    assert not chars["background"] & chars["evaluation"]
    with pytest.raises(ValueError) as error:  # the error lists every split
        load_omniglot("training", root=SHARED, download=False)
    assert all(split in str(error.value) for split in OMNIGLOT_SPLITS)
