"""``make assignments``: the exercise pattern, the student build, and the proof on every chapter.

The proof (marked slow) is the one the issue asks CI for, in the smoke profile: for each
chapter, ``otter assign`` runs every exercise's check on the instructor notebook and fails
unless all pass; the student notebook, solutions removed, runs from top to bottom and each
check reports "not done" with its message instead of raising.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import nbformat
import pytest

from companion.exercises import assign
from tests.conftest import REPO

CHAPTERS = assign.course_chapters(REPO / "book")


def notebook(*cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for kind, source, tags in cells:
        cell = (nbformat.v4.new_markdown_cell(source) if kind == "md"
                else nbformat.v4.new_code_cell(source))
        cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    return nb


EXERCISE = [
    ("md", "**Exercise 0.1.** Write `double`.", []),
    ("code", "def double(x):\n    raise NotImplementedError('return 2 x')", ["exercise"]),
    ("code", "def double(x):\n    return 2 * x", ["solution", "hide-input"]),
    ("code", "check(double)", ["check"]),
]


def test_find_exercises_reads_the_pattern() -> None:
    nb = notebook(("code", "import torch", []), *EXERCISE, ("md", "after", []))
    (e,) = assign.find_exercises(nb)
    assert (e.number, e.prompt, e.stub, e.solution, e.check) == (1, 1, 2, 3, 4)


@pytest.mark.parametrize("broken", [
    [EXERCISE[0], EXERCISE[1], EXERCISE[3]],              # no solution
    [EXERCISE[0], EXERCISE[1], EXERCISE[2]],              # no check
    [EXERCISE[0], EXERCISE[2], EXERCISE[3]],              # no stub: stray solution and check
    [EXERCISE[1], EXERCISE[2], EXERCISE[3]],              # no prompt
], ids=["no-solution", "no-check", "no-stub", "no-prompt"])
def test_find_exercises_rejects_a_broken_pattern(broken) -> None:
    with pytest.raises(ValueError, match="exercise|tagged"):
        assign.find_exercises(notebook(*broken), "broken.md")


def test_student_notebook_drops_only_solutions() -> None:
    nb = notebook(*EXERCISE)
    student = assign.student_notebook(nb)
    assert [c.source for c in student.cells] == [nb.cells[i].source for i in (0, 1, 3)]
    assert len(nb.cells) == 4  # the source is left alone


def test_otter_master_makes_one_hidden_test_per_exercise() -> None:
    master = assign.otter_master(notebook(("code", "x = 1", []), *EXERCISE), "demo")
    raws = [c.source.splitlines()[0] for c in master.cells if c.cell_type == "raw"]
    assert raws == ["# ASSIGNMENT CONFIG", "# BEGIN QUESTION", "# BEGIN SOLUTION",
                    "# END SOLUTION", "# BEGIN TESTS", "# END TESTS", "# END QUESTION"]
    code = [c.source for c in master.cells if c.cell_type == "code"]
    solution = next(s for s in code if "BEGIN PROMPT" in s)
    assert solution.index("raise NotImplementedError") < solution.index("return 2 * x")
    assert "# HIDDEN\n(check(double)).assert_passed()" in code
    assert code[-1] == "check(double)"  # the student's visible check stays
    prompt = master.cells[master.cells.index(next(c for c in master.cells
                                                  if c.source.startswith("# BEGIN QUESTION"))) + 1]
    assert prompt.cell_type == "markdown" and "Exercise 0.1" in prompt.source


def test_every_chapter_has_exercises_in_the_pattern() -> None:
    every = sorted((REPO / "book").glob("ch*.md"))
    assert {md.stem for md in every} >= assign.WITHOUT_EXERCISES  # no stale exemption
    assert len(CHAPTERS) == len(every) - len(assign.WITHOUT_EXERCISES) >= 8
    for md in CHAPTERS:
        exercises = assign.find_exercises(assign.read_chapter(md), md.name)
        assert len(exercises) >= 3, f"{md.name} has {len(exercises)} exercises; want 3 or more"


@pytest.mark.slow
@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_assignments_instructor_passes_and_student_is_not_done(md, tmp_path) -> None:
    paths = assign.build(md, tmp_path)  # raises unless otter passes every instructor check
    with zipfile.ZipFile(paths["autograder"]) as z:
        tests = [n for n in z.namelist() if n.startswith("tests/")]
    exercises = assign.find_exercises(assign.read_chapter(md), md.name)
    assert len(tests) == len(exercises), tests
    student = nbformat.read(paths["student"], as_version=4)
    assert not any("solution" in assign.tags(c) for c in student.cells)
    assert student.metadata["otter"]["assignment_name"] == md.stem
    reports = assign.check_student(paths["student"])
    assert len(reports) == len(exercises)
    for report in reports:
        assert "not done" in report and "Traceback" not in report, report


def test_assign_command_line_rejects_a_chapter_without_exercises(tmp_path) -> None:
    md = tmp_path / "ch99_empty.md"
    md.write_text("---\njupytext:\n  text_representation:\n    format_name: myst\n---\n\n"
                  "# Empty\n\n```{code-cell} ipython3\nx = 1\n```\n")
    done = subprocess.run([sys.executable, "-m", "companion.exercises.assign", "--out",
                           str(tmp_path / "out"), str(md)], capture_output=True, text=True)
    assert done.returncode == 2 and "has no exercises" in done.stderr, done.stderr[-500:]
    assert "Traceback" not in done.stderr
