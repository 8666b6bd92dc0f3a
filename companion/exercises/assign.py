"""``make assignments``: student and instructor notebooks and an autograder from the chapters.

One source, three products, for every chapter ``book/chNN_*.md``:

- ``instructor/chNN_*.ipynb``: the chapter as the online book has it, solutions in;
- ``student/chNN_*.ipynb``: the same without the cells tagged ``solution``; stubs and
  checks stay, so each check says "not done" until the student fills the stub in;
- ``autograder/chNN_*-autograder.zip``: an otter-grader autograder. Each exercise is a
  question whose one hidden test is the exercise's own check with
  :meth:`~companion.exercises.Feedback.assert_passed`. Grade a submission with
  ``otter run -a chNN_*-autograder.zip submission.ipynb`` (or upload the zip to
  Gradescope).

Why otter-grader and not nbgrader: otter's autograder is one zip that runs a submission
with one command (locally, in Docker or on Gradescope), its tests are plain Python, and it
needs no course database or JupyterHub; nbgrader fits a course that runs its own
JupyterHub with the formgrader. The checks themselves are ours (``companion.exercises``),
so a student sees the same message from the check cell and from the autograder.

``otter assign`` runs every test against the instructor notebook and fails if one does not
pass; ``--check`` also executes each student notebook and fails unless every check cell
reports "not done" (with its message) and no cell raises. That is the proof CI runs in the
smoke profile (``tests/test_assignments.py``).

Usage::

    python -m companion.exercises.assign [--out _build/assignments] [--check] [CHAPTER ...]
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat

EXERCISE, SOLUTION, CHECK = "exercise", "solution", "check"
# What a grading machine (Gradescope, otter's Docker image) installs: the book's package,
# from the same place as the chapters' Colab cell.
REQUIREMENTS = "companion @ git+https://github.com/meta-ssl-book/meta-ssl-book\n"
NOT_DONE = "not done"


@dataclass(frozen=True)
class Exercise:
    """The cell indices of one exercise: prompt (markdown), stub, solution and check."""

    number: int
    prompt: int
    stub: int
    solution: int
    check: int


def tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def find_exercises(nb: nbformat.NotebookNode, name: str = "notebook") -> list[Exercise]:
    """The exercises of a chapter, each a stub, a solution and a check in consecutive cells.

    Raises:
        ValueError: if a stub, solution or check cell stands outside that pattern, or if
            the stub has no markdown prompt above it.
    """
    cells = nb.cells
    found, used = [], set()
    for i, cell in enumerate(cells):
        if EXERCISE not in tags(cell):
            continue
        pattern = [EXERCISE, SOLUTION, CHECK]
        window = cells[i:i + 3]
        if len(window) < 3 or any(want not in tags(c) or c.cell_type != "code"
                                  for want, c in zip(pattern, window, strict=True)):
            raise ValueError(
                f"{name}: the exercise stub in cell {i} must be followed by a code cell tagged "
                f"'solution' and then one tagged 'check'")
        prompt = next((j for j in range(i - 1, -1, -1) if cells[j].cell_type == "markdown"), None)
        if prompt is None:
            raise ValueError(f"{name}: the exercise stub in cell {i} has no markdown prompt above")
        found.append(Exercise(len(found) + 1, prompt, i, i + 1, i + 2))
        used |= {i, i + 1, i + 2}
    for i, cell in enumerate(cells):
        stray = {SOLUTION, CHECK} & set(tags(cell))
        if stray and i not in used:
            raise ValueError(f"{name}: cell {i} is tagged {sorted(stray)} but is not part of an "
                             "exercise (stub, solution, check in that order)")
    return found


def read_chapter(md: Path) -> nbformat.NotebookNode:
    import jupytext

    nb = jupytext.read(md)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def student_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The chapter without its solutions."""
    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if SOLUTION not in tags(c)]
    return out


def _raw(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_raw_cell(text)


def otter_master(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    """The chapter in otter-grader's master-notebook format.

    Each exercise becomes a question: its prompt, a solution cell whose student version is
    the stub (otter's ``BEGIN PROMPT`` / ``BEGIN SOLUTION NO PROMPT`` lines; in the
    instructor's version the stub runs first and the solution replaces it, as in the book),
    and one hidden test, ``<check>.assert_passed()``. Our own check cell stays after the
    question.
    """
    exercises = {e.stub: e for e in find_exercises(nb, name)}
    prompts = {e.prompt for e in exercises.values()}
    config = (f"# ASSIGNMENT CONFIG\nname: {name}\ninit_cell: false\ncheck_all_cell: false\n"
              "export_cell: false\nsave_environment: false\ngenerate: true\n"
              "requirements: requirements.txt\n")
    cells = [_raw(config)]
    pending_prompt = None
    skip = set()
    for i, cell in enumerate(nb.cells):
        if i in skip:
            continue
        if i in prompts:  # held back until we know it opens a question
            if pending_prompt is not None:
                cells.append(pending_prompt)
            pending_prompt = copy.deepcopy(cell)
            continue
        if pending_prompt is not None and i not in exercises:
            cells.append(pending_prompt)
            pending_prompt = None
        if i not in exercises:
            cells.append(copy.deepcopy(cell))
            continue
        e = exercises[i]
        stub, solution, check = (nb.cells[j].source.strip() for j in (e.stub, e.solution, e.check))
        cells += [_raw(f"# BEGIN QUESTION\nname: ex{e.number}\npoints: 1")]
        if pending_prompt is not None:
            cells.append(pending_prompt)
            pending_prompt = None
        cells += [
            _raw("# BEGIN SOLUTION"),
            nbformat.v4.new_code_cell(
                f"# BEGIN PROMPT\n{stub}\n# END PROMPT\n"
                f"# BEGIN SOLUTION NO PROMPT\n{solution}\n# END SOLUTION"),
            _raw("# END SOLUTION"),
            _raw("# BEGIN TESTS"),
            nbformat.v4.new_code_cell(f"# HIDDEN\n({check}).assert_passed()"),
            _raw("# END TESTS"),
            _raw("# END QUESTION"),
            copy.deepcopy(nb.cells[e.check]),
        ]
        skip |= {e.solution, e.check}
    out = copy.deepcopy(nb)
    out.cells = cells
    return out


# A chapter that reports results instead of teaching a method has no lab (chapter 9: the
# benchmark tables); every other chapter has exercises (tests/test_assignments.py).
WITHOUT_EXERCISES = frozenset({"ch09_benchmarks"})


def course_chapters(book: Path = Path("book")) -> list[Path]:
    """The chapter sources with exercises: every ``chNN_*.md`` not in WITHOUT_EXERCISES."""
    return [md for md in sorted(Path(book).glob("ch*.md")) if md.stem not in WITHOUT_EXERCISES]


def build(md: Path, out: Path, *, run_tests: bool = True) -> dict[str, Path]:
    """Write the instructor and student notebooks and the autograder of one chapter."""
    nb = read_chapter(md)
    nb.metadata["otter"] = {"assignment_name": md.stem}  # otter run checks a submission's name
    if not find_exercises(nb, md.name):
        raise ValueError(f"{md.name} has no exercises (cells tagged 'exercise')")
    paths = {kind: out / kind / f"{md.stem}.ipynb" for kind in ("instructor", "student")}
    for kind, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb if kind == "instructor" else student_notebook(nb), path)
    with tempfile.TemporaryDirectory() as tmp:
        master = Path(tmp) / f"{md.stem}.ipynb"
        nbformat.write(otter_master(nb, md.stem), master)
        (Path(tmp) / "requirements.txt").write_text(REQUIREMENTS)
        command = [sys.executable, "-m", "otter", "assign", str(master), str(Path(tmp) / "dist")]
        if not run_tests:
            command.append("--no-run-tests")
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"otter assign failed for {md.name} (an instructor check did not "
                               f"pass?):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        (zipped,) = (Path(tmp) / "dist" / "autograder").glob("*.zip")
        paths["autograder"] = out / "autograder" / f"{md.stem}-autograder.zip"
        paths["autograder"].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(zipped, paths["autograder"])
    return paths


def check_student(path: Path, timeout: int = 900) -> list[str]:
    """Run a student notebook; every check must say "not done" and no cell may raise.

    Returns the check cells' outputs, one string each. Raises ``AssertionError`` with the
    offending cell otherwise.
    """
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    reports = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{path.name} cell {i} raised {errors[0].ename}: {errors[0].evalue}"
        if CHECK in tags(cell):
            text = "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                           for o in cell.outputs)
            assert NOT_DONE in text, (f"{path.name} cell {i}: a check on the stub should "
                                      f"report '{NOT_DONE}'; it printed {text!r}")
            reports.append(text)
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m companion.exercises.assign",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", type=Path,
                        help="chapter sources (default: every book/ch*.md with exercises)")
    parser.add_argument("--out", type=Path, default=Path("_build/assignments"))
    parser.add_argument("--check", action="store_true",
                        help="also run each student notebook and require 'not done' checks")
    args = parser.parse_args(argv)
    chapters = args.chapters or course_chapters()
    os.environ.setdefault("MPLBACKEND", "Agg")
    for md in chapters:
        try:
            paths = build(md, args.out)
            print(f"{md.name}: {', '.join(str(p) for p in paths.values())}")
            if args.check:
                reports = check_student(paths["student"])
                print(f"  student notebook ran; {len(reports)} checks report '{NOT_DONE}'")
        except (ValueError, RuntimeError, AssertionError) as error:
            print(f"make assignments: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
