"""Meta-train every meta-learner on Omniglot for at most 5 minutes each, then test it.

The protocol of issue 3 (and of the papers): meta-train on Lake et al.'s background set,
test on 600 episodes of the evaluation set (15 queries per class, the same episodes for
every method), 28x28 images, Conv-4 with 64 filters, 2 CPU cores. Each method runs through
the package's two commands, ``python -m companion train`` then ``python -m companion eval``,
so every number in the table can be reproduced by hand. The recipe is each method's ``cpu``
preset in :data:`companion.methods.REGISTRY`, so a reader who types
``python -m companion train METHOD --dataset omniglot --ways 5 --shots 1 --profile cpu``
trains exactly what this table tests.

Recipes (the registry gives the reasons next to each). The papers train for hours (MAML:
60,000 meta-steps of 32 tasks); a 5-minute budget on 2 cores buys about 1% of that, so each
recipe spends it where it pays: the rotated characters as new classes; ProtoNet and
Matching Networks 20-way with 5 queries, one episode per step and a cosine decay (Matching
Networks with their cosine scaled by 10); MAML and its variants with 1 query per class, 8
tasks per step and 10 inner steps at test; Reptile with Nichol et al.'s 10 shots in the
inner loop and 5 tasks per step.

One training run per method serves both test settings (5-way 1-shot and 5-way 5-shot): the
gradient-based methods have a 5-way head, and adapting it on 5 shots works unchanged.

Usage::

    COMPANION_DATA=../shared/data python bench/omniglot_table.py --save   # ~45 min
    python bench/omniglot_table.py --methods protonet maml --out runs/table
    python bench/omniglot_table.py --quick   # 2 methods, a few steps: checks the plumbing
    python bench/omniglot_table.py --profile full --save   # the papers' protocols, on a GPU

It prints a Markdown table (accuracy +- 95% CI in %, training seconds) and writes it, with
every run's ``metrics.json``, under ``--out``; ``--save`` also writes the result file
``bench/results/omniglot.json`` (``omniglot_full.json`` for the full profile) in the format
of ``bench/result_file.py``, with every row's commands and the published numbers beside it,
which chapter 9 reads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import result_file

from companion import methods

COMMON = ["--dataset", "omniglot", "--ways", "5", "--shots", "1", "--no-eval", "--quiet"]
METHODS = methods.names("episodes")

TESTS = (1, 5)  # shots of the 5-way test episodes

PUBLISHED: dict[str, tuple[str, str]] = {
    # method: (5w1s / 5w5s in % as published on Omniglot, source)
    "protonet": ("98.8 / 99.7", "Snell et al. 2017, Table 1 (60-way training)"),
    "matchingnet": ("98.1 / 98.9", "Vinyals et al. 2016, Table 1 (no fine-tuning)"),
    "maml": ("98.7 / 99.9", "Finn et al. 2017, Table 1"),
    "fomaml": ("98.3 / 99.2", "Finn et al. 2017, Table 1 (first-order approximation)"),
    "reptile": ("97.68 / 99.48", "Nichol et al. 2018, Table 1 (with transduction)"),
}
"""Published 5-way Omniglot accuracies. ANIL (Raghu et al. 2020) reports Omniglot 20-way only
and Proto-MAML (Triantafillou et al. 2020) Meta-Dataset's protocol, so they have none. The
package's meta-learners normalise with the test episode's batch statistics, i.e.
transductively, so Reptile's row is the paper's transductive one (without: 95.39 / 98.90)."""


def run(argv: list[str]) -> None:
    print("$ python -m companion " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "companion", *argv], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", default="runs/omniglot-table", help="output folder")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes")
    parser.add_argument("--quick", action="store_true",
                        help="10 steps, 20 episodes, protonet and maml: a plumbing check")
    parser.add_argument("--profile", choices=result_file.PROFILES, default="cpu",
                        help="the recipes' profile (full: the papers' protocols, for a GPU)")
    parser.add_argument("--save", action="store_true",
                        help="write the result file (not for --quick unless --results is given)")
    parser.add_argument("--results", type=Path, default=None,
                        help="default: bench/results/omniglot.json (omniglot_full.json)")
    args = parser.parse_args()
    saved = result_file.save_path(args.save, args.quick, args.results,
                                  result_file.default_path("omniglot", args.profile))
    chosen, episodes = args.methods, args.episodes
    if args.quick:
        chosen, episodes = [m for m in chosen if m in ("protonet", "maml")], 20
    out = Path(args.out)
    flags = ["--quick"] if args.quick else []
    flags += [f"--methods {' '.join(args.methods)}"] if args.methods != list(METHODS) else []
    flags += [f"--profile {args.profile}"] if args.profile != "cpu" else []
    flags += [f"--episodes {args.episodes}"] if args.episodes != 600 else []
    flags += [f"--results {args.results}"] if args.results else []
    result = result_file.header(
        "bench/omniglot_table.py", " ".join(["python bench/omniglot_table.py", *flags, "--save"]),
        args.profile, [f"5w{shots}s" for shots in TESTS], episodes=episodes)
    rows = result["rows"]
    for method in chosen:
        recipe = ["--steps", "10"] if args.quick else []
        run_dir = out / method
        train = ["train", method, *COMMON, "--profile", args.profile, *recipe,
                 "--out", str(run_dir), "--restart"]
        run(train)
        row = {"command": shlex.join(["python", "-m", "companion", *train]),
               "eval_commands": {}}
        for shots in TESTS:
            test_dir = run_dir / f"test-5w{shots}s"
            test = ["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--ways", "5",
                    "--shots", str(shots), "--queries", "15", "--episodes", str(episodes),
                    "--quiet", "--out", str(test_dir)]
            run(test)
            metrics = json.loads((test_dir / "metrics.json").read_text())
            row["eval_commands"][f"5w{shots}s"] = shlex.join(["python", "-m", "companion", *test])
            row[f"5w{shots}s"] = result_file.measured(metrics)
            seconds = metrics["train_seconds"]
        published, source = PUBLISHED.get(method, (None, None))
        rows[method] = {**row, "train_seconds": seconds, "published": published,
                        "published_source": source}
        if saved:  # after every method, so a stopped run keeps the rows it finished
            result_file.write(saved, result)
    lines = ["| method | 5-way 1-shot | 5-way 5-shot | training (s) |", "|---|---|---|---|"]
    lines += [f"| {method} | " + " | ".join(f"{100 * r[s][0]:.1f} +- {100 * r[s][1]:.1f}"
                                            for s in result["settings"])
              + f" | {r['train_seconds']:.0f} |" for method, r in rows.items()]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
