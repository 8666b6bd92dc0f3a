"""Fixtures shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """``$COMPANION_DATA`` if set, else ``<repo>/../shared/data`` (the developers' cache)."""
    env = os.environ.get("COMPANION_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def omniglot_root() -> Path:
    """The data root holding the Omniglot cache; skips the test when it is absent."""
    root = shared_data_root()
    if not (root / "omniglot" / "images_evaluation.npz").exists():
        pytest.skip(
            f"Omniglot cache not found under {root}/omniglot; set COMPANION_DATA to a folder "
            "holding omniglot/images_background.npz and images_evaluation.npz to run this test"
        )
    return root


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread and restore the setting afterwards.

    The training tests use tiny models; on a shared 2-core machine two threads spin-wait on
    each other and ran 4-10x slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when CUDA is absent (pyproject.toml declares the marker)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu); none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
