"""The book as a reader sees it: the smoke build, its HTML, and a browser without network.

The module builds the whole book once, executing every chapter in the smoke profile, with
Sphinx warnings as errors (a broken reference, a missing citation or figure fails it), into
``_build/smoke`` with its own execution cache (the cache keys on code only, so smoke
outputs must not leak into ``make book``). Then:

- the HTML has no error output and no raw LaTeX delimiters left for MathJax to miss;
- every launch button (Colab, Binder) points at a notebook that exists in the repository;
- headless Chromium, driven by Playwright, opens each chapter with every network request
  refused (a course's offline copy) and checks that the equations are typeset by the
  MathJax shipped in the build, that every image loads, and that each chapter with a
  widget shows static figures; it saves a screenshot of each chapter under
  ``_build/smoke/screenshots``.

Chromium comes from the system (``apt-get install chromium`` on Debian/Ubuntu); without
it the browser tests are skipped with that instruction, except under CI (``CI`` set),
where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.conftest import REPO

OUT = REPO / "_build" / "smoke"
HTML = OUT / "_build" / "html"
CHAPTERS = sorted(p.stem for p in (REPO / "book").glob("ch*.md"))
INSTALL_HINT = ("the browser test needs Chromium: `apt-get install chromium` (Debian/Ubuntu) or "
                "`python -m playwright install chromium`; `.ci/run` installs it")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def book() -> Path:
    """Build the book in the smoke profile with warnings as errors; the HTML folder."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["cache"] = str(OUT / ".jupyter_cache")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    # The kernels draw inline: the test session's MPLBACKEND=Agg would hide every figure.
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["COMPANION_PROFILE"] = "smoke"
    done = subprocess.run(
        [str(jupyter_book), "build", str(REPO), "--builder", "html", "--path-output", str(OUT),
         "--config", str(OUT / "_config.yml"), "-W", "--keep-going"],
        capture_output=True, text=True, env=env, cwd=REPO)
    log = done.stdout + done.stderr
    (OUT / "build.log").write_text(log)
    # Sphinx's own warnings and errors ("file.md:12: WARNING: ..."), not the kernels' chatter.
    warnings = [line for line in log.splitlines()
                if re.search(r"(WARNING|ERROR|CRITICAL):", line) and "[IPKernelApp]" not in line]
    assert done.returncode == 0 and not warnings, (
        "the smoke book build failed or warned (full log in _build/smoke/build.log):\n"
        + "\n".join(warnings[:30] or log.splitlines()[-40:]))
    return HTML


def chapter_html(book: Path, stem: str) -> str:
    return (book / "book" / f"{stem}.html").read_text()


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_page_has_no_error_output(book: Path, stem: str) -> None:
    html = chapter_html(book, stem)
    assert "Traceback (most recent call last)" not in html, f"{stem} shows a traceback"
    assert 'class="output traceback' not in html and 'class="output error' not in html, stem
    assert 'class="output stderr' not in html, f"{stem} shows stderr output"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_launch_buttons_point_at_notebooks_in_the_repository(book: Path, stem: str) -> None:
    links = re.findall(r'href="(https://(?:colab\.research\.google\.com|mybinder\.org)[^"]+)"',
                       chapter_html(book, stem))
    assert links, f"{stem} has no launch button"
    for link in links:
        url = urlparse(link.replace("&amp;", "&"))
        path = (url.path.split("/blob/main/", 1)[-1] if "colab" in url.netloc
                else url.query.split("urlpath=tree/", 1)[-1])
        assert (REPO / path).is_file(), f"{stem}: {link} points at {path}, not in the repo"


@pytest.fixture(scope="module")
def browser(book: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = pytest.importorskip("playwright.sync_api", reason=INSTALL_HINT)
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_in_an_offline_browser(book: Path, browser, stem: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused = []

    def offline(route) -> None:  # no network: only the built files may load
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    page.goto((book / "book" / f"{stem}.html").as_uri(), wait_until="load")
    page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                           timeout=30_000)
    page.evaluate("MathJax.startup.promise")
    text = page.inner_text("main")
    typeset = page.locator("mjx-container").count()
    assert typeset > 0, f"{stem}: no equation typeset by MathJax"
    for raw in ("\\[", "\\(", "\\begin{"):
        assert raw not in text, f"{stem}: raw LaTeX {raw!r} left in the page text"
    images = page.evaluate(
        "Array.from(document.querySelectorAll('main img')).map(i => [i.src, i.naturalWidth])")
    broken = [src for src, width in images if width == 0]
    assert not broken, f"{stem}: images that did not load: {broken}"
    figures = page.locator("main .cell_output img").count()  # drawn by the chapter's cells
    assert figures, f"{stem}: no figure"
    if "jupyter-widgets" in chapter_html(book, stem) or "widget-view" in chapter_html(book, stem):
        assert figures >= 2, f"{stem}: a widget without its static figures"
    shots = OUT / "screenshots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / f"{stem}.png"))
    page.close()
