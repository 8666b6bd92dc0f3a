"""The project's own files agree with each other: pyproject vs environment.yml, README vs CI."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.conftest import REPO

# conda-forge names that differ from PyPI's.
CONDA_NAMES = {"torch": "pytorch"}


def split_requirement(req: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", req)
    assert match, req
    return match.group(1).lower(), match.group(2).replace(" ", "")


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += extra
    expected = {CONDA_NAMES.get(n, n): spec for n, spec in map(split_requirement, wanted)}

    env = yaml.safe_load((REPO / "environment.yml").read_text())
    from_pip = [r for d in env["dependencies"] if isinstance(d, dict) for r in d.get("pip", [])]
    got = dict(
        split_requirement(d) for d in [*env["dependencies"], *from_pip]
        if isinstance(d, str) and not d.startswith(("python", "pip"))
    )
    assert got == expected


def test_no_exact_pins_in_pyproject() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert "==" not in text


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = re.findall(r"^make (\w+)$", readme, flags=re.MULTILINE)
    assert commands[:2] == ["book", "test"]
    assert re.search(r"^make test\b", ci, flags=re.MULTILINE)


def test_package_never_imports_torchvision() -> None:
    pattern = re.compile(r"^\s*(import|from)\s+torchvision", flags=re.MULTILINE)
    for path in (REPO / "companion").rglob("*.py"):
        assert not pattern.search(path.read_text()), path
