"""Meta-train every meta-learner on Omniglot for at most 5 minutes each, then test it.

The protocol of issue 3 (and of the papers): meta-train on Lake et al.'s background set,
test on 600 episodes of the evaluation set (15 queries per class, the same episodes for
every method), 28x28 images, Conv-4 with 64 filters, 2 CPU cores. Each method runs through
the package's two commands, ``python -m companion train`` then ``python -m companion eval``,
with the recipe in :data:`RECIPES`, so every number in the table can be reproduced by hand.

Recipes. The papers train for hours (MAML: 60,000 meta-steps of 32 tasks); a 5-minute
budget on 2 cores buys about 1% of that, so each recipe spends it where it pays:

- every method trains with the 90/180/270-degree rotations as new classes (Santoro et al.,
  2016; Vinyals et al., 2016; Finn et al., 2017);
- ProtoNet and Matching Networks train 20-way (Snell et al., 2017, sec. 3.1: "higher way
  in training than at test"; their 60-way costs 3.8x more per step here, too much for 5
  minutes), with 5 queries per class, one episode per step and a cosine learning-rate
  decay to 0;
- MAML and its variants use 1 query per class in training, as MAML's code does
  (``num_samples_per_class = 2 * update_batch_size``), and 8 tasks per meta-step instead
  of 32 (more, noisier steps in the same time), Adam at the paper's 1e-3; at test they
  take 10 inner steps instead of 3 (+0.5 to +0.9 points in our runs);
- Matching Networks multiply the cosine by 10 before the softmax of eq. 2 (the paper's
  scale is 1). Conv-4 features are non-negative (ReLU), so cosines lie in [0, 1] and with
  scale 1 the attention stays nearly uniform: 81.9 +- 0.9 5w1s after 5 minutes, against
  95.7 +- 0.4 with scale 10;
- Reptile keeps Nichol et al.'s settings (10 shots in the inner loop, 5 tasks per step).

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

COMMON = ["--dataset", "omniglot", "--rotations", "--no-eval", "--quiet", "--profile", "cpu"]
GRADIENT = ["--ways", "5", "--shots", "1", "--queries", "1", "--meta-batch", "8",
            "--set", "inner_steps_test=10"]
RECIPES: dict[str, list[str]] = {
    "protonet": ["--ways", "20", "--shots", "1", "--queries", "5", "--meta-batch", "1",
                 "--schedule", "cosine", "--steps", "2700"],
    "matchingnet": ["--ways", "20", "--shots", "1", "--queries", "5", "--meta-batch", "1",
                    "--schedule", "cosine", "--steps", "2900", "--set", "scale=10"],
    "maml": [*GRADIENT, "--steps", "1400"],
    "fomaml": [*GRADIENT, "--steps", "2700"],
    "anil": [*GRADIENT, "--steps", "2900"],
    "protomaml": [*GRADIENT, "--steps", "1900", "--set", "first_order=True"],
    # Nichol et al.: 10 examples per class in the inner loop, 5 tasks per meta-step, SGD on
    # the surrogate with epsilon annealed 1 -> 0 (the method's defaults).
    "reptile": ["--ways", "5", "--shots", "10", "--queries", "1", "--meta-batch", "5",
                "--steps", "650"],
}
"""Arguments of ``python -m companion train METHOD`` (besides :data:`COMMON`) per method."""

TESTS = (1, 5)  # shots of the 5-way test episodes


def run(argv: list[str]) -> None:
    print("$ python -m companion " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "companion", *argv], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--out", default="runs/omniglot-table", help="output folder")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes")
    parser.add_argument("--quick", action="store_true",
                        help="10 steps, 20 episodes, protonet and maml: a plumbing check")
    args = parser.parse_args()
    methods, episodes = args.methods, args.episodes
    if args.quick:
        methods, episodes = [m for m in methods if m in ("protonet", "maml")], 20
    out = Path(args.out)
    rows = []
    for method in methods:
        recipe = RECIPES[method]
        if args.quick:
            steps = recipe.index("--steps")
            recipe = [*recipe[:steps], "--steps", "10", *recipe[steps + 2:]]
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
