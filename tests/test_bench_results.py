"""The benchmark tables' result files, ``bench/results/*.json``: complete and reproducible.

Each file is in the format of ``bench/result_file.py`` (what ran, where, when, and how to
rerun it), and every ``python -m companion`` line in it parses with the package's own
command line, with a registered method and config fields that exist, so a reader can
reproduce any number of the book's benchmark tables by hand. Nothing is trained here.
``chapter_times.json`` (the instructor guide's chapter timings, one entry per profile),
``profile_costs.json`` (the estimated gpu-profile times), ``amp_numerics.json`` and
``gpu_paths.json`` (gradient errors and speed ratios of ``fit``'s fast paths) have formats of
their own, each described by the script that writes it, and are left out.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from companion import methods
from companion.__main__ import build_parser
from tests.conftest import REPO

RESULTS = REPO / "bench" / "results"
FILES = sorted(p for p in RESULTS.glob("*.json")
               if p.name not in ("chapter_times.json", "profile_costs.json",
                                 "amp_numerics.json", "gpu_paths.json"))
REQUIRED = ("script", "command", "commit", "machine", "when", "profile", "settings", "rows")


def load_result_file_module():
    """``bench/result_file.py`` (bench/ is not a package: the scripts run as files)."""
    spec = importlib.util.spec_from_file_location("result_file",
                                                  REPO / "bench" / "result_file.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


result_file = load_result_file_module()


def check_command(command: str) -> None:
    """Parse one ``python -m companion ...`` line as the shell and the CLI would; raise
    ``ValueError`` with the reason if it does not parse."""
    argv = shlex.split(command)
    if argv[:3] != ["python", "-m", "companion"]:
        raise ValueError(f"not a `python -m companion` line: {command!r}")
    try:
        args = build_parser().parse_args(argv[3:])
    except SystemExit as exit_:  # argparse reports a bad argument by exiting
        raise ValueError(f"the command line rejects {command!r}") from exit_
    if args.command == "train":
        if args.method not in methods.REGISTRY:
            raise ValueError(f"unknown method {args.method!r} in {command!r}")
        methods.check_config_fields(args.method, dict(args.set))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_result_files_to_check() -> None:
    names = {p.name for p in FILES}
    assert {"unsupervised.json", "maxl.json"} <= names, names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_result_file_says_what_ran_and_how_to_rerun_it(path: Path) -> None:
    result = load(path)
    missing = [k for k in REQUIRED if k not in result]
    assert not missing, f"{path.name} lacks {missing}"
    assert (REPO / result["script"]).is_file(), result["script"]
    assert result["command"].startswith(f"python {result['script']}"), result["command"]
    assert "--save" in result["command"].split(), result["command"]  # it rewrites this file
    suffix = path.stem.rsplit("_", 1)[-1]
    assert result["profile"] == (suffix if suffix in ("gpu", "full") else "cpu"), (
        f"{path.name} holds a {result['profile']} run: cpu runs go to NAME.json, gpu and full "
        "ones to NAME_gpu.json and NAME_full.json")
    for key in ("commit", "machine", "when"):
        assert isinstance(result[key], str) and result[key], (key, result[key])
    assert result["settings"] and result["rows"], path.name
    if "{seed}" in json.dumps(result["rows"]):
        assert result.get("seeds"), f"{path.name}: commands over seeds, but no seeds"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_command_parses_with_the_command_line(path: Path) -> None:
    result = load(path)
    parsed = 0
    for name, row in result["rows"].items():
        assert "command" in row, f"{path.name}: row {name!r} has no command"
        if row["command"] is None:  # a baseline without training, e.g. raw pixels
            assert row["train_seconds"] == 0, (name, row["train_seconds"])
        commands = result_file.row_commands(row, result.get("seeds"))
        for command in commands:
            check_command(command)
        parsed += len(commands)
    assert parsed, f"{path.name} has no command to reproduce it"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_accuracies_and_confidence_intervals_are_fractions(path: Path) -> None:
    result = load(path)
    seeds = result.get("seeds")
    for name, row in result["rows"].items():
        if seeds and isinstance(row.get("accuracy"), list):  # one value per seed
            pairs = list(zip(row["accuracy"], row["ci95"], strict=True))
            assert len(pairs) == len(seeds), (name, len(pairs), seeds)
            seconds = row["train_seconds"]
            assert len(seconds) == len(seeds) and min(seconds) > 0, (name, seconds)
        else:
            missing = [s for s in result["settings"] if s not in row]
            assert not missing, f"{path.name}: row {name!r} lacks {missing}"
            pairs = [tuple(row[s]) for s in result["settings"]]
            assert row["train_seconds"] >= 0, (name, row["train_seconds"])
        for accuracy, ci95 in pairs:  # fractions, not percentages
            assert 0 <= accuracy <= 1 and 0 <= ci95 <= 1, (path.name, name, accuracy, ci95)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_published_numbers_have_a_source(path: Path) -> None:
    result = load(path)
    for name, row in result["rows"].items():
        if row.get("published") is None:
            continue
        assert row.get("published_source"), f"{path.name}: {name!r} published without source"
        values = result_file.published(result, name)
        numbers = [v for v in values.values() if v is not None]
        assert numbers and all(0 < v <= 100 for v in numbers), (name, row["published"])


def test_a_broken_command_fails_the_check() -> None:
    good = "python -m companion train protonet --dataset omniglot --profile cpu --quiet"
    check_command(good)
    for bad in (good.replace("omniglot", "omniglott"),  # no such dataset
                good + " --shots many",  # not a number
                good.replace("protonet", "protonett"),  # no such method
                good + " --set no_such_field=1",  # not a field of ProtoNet's config
                "python bench/omniglot_table.py --save"):  # not the package's command line
        with pytest.raises(ValueError):
            check_command(bad)


def test_seed_placeholders_expand_to_one_command_per_seed() -> None:
    row = {"command": "python -m companion train maxl --seed {seed}",
           "eval_commands": {"5w1s": "python -m companion eval --checkpoint c.pt"}}
    assert result_file.row_commands(row, [0, 2]) == [
        "python -m companion train maxl --seed 0", "python -m companion train maxl --seed 2",
        "python -m companion eval --checkpoint c.pt"]


def test_published_values_follow_the_published_settings() -> None:
    result = {"settings": ["linear", "knn", "5w1s", "5w5s"],
              "published_settings": ["5w1s", "5w5s"],
              "rows": {"a": {"published": "96.4 / -"}, "b": {"published": None}}}
    assert result_file.published(result, "a") == {"5w1s": 96.4, "5w5s": None}
    assert result_file.published(result, "b") == {}
    result["rows"]["c"] = {"published": "1 / 2 / 3"}
    with pytest.raises(ValueError):
        result_file.published(result, "c")


def test_a_quick_run_never_overwrites_the_kept_results(tmp_path: Path, capsys) -> None:
    kept = tmp_path / "omniglot.json"
    assert result_file.save_path(False, False, None, kept) is None
    assert result_file.save_path(True, False, None, kept) == kept
    assert result_file.save_path(True, True, None, kept) is None
    assert "does not overwrite" in capsys.readouterr().out
    assert result_file.save_path(True, True, tmp_path / "x.json", kept) == tmp_path / "x.json"
