"""Official archives: downloaded once with a checksum, parsed by our own code, cached atomically.

Every dataset that needs the network (:mod:`companion.data.omniglot`,
:mod:`companion.data.cifar_fs`) goes the same way, and the two shared steps live here:

1. :func:`fetch_archive` returns the verified archive. A copy already in the dataset folder
   is checked against its checksum (and deleted, with an error that says so, when it does
   not match); otherwise pooch downloads it into a temporary file in that folder and moves
   it into place only when it is complete and its checksum matches. With ``download=False``
   or no network the dataset's :class:`~companion.data.paths.DatasetNotFoundError` is
   raised, naming what to put where.
2. The dataset module parses the archive into NumPy arrays (its own code, no torchvision).
3. :func:`save_npz_atomic` caches the arrays: written to a temporary file next to the
   target, then ``os.replace``, so an interrupted run never leaves half a cache behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pooch
import requests

from companion.data.paths import DatasetNotFoundError

NETWORK_ERRORS = (requests.exceptions.RequestException, ConnectionError, TimeoutError)
"""What a failed transfer raises; each one becomes a :class:`DatasetNotFoundError`."""


def download_file(url: str, known_hash: str, path: Path) -> Path:
    """pooch's download of ``url`` to ``path``, kept only once its checksum matches.

    pooch writes to a temporary file in ``path.parent`` and moves it into place when the
    hash matches; on a mismatch it deletes the temporary file and raises ``ValueError``.
    """
    # pooch announces the download on stderr, which a built chapter would show as an error
    # output; say it on stdout instead.
    print(f"downloading {url} into {path.parent}", flush=True)
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")
    try:
        return Path(pooch.retrieve(url, known_hash=known_hash, fname=path.name, path=path.parent))
    finally:
        logger.setLevel(level)


def fetch_archive(url: str, known_hash: str, path: Path, *, download: bool,
                  not_found: Callable[[str], DatasetNotFoundError]) -> Path:
    """The verified archive at ``path``: checked if present, else downloaded from ``url``.

    Args:
        url: where the official archive lives.
        known_hash: its pooch-style checksum (``"md5:..."``, ``"sha256:..."``; a bare hex
            digest means SHA-256).
        path: where it belongs in the dataset folder.
        download: fetch it when absent; ``False`` raises ``not_found("download=False")``.
        not_found: builds the dataset's error from a reason (what failed).

    Raises:
        ValueError: the file at ``path``, or the one just downloaded, does not match
            ``known_hash``; neither is kept.
        DatasetNotFoundError: absent, and ``download=False`` or the transfer failed.
    """
    if path.exists():
        algorithm, _, expected = known_hash.rpartition(":")
        algorithm = algorithm or "sha256"  # pooch's default for a bare hash
        actual = pooch.file_hash(str(path), alg=algorithm)
        if actual != expected.lower():
            path.unlink()
            raise ValueError(f"{path} is corrupt ({algorithm} {actual}, expected {expected}) "
                             f"and was deleted; download it again from {url}")
        return path
    if not download:
        raise not_found("download=False")
    try:
        return download_file(url, known_hash, path)
    except NETWORK_ERRORS as err:
        raise not_found(f"the download failed: {err!r}") from err
    except ValueError as err:  # pooch's checksum mismatch; it has deleted the partial file
        raise ValueError(f"the file downloaded from {url} does not match its checksum "
                         f"{known_hash} and was not kept ({err}). Try again, or download it "
                         f"by hand and put it at {path}") from err


def save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray], *,
                    compress: bool = True) -> None:
    """``np.savez_compressed`` (or ``np.savez``) to a temporary file, then ``os.replace``.

    The temporary file sits next to ``path`` (same file system, so the replace is atomic)
    and is removed if anything fails before the replace.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            (np.savez_compressed if compress else np.savez)(file, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # only when something failed before os.replace
            os.unlink(tmp)
