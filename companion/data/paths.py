"""Where datasets live on disk, and the error raised when one is missing.

The data root is, in order: the ``root`` argument, the ``COMPANION_DATA`` environment
variable, or the user's cache folder (``~/.cache/companion`` on Linux). Each dataset keeps
its files in a sub-folder named after it (``<root>/omniglot/...``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not on disk and could not be downloaded.

    The message names every file that is missing and the folder to put it in.
    """


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds all datasets (see the module docstring for the order)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("COMPANION_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("companion"))


def dataset_dir(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """``<data root>/<name>``; not created here (a reader should not need write access)."""
    return data_root(root) / name
