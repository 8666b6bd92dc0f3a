"""Tests for companion.data.cifar_fs: archive parsing, the class split, the cache and errors.

The archive is synthetic but in the official format (a tar.gz holding the pickles
``cifar-100-python/{train,test,meta}``, ``b"data"`` rows of 3,072 bytes: red plane, green
plane, blue plane, each row-major), written here from NumPy arrays that serve as the
reference. The class split is checked against CIFAR-100's 100 fine label names typed below.
No test touches the network: downloads are replaced by functions that fail.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pooch
import pytest
import requests
import torch

from companion.data import DATASETS, archives, cifar_fs, load_dataset
from companion.data.cifar_fs import (
    ARCHIVE_NAME,
    CIFAR_FS_CLASSES,
    CIFAR_FS_SPLITS,
    build_cifar_fs_cache,
    load_cifar_fs,
    parse_cifar100_archive,
)
from companion.data.paths import DatasetNotFoundError

# CIFAR-100's `fine_label_names` (the official meta's order: alphabetical), e.g. as in
# https://www.cs.toronto.edu/~kriz/cifar.html's class table (with the archive's spellings).
CIFAR100_FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard",
    "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray",
    "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
TRAIN_PER_CLASS, TEST_PER_CLASS = 2, 1  # the real archive: 500 and 100
SHARED = Path(
    os.environ.get("COMPANION_DATA") or Path(__file__).resolve().parents[2].parent / "shared/data"
)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def fail_download(*args, **kwargs):
    raise AssertionError("the test tried to download")


def plane_row(hwc: np.ndarray) -> np.ndarray:
    """One image as the archive stores it: all red values, then green, then blue."""
    return np.concatenate([hwc[:, :, 0].ravel(), hwc[:, :, 1].ravel(), hwc[:, :, 2].ravel()])


def make_parts(seed: int = 0) -> dict:
    """Random images in shuffled order (so class-major order must be made), plus two
    hand-made ones: class 0's first training image has a red top-left pixel, a green pixel
    at (row 0, col 1) and a blue one at (row 1, col 0); all of "bed" are (255, 0, 128)."""
    rng = np.random.default_rng(seed)
    superclass = rng.permutation(np.repeat(np.arange(20), 5))  # (100,) a coarse label each
    parts = {}
    for name, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        hwc = rng.integers(0, 256, size=(len(fine), 32, 32, 3), dtype=np.uint8)
        parts[name] = {"fine": fine, "coarse": superclass[fine], "hwc": hwc}
    first = int(np.flatnonzero(parts["train"]["fine"] == 0)[0])
    marked = np.zeros((32, 32, 3), dtype=np.uint8)
    marked[0, 0, 0] = 255  # red
    marked[0, 1, 1] = 200  # green
    marked[1, 0, 2] = 100  # blue
    parts["train"]["hwc"][first] = marked
    for part in parts.values():
        part["hwc"][part["fine"] == CIFAR100_FINE_NAMES.index("bed")] = (255, 0, 128)
    parts["superclass"] = superclass
    return parts


def write_archive(path: Path, parts: dict, *, names=CIFAR100_FINE_NAMES, skip=(),
                  replace=None) -> str:
    """A CIFAR-100 python archive at ``path``; returns its pooch-style MD5.

    ``skip`` leaves members out; ``replace`` maps a member name to other bytes."""
    members = {}
    for name in ("train", "test"):
        part = parts[name]
        members[name] = {
            b"batch_label": f"{name}ing batch 1 of 1".encode(),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(part["fine"]))],
            b"fine_labels": part["fine"].tolist(),
            b"coarse_labels": part["coarse"].tolist(),
            b"data": np.stack([plane_row(im) for im in part["hwc"]]),  # (N, 3072) uint8
        }
    members["meta"] = {b"fine_label_names": [n.encode() for n in names],
                       b"coarse_label_names": [f"super{i}".encode() for i in range(20)]}
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            if name in skip:
                continue
            data = (replace or {}).get(name, pickle.dumps(content, protocol=4))
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return f"md5:{pooch.file_hash(str(path), alg='md5')}"


def expected_images(parts: dict, class_name: str) -> torch.Tensor:
    """The class's training images then its test images, each in archive order, as
    ``(K, 3, 32, 32)`` floats: the reference for the loader."""
    c = CIFAR100_FINE_NAMES.index(class_name)
    hwc = np.concatenate([parts[p]["hwc"][parts[p]["fine"] == c] for p in ("train", "test")])
    return torch.from_numpy(hwc).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def parts() -> dict:
    return make_parts()


@pytest.fixture
def built(tmp_path, parts, monkeypatch) -> Path:
    """A data root whose cifar_fs/ holds the synthetic archive and the caches built from it."""
    monkeypatch.setattr(archives, "download_file", fail_download)
    folder = tmp_path / "cifar_fs"
    folder.mkdir()
    md5 = write_archive(folder / ARCHIVE_NAME, parts)
    build_cifar_fs_cache(tmp_path, known_hash=md5)
    return tmp_path


# -------------------------------------------------------------------------- the split


def test_the_split_is_64_16_20_disjoint_classes_of_cifar100():
    sizes = {split: len(CIFAR_FS_CLASSES[split]) for split in CIFAR_FS_SPLITS}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    sets = [set(CIFAR_FS_CLASSES[split]) for split in CIFAR_FS_SPLITS]
    assert [len(s) for s in sets] == [64, 16, 20]  # no class twice within a split
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert sets[0] | sets[1] | sets[2] == set(CIFAR100_FINE_NAMES)
    assert len(set(CIFAR100_FINE_NAMES)) == 100
    # spot checks against Bertinetto et al.'s files (first and last line of each)
    assert CIFAR_FS_CLASSES["train"][0] == "train" and CIFAR_FS_CLASSES["train"][-1] == "cloud"
    assert CIFAR_FS_CLASSES["val"][0] == "otter" and CIFAR_FS_CLASSES["val"][-1] == "cattle"
    assert CIFAR_FS_CLASSES["test"][0] == "baby" and CIFAR_FS_CLASSES["test"][-1] == "worm"
    assert DATASETS["cifar_fs"] == ("train", "val", "test")


# ------------------------------------------------------------------------------ parsing


def test_parse_pools_train_and_test_images_by_class(tmp_path, parts):
    write_archive(tmp_path / "a.tar.gz", parts)
    images, names, superclasses = parse_cifar100_archive(tmp_path / "a.tar.gz")
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    assert images.shape == (100, per_class, 3, 32, 32) and images.dtype == np.uint8
    assert names == list(CIFAR100_FINE_NAMES)
    assert superclasses.dtype == np.int64
    assert np.array_equal(superclasses, parts["superclass"])
    for c in (0, 1, 57, 99):
        reference = (expected_images(parts, CIFAR100_FINE_NAMES[c]) * 255).round().byte()
        assert torch.equal(torch.from_numpy(images[c]), reference)


def test_pixel_layout_is_red_green_blue_planes_row_major(tmp_path, parts):
    write_archive(tmp_path / "a.tar.gz", parts)
    images, _, _ = parse_cifar100_archive(tmp_path / "a.tar.gz")
    first = images[0, 0]  # class 0 ("apple"), its first training image: the hand-made one
    assert first[0, 0, 0] == 255  # red channel, row 0, column 0
    assert first[1, 0, 1] == 200  # green channel, row 0, column 1
    assert first[2, 1, 0] == 100  # blue channel, row 1, column 0
    assert int(first.astype(int).sum()) == 255 + 200 + 100  # and nothing else
    # the row as stored: byte 0 red (0, 0); byte 1024 + 1 green (0, 1); 2048 + 32 blue (1, 0)
    row = plane_row(parts["train"]["hwc"][np.flatnonzero(parts["train"]["fine"] == 0)[0]])
    assert (row[0], row[1024 + 1], row[2048 + 32]) == (255, 200, 100)


def test_unpickler_reads_a_python2_numpy_pickle():
    # The official archive was pickled by Python 2's cPickle: its strings are SHORT_BINSTRING
    # (``U``) opcodes and its arrays go through numpy.core.multiarray._reconstruct, which a
    # Python 3 pickle.dumps never writes. Written here opcode by opcode (protocol 2):
    # {"data": uint8 [[1, 2], [3, 4]], "fine_labels": [0, 1]}.
    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    array = (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
             + string(b"b") + b"\x87Rq\x03(K\x01K\x02K\x02\x86cnumpy\ndtype\nq\x04"
             + string(b"u1") + b"K\x00K\x01\x87Rq\x05(K\x03" + string(b"|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + string(bytes([1, 2, 3, 4]))
             + b"tb")
    python2 = (b"\x80\x02}q\x00(" + string(b"data") + array + string(b"fine_labels")
               + b"]q\x06(K\x00K\x01eu.")
    content = cifar_fs._ArrayUnpickler(io.BytesIO(python2), encoding="bytes").load()
    assert content[b"fine_labels"] == [0, 1]
    assert content[b"data"].dtype == np.uint8
    assert content[b"data"].tolist() == [[1, 2], [3, 4]]


def test_unpickler_refuses_anything_but_arrays(tmp_path, parts):
    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)

    path = tmp_path / "evil.tar.gz"
    write_archive(path, parts, replace={"meta": pickle.dumps({b"x": Payload()}, protocol=4)})
    with pytest.raises(ValueError, match=r"refusing to load the global (posix|nt)\.mkdir"):
        parse_cifar100_archive(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("problem", ["member", "not_tar", "row", "counts", "names"])
def test_parse_rejects_malformed_archives(tmp_path, parts, problem):
    path = tmp_path / "bad.tar.gz"
    if problem == "member":
        write_archive(path, parts, skip=("meta",))
    elif problem == "not_tar":
        path.write_bytes(b"not a tar.gz")
    elif problem == "row":
        bad = {b"data": np.zeros((300, 3071), dtype=np.uint8), b"fine_labels": [0] * 300,
               b"coarse_labels": [0] * 300}
        write_archive(path, parts, replace={"train": pickle.dumps(bad, protocol=4)})
    elif problem == "counts":
        train = dict(parts["train"], fine=parts["train"]["fine"].copy())
        train["fine"][train["fine"] == 5] = 6  # class 5 loses its training images to class 6
        write_archive(path, {**parts, "train": train})
    else:
        write_archive(path, parts, names=CIFAR100_FINE_NAMES[:99])
    message = {"member": "no file 'cifar-100-python/meta'", "not_tar": "not a gzip tar",
               "row": r"\(300, 3071\), expected uint8 \(N, 3072\)",
               "counts": "same number of images", "names": "fine labels span 0..99"}
    with pytest.raises(ValueError, match=message[problem]):
        parse_cifar100_archive(path)


def test_class_names_that_do_not_match_the_split_lists(tmp_path, parts, monkeypatch):
    monkeypatch.setattr(archives, "download_file", fail_download)
    folder = tmp_path / "cifar_fs"
    folder.mkdir()
    names = ("maple", *CIFAR100_FINE_NAMES[1:])  # "apple" misspelt
    md5 = write_archive(folder / ARCHIVE_NAME, parts, names=names)
    with pytest.raises(ValueError, match=r"only in the archive: \['maple'\].*\['apple'\]"):
        build_cifar_fs_cache(tmp_path, known_hash=md5)
    assert files_under(tmp_path) == [f"cifar_fs/{ARCHIVE_NAME}"]  # no cache written


# ------------------------------------------------------------------- splits and caching


@pytest.mark.parametrize("split", CIFAR_FS_SPLITS)
def test_each_split_holds_its_classes_only(built, parts, split):
    data = load_dataset("cifar_fs", split, root=built, download=False)
    classes = CIFAR_FS_CLASSES[split]
    per_class = TRAIN_PER_CLASS + TEST_PER_CLASS
    assert (data.name, data.split) == ("cifar_fs", split)
    assert data.class_names == classes and data.num_classes == len(classes)
    assert data.images.shape == (len(classes) * per_class, 3, 32, 32)
    assert data.images.dtype == torch.float32
    assert torch.equal(data.labels, torch.arange(len(classes)).repeat_interleave(per_class))
    for c, name in enumerate(classes):
        assert torch.equal(data.images[data.class_indices(c)], expected_images(parts, name))
    superclass = {name: int(parts["superclass"][i]) for i, name in enumerate(CIFAR100_FINE_NAMES)}
    assert data.groups.tolist() == [superclass[name] for name in classes]
    assert data.source == str(built / "cifar_fs" / f"{split}.npz")


def test_second_load_reads_the_cache_not_the_archive(built, monkeypatch):
    folder = built / "cifar_fs"
    assert files_under(built) == [f"cifar_fs/{ARCHIVE_NAME}", "cifar_fs/test.npz",
                                  "cifar_fs/train.npz", "cifar_fs/val.npz"]  # no temp files
    first = load_cifar_fs("val", root=built, download=False)

    def fail_parse(*args, **kwargs):
        raise AssertionError("the archive was read again")

    monkeypatch.setattr(cifar_fs, "parse_cifar100_archive", fail_parse)
    (folder / ARCHIVE_NAME).unlink()
    again = load_cifar_fs("val", root=built, download=False)
    assert torch.equal(again.images, first.images) and again.class_names == first.class_names
    with np.load(folder / "val.npz", allow_pickle=False) as npz:  # compact and pickle-free
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (16, 3, 3, 32, 32)


def test_the_cache_is_built_on_first_load(tmp_path, parts, monkeypatch):
    monkeypatch.setattr(archives, "download_file", fail_download)
    (tmp_path / "cifar_fs").mkdir()
    md5 = write_archive(tmp_path / "cifar_fs" / ARCHIVE_NAME, parts)
    monkeypatch.setattr(cifar_fs, "CIFAR100_MD5", md5)  # this archive stands for the official
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))  # the default root
    data = load_cifar_fs("test", download=False)
    assert data.num_classes == 20 and data.source == str(tmp_path / "cifar_fs" / "test.npz")
    assert files_under(tmp_path) == [f"cifar_fs/{ARCHIVE_NAME}", "cifar_fs/test.npz",
                                     "cifar_fs/train.npz", "cifar_fs/val.npz"]


def test_image_size_resizes_each_channel(built):
    data = load_cifar_fs("train", root=built, image_size=16, download=False)
    assert data.images.shape == (64 * 3, 3, 16, 16)
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    # every image of "bed" is one colour: resizing keeps it exactly
    test = load_cifar_fs("test", root=built, image_size=20, download=False)
    bed = test.images[test.class_indices(test.class_names.index("bed"))]  # (3, 3, 20, 20)
    colour = torch.tensor([1.0, 0.0, 128 / 255]).view(1, 3, 1, 1)
    torch.testing.assert_close(bed, colour.expand_as(bed), atol=1e-6, rtol=0)


def test_a_cache_of_another_split_is_refused(built):
    folder = built / "cifar_fs"
    (folder / "val.npz").write_bytes((folder / "test.npz").read_bytes())
    with pytest.raises(ValueError, match="not the CIFAR-FS val cache.*delete it"):
        load_cifar_fs("val", root=built, download=False)


# ------------------------------------------------------------------------------- errors


def test_missing_data_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar_fs", "train", root=tmp_path, download=False)
    message = str(info.value)
    assert "download=False" in message
    assert f"Missing in {tmp_path / 'cifar_fs'}: {ARCHIVE_NAME}" in message
    assert "train.npz, val.npz, test.npz" in message
    assert cifar_fs.CIFAR100_URL in message and "COMPANION_DATA" in message
    assert files_under(tmp_path) == []


def test_offline_download_fails_cleanly(tmp_path, monkeypatch):
    # the real pooch.retrieve runs; only the HTTP transfer fails, after writing some bytes
    def offline(self, url, output_file, pooch_instance, check_only=False):
        Path(output_file).write_bytes(b"partial download")
        raise requests.exceptions.ConnectionError("no network (test)")

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar_fs("test", root=tmp_path)
    assert ARCHIVE_NAME in str(info.value) and "no network" in str(info.value)
    assert isinstance(info.value.__cause__, requests.exceptions.ConnectionError)
    assert files_under(tmp_path) == []


def test_downloaded_archive_with_the_wrong_checksum_is_not_kept(tmp_path, parts, monkeypatch):
    # the transfer "succeeds" with a valid CIFAR-100-format archive that is not the official
    # one: pooch's MD5 check must reject it before anything is parsed or cached
    write_archive(tmp_path / "impostor.tar.gz", parts)
    impostor = (tmp_path / "impostor.tar.gz").read_bytes()
    (tmp_path / "impostor.tar.gz").unlink()

    def serve(self, url, output_file, pooch_instance, check_only=False):
        Path(output_file).write_bytes(impostor)

    monkeypatch.setattr(pooch.HTTPDownloader, "__call__", serve)
    with pytest.raises(ValueError, match="does not match its checksum md5:eb9058c3a382ffc7106e"):
        load_cifar_fs("train", root=tmp_path)
    assert files_under(tmp_path) == []


def test_corrupt_archive_is_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "download_file", fail_download)
    folder = tmp_path / "cifar_fs"
    folder.mkdir()
    (folder / ARCHIVE_NAME).write_bytes(b"not the official archive")
    with pytest.raises(ValueError, match="corrupt.*eb9058c3a382ffc7106e4002c42a8d85"):
        load_cifar_fs("train", root=tmp_path)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("split", ["training", "", "Train", "background"])
def test_bad_split(tmp_path, split):
    with pytest.raises(ValueError, match="split") as info:
        load_cifar_fs(split, root=tmp_path, download=False)
    assert "train, val, test" in str(info.value)


@pytest.mark.parametrize("size", [0, -32, 32.0, True])
def test_bad_image_size(tmp_path, size):
    with pytest.raises(ValueError, match="image_size"):
        load_cifar_fs("train", root=tmp_path, image_size=size, download=False)


# ---------------------------------------------------------------------- the real data


@pytest.mark.skipif(
    not all((SHARED / "cifar_fs" / f"{s}.npz").exists() for s in CIFAR_FS_SPLITS)
    and not (SHARED / "cifar_fs" / ARCHIVE_NAME).exists(),
    reason=f"CIFAR-FS is not under {SHARED / 'cifar_fs'} (set COMPANION_DATA to a data root "
           f"holding cifar_fs/{ARCHIVE_NAME} or its train/val/test.npz caches)",
)
def test_real_cifar_fs(monkeypatch):
    monkeypatch.setattr(archives, "download_file", fail_download)
    for split, classes in (("train", 64), ("val", 16), ("test", 20)):
        data = load_cifar_fs(split, root=SHARED, download=False)
        assert data.num_classes == classes and len(data) == classes * 600
        assert data.images.shape == (classes * 600, 3, 32, 32)
        assert torch.equal(data.images_per_class(), torch.full((classes,), 600))
        assert 0.3 < float(data.images.mean()) < 0.7  # natural photos, not blank or saturated
        assert data.class_names == CIFAR_FS_CLASSES[split]
        assert set(data.groups.tolist()) <= set(range(20))
