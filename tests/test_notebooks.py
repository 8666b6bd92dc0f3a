"""The chapters' notebook twins: present, listed in the table of contents, and in sync.

The chapters themselves run in ``tests/test_book.py`` (the smoke book build) and
``tests/test_assignments.py`` (instructor and student notebooks); both read the ``.md``
sources, so this file checks that what Colab runs, the ``.ipynb`` twin, is what the
``.md`` says.
"""

from __future__ import annotations

import jupytext
import nbformat
import pytest
import yaml

from tests.conftest import REPO

CHAPTERS = sorted((REPO / "book").glob("ch*.md"))


def toc_files() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_every_chapter_is_in_the_toc() -> None:
    listed = set(toc_files())
    assert CHAPTERS, "no chapters found"
    for md in CHAPTERS:
        assert f"book/{md.stem}" in listed, f"{md.name} is missing from _toc.yml"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_twin_is_in_sync(md) -> None:
    twin = md.with_suffix(".ipynb")
    assert twin.exists(), f"{twin.name} is missing: run `make notebooks`"
    source = jupytext.read(md)
    notebook = nbformat.read(twin, as_version=4)
    got = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in notebook.cells]
    want = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in source.cells]
    assert got == want, f"{twin.name} is out of date with {md.name}: run `make notebooks`"
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{twin.name} has outputs: the twin must be output-free"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_starts_with_the_colab_install_cell(md) -> None:
    first_code = next(c for c in jupytext.read(md).cells if c.cell_type == "code")
    assert "google.colab" in first_code.source and "pip" in first_code.source
