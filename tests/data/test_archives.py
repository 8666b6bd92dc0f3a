"""Tests for companion.data.archives: the atomic cache write.

Checksums, downloads and their errors are tested through the datasets that use them
(tests/data/test_omniglot.py, tests/data/test_cifar_fs.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from companion.data import archives


@pytest.mark.parametrize("compress", [True, False])
def test_cache_round_trips_without_pickle(tmp_path, compress):
    arrays = {"images": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
              "names": np.array(["a", "bc"])}
    target = tmp_path / "set" / "cache.npz"  # the folder is created
    archives.save_npz_atomic(target, arrays, compress=compress)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["cache.npz"]
    with np.load(target, allow_pickle=False) as npz:
        assert set(npz.files) == set(arrays)
        for key, value in arrays.items():
            assert np.array_equal(npz[key], value) and npz[key].dtype == value.dtype


@pytest.mark.parametrize("writer, compress", [("savez_compressed", True), ("savez", False)])
def test_failed_cache_write_leaves_nothing(tmp_path, monkeypatch, writer, compress):
    def write_then_crash(file, **arrays):
        file.write(b"half an npz")
        raise OSError("disk full (test)")

    monkeypatch.setattr(archives.np, writer, write_then_crash)
    target = tmp_path / "omniglot" / "images_background.npz"
    with pytest.raises(OSError, match="disk full"):
        archives.save_npz_atomic(target, {"images": np.zeros((1, 20, 105, 105), dtype=bool)},
                                 compress=compress)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
