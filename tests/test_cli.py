"""The command line: `python -m companion data info|episode`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from companion.__main__ import main


def test_data_info_digits_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "digits", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["split"] for r in rows] == ["train", "val", "test", "all"]
    assert rows[-1]["classes"] == 10 and rows[-1]["images"] == 1797


def test_data_info_glyphs_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "glyphs", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "test" in out and "1x28x28" in out and "generated" in out


def test_data_episode_writes_a_png(tmp_path) -> None:
    out = tmp_path / "episode.png"
    # A subprocess, as a user runs it: `python -m companion ...`.
    done = subprocess.run(
        [sys.executable, "-m", "companion", "data", "episode", "digits", "--ways", "5",
         "--shots", "1", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "5-way 1-shot" in done.stdout
    with Image.open(out) as image:
        assert image.size[0] > 100 and image.size[1] > 100


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "episode", "digits", "--ways", "6"], "only 5 classes"),
        (["data", "episode", "digits", "--ways", "25"], "at most 20 ways"),
        (["data", "info", "digits", "--split", "dev"], "unknown split 'dev'"),
    ],
)
def test_bad_requests_exit_2_with_a_message(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, *(["--out", str(tmp_path / "e.png")] if "episode" in argv else [])]) == 2
    assert message in capsys.readouterr().err


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "episode", "digits", "--shots", "0"])
    assert exit_info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_omniglot_without_data_names_the_files(tmp_path, monkeypatch, capsys) -> None:
    import companion.data.omniglot as omniglot

    def offline(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(omniglot, "_download", offline)
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    assert main(["data", "info", "omniglot"]) == 2
    err = capsys.readouterr().err
    assert "images_background.zip" in err and "images_evaluation.zip" in err
    assert str(tmp_path / "omniglot") in err


def test_omniglot_info_from_the_cache(omniglot_root, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COMPANION_DATA", str(omniglot_root))
    assert main(["data", "info", "omniglot", "--json"]) == 0
    rows = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["background"]["classes"] == 964 and rows["evaluation"]["classes"] == 659
    assert rows["background"]["images_per_class"] == 20 == rows["evaluation"]["images_per_class"]
