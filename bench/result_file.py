"""The one format of the benchmark tables' result files, ``bench/results/*.json``.

Every table script (``omniglot_table.py``, ``ssl_table.py``, ``unsupervised_table.py``,
``maxl_table.py``) writes one JSON file that says how to rerun it and what ran it, so the
book's tables (chapters 6 to 9) can be traced back to a run and reproduced by hand:

top level
    ``script``     the script that wrote it, e.g. ``"bench/omniglot_table.py"``
    ``command``    how to rerun the whole table, e.g. ``"python bench/omniglot_table.py --save"``
    ``commit``     the repository's commit of the run (``git rev-parse --short HEAD``, with
                   ``+changes`` when the working tree differed), ``"unknown"`` if not recorded
    ``machine``    CPU cores, GPU (or ``no GPU``), torch version
    ``when``       ``"YYYY-MM-DD HH:MM"``, when the file was written
    ``profile``    the compute profile of the recipes: ``"cpu"`` (5 minutes a method on 2
                   cores), ``"gpu"`` (the cpu recipes trained longer, on one GPU) or
                   ``"full"`` (the papers' protocols, on a GPU)
    ``settings``   the test settings every row reports, e.g. ``["5w1s", "5w5s"]``
    ``rows``       ``{name: row}`` in the table's order
    optional: ``episodes`` (test episodes per cell), ``seeds``, ``test_images``, ``note``,
    ``published_settings`` (the settings the ``published`` values are for, in order, when
    not all of ``settings``: the self-supervised table's papers report few-shot numbers only)

each row
    ``command``    the exact ``python -m companion train ...`` line that trained it (``null``
                   for a row without training, such as raw pixels); in a table over seeds,
                   ``{seed}`` stands for each of the top level's ``seeds``
    ``eval_commands``  optional, ``{setting: "python -m companion eval ..."}``
    a setting      ``[accuracy, ci95]``, both in [0, 1]: the mean accuracy over the test
                   episodes and the half-width of its 95% confidence interval; in a table over
                   seeds the row has ``accuracy`` and ``ci95`` lists instead, one per seed
    ``train_seconds``  the training loop's seconds (one per seed in a table over seeds)
    ``published``  the paper's numbers in %, one per setting (of ``published_settings`` if
                   given) in order, ``"98.8 / 99.7"``, ``-`` where one is missing, or ``null``;
                   ``published_source`` says where they come from whenever it is set

``tests/test_bench_results.py`` checks every file against this, and that every row's
command parses with the package's command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
REQUIRED = ("script", "command", "commit", "machine", "when", "profile", "settings", "rows")
PROFILES = ("cpu", "gpu", "full")


def commit() -> str:
    """The short commit of the checkout, ``+changes`` if its tracked files differ from it."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine(extra: str = "") -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    text = f"{os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"
    return f"{text}, {extra}" if extra else text


def header(script: str, command: str, profile: str, settings: list[str],
           **extra: Any) -> dict[str, Any]:
    """The top level of a result file, ``rows`` still empty."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}; got {profile!r}")
    return {"script": script, "command": command, "commit": commit(), "machine": machine(),
            "when": time.strftime("%Y-%m-%d %H:%M"), "profile": profile,
            "settings": list(settings), **extra, "rows": {}}


def default_path(name: str, profile: str) -> Path:
    """``bench/results/NAME.json`` for the cpu profile, ``NAME_gpu.json`` and
    ``NAME_full.json`` for the others."""
    return RESULTS / (f"{name}.json" if profile == "cpu" else f"{name}_{profile}.json")


def save_path(save: bool, quick: bool, results: Path | None, default: Path) -> Path | None:
    """Where a table script writes its file: nowhere without ``--save``; never a quick
    (plumbing) run over the kept results, only to a ``--results`` path given explicitly."""
    if not save:
        return None
    if quick and results is None:
        print(f"a --quick run does not overwrite {default}; pass --results to save it")
        return None
    return results or default


def write(path: Path, result: dict[str, Any]) -> None:
    """Write atomically (a stopped run leaves the previous file whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(path)
    print(f"saved {path}")


def measured(metrics: dict[str, Any]) -> list[float]:
    """``[accuracy, ci95]`` of an ``eval`` run's ``metrics.json``."""
    return [metrics["accuracy"], metrics["ci95"]]


def row_commands(row: dict[str, Any], seeds: list[int] | None = None) -> list[str]:
    """Every ``python -m companion`` line of a row: its training (one per seed) and tests."""
    commands = []
    if row.get("command"):
        if "{seed}" in row["command"]:
            commands += [row["command"].replace("{seed}", str(s)) for s in seeds or []]
        else:
            commands.append(row["command"])
    return commands + list(row.get("eval_commands", {}).values())


def published(result: dict[str, Any], name: str) -> dict[str, float | None]:
    """The published numbers of row ``name`` in %, by setting (``None`` where not published)."""
    settings = result.get("published_settings", result["settings"])
    text = result["rows"][name].get("published")
    if not text:
        return {}
    parts = [p.strip() for p in text.split("/")]
    values = {s: (None if p in ("-", "—", "") else float(p))
              for s, p in zip(settings, parts, strict=False)}
    if len(parts) > len(settings):
        raise ValueError(f"{len(parts)} published values for settings {settings}: {text!r}")
    return values
