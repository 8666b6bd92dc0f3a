"""How long each chapter takes to run, per profile: the instructor guide's table.

Executes every chapter notebook (``book/ch*.ipynb``) top to bottom in a fresh kernel with
``COMPANION_PROFILE`` set, one at a time, and records the wall-clock seconds, so a course
can plan its lab sessions. Run it alone: other work on the same cores inflates the times.

Usage::

    python bench/chapter_times.py --profile cpu      # ~20 minutes on 2 cores
    python bench/chapter_times.py --profile smoke    # ~3 minutes
    python bench/chapter_times.py --profile gpu      # on a GPU: measures what
                                                     # bench/profile_costs.py estimates

Writes ``bench/results/chapter_times.json`` (one entry per profile, merged with the
profiles already there), with the machine, commit and date of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient

from companion.profiles import PROFILE_NAMES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "chapter_times.json"


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), " \
           f"{device}, torch {torch.__version__}"


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def run_chapter(path: Path, profile: str) -> float:
    os.environ["COMPANION_PROFILE"] = profile
    os.environ.setdefault("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="cpu")
    parser.add_argument("chapters", nargs="*", type=Path)
    args = parser.parse_args()
    chapters = args.chapters or sorted((REPO / "book").glob("ch*.ipynb"))
    seconds = {}
    for path in chapters:
        seconds[path.stem] = round(run_chapter(path, args.profile), 1)
        print(f"{path.stem}: {seconds[path.stem]:.0f} s ({args.profile})", flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.profile] = {
        "command": f"python bench/chapter_times.py --profile {args.profile}",
        "when": time.strftime("%Y-%m-%d %H:%M"), "commit": commit(), "machine": machine(),
        "seconds": {**results.get(args.profile, {}).get("seconds", {}), **seconds},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
