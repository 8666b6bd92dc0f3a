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

    COMPANION_DATA=../shared/data python bench/omniglot_table.py          # ~45 min
    python bench/omniglot_table.py --methods protonet maml --out runs/table
    python bench/omniglot_table.py --quick   # 2 methods, a few steps: checks the plumbing

It prints a Markdown table (accuracy +- 95% CI in %, training seconds) and writes it, with
every run's ``metrics.json``, under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from companion import methods

COMMON = ["--dataset", "omniglot", "--ways", "5", "--shots", "1", "--no-eval", "--quiet",
          "--profile", "cpu"]
METHODS = methods.names("episodes")

TESTS = (1, 5)  # shots of the 5-way test episodes


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
    args = parser.parse_args()
    chosen, episodes = args.methods, args.episodes
    if args.quick:
        chosen, episodes = [m for m in chosen if m in ("protonet", "maml")], 20
    out = Path(args.out)
    rows = []
    for method in chosen:
        recipe = ["--steps", "10"] if args.quick else []
        run_dir = out / method
        run(["train", method, *COMMON, *recipe, "--out", str(run_dir), "--restart"])
        row = {"method": method}
        for shots in TESTS:
            test_dir = run_dir / f"test-5w{shots}s"
            run(["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), "--ways", "5",
                 "--shots", str(shots), "--queries", "15", "--episodes", str(episodes),
                 "--quiet", "--out", str(test_dir)])
            metrics = json.loads((test_dir / "metrics.json").read_text())
            row[f"5w{shots}s"] = f"{100 * metrics['accuracy']:.1f} +- {100 * metrics['ci95']:.1f}"
            row["train_seconds"] = metrics["train_seconds"]
        rows.append(row)
    lines = ["| method | 5-way 1-shot | 5-way 5-shot | training (s) |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['5w1s']} | {r['5w5s']} | {r['train_seconds']:.0f} |"
              for r in rows]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
