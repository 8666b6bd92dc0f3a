"""Pre-train every self-supervised method on Omniglot for at most 5 minutes, then probe it.

The protocol of issue 4: pre-train on the images of Lake et al.'s background set without
their labels (28x28, Conv-4 with 64 filters, 2 CPU cores, ``--profile cpu``), then test the
frozen encoder on the evaluation set's 659 classes, which it has never seen:

- **5w1s, 5w5s**: the few-shot probe, a prototype classifier on cosine similarity over 600
  episodes with 15 queries per class (the same episodes as every meta-learner's table);
- **linear**: logistic regression on the features of each class's first 10 drawers, tested
  on the other 10 (659-way);
- **kNN**: a 20-nearest-neighbour vote on the same split (DINO's weighted vote).

Three baselines run through the same probes: raw pixels (the nearest-neighbour baseline of
chapter 1), the Conv-4 encoder at its random initialisation (the same weights every
Conv-4 method starts from, seed 0) and the MAE's ViT at its random initialisation (seed 0).
Each method runs through the package's two commands, ``python -m companion train`` then
``python -m companion eval``, with nothing but the dataset and the profile: the recipe is
the method's ``cpu`` preset in :data:`companion.methods.REGISTRY`, the same one a reader
gets from ``python -m companion train METHOD --dataset omniglot --profile cpu``, so every
number can be reproduced by hand. The registry explains each choice; in short, every method
uses Adam 1e-3 with a cosine decay, the projector widths of
:data:`companion.methods.SSL_HEADS` and batches of 256 images (rotation 64, since each
image becomes four), a step count that fits 5 minutes on 2 cores, SimCLR at temperature 0.2,
MoCo's and BYOL's targets at a constant momentum of 0.99, and MAE with per-patch normalised
targets.

Usage::

    COMPANION_DATA=../shared/data python bench/ssl_table.py --save   # ~60 min
    python bench/ssl_table.py --methods simclr barlow --out runs/ssl
    python bench/ssl_table.py --quick   # 2 methods, a few steps: checks the plumbing
    python bench/ssl_table.py --profile full --save   # longer pre-training, on a GPU

It prints a Markdown table (accuracy +- 95% CI in %, training seconds) and writes it, with
every run's ``metrics.json``, under ``--out``; ``--save`` also writes the result file
``bench/results/ssl.json`` (``ssl_full.json`` for the full profile) in the format of
``bench/result_file.py``, which chapter 9 reads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import result_file
import torch

from companion import methods

COMMON = ["--dataset", "omniglot", "--no-eval", "--quiet"]
METHODS = methods.names("images")

TESTS = (1, 5)  # shots of the 5-way test episodes
PROBES = ("linear", "knn")
COLUMNS = ("linear", "knn", "5w1s", "5w5s")
FEW_SHOT = tuple(f"5w{shots}s" for shots in TESTS)  # the settings papers publish, if any

PUBLISHED: dict[str, tuple[str, str]] = {
    # method: (5w1s / 5w5s in % as published on Omniglot, source)
    "psco": ("96.4 / 99.1", "Jang et al. 2023 (PsCo); the value issue 11 quotes, not yet "
                            "checked against the paper's Table 1"),
}
"""Published few-shot Omniglot numbers of the self-supervised methods. SimCLR, MoCo, BYOL,
SimSiam, Barlow Twins, the autoencoders, MAE and rotation prediction report no Omniglot
few-shot accuracy in their papers, so only PsCo, which was built for it, has one (the same
value as in ``unsupervised_table.PUBLISHED``)."""


def run(argv: list[str]) -> None:
    print("$ python -m companion " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "companion", *argv], check=True)


def cell(metrics: dict) -> str:
    return f"{100 * metrics['accuracy']:.1f} +- {100 * metrics['ci95']:.1f}"


def baselines(episodes: int, root: str | None) -> dict[str, dict]:
    """Rows for raw pixels and the random-init Conv-4 and ViT, through ``eval``'s probes."""
    from companion.data import EpisodeSampler, load_dataset
    from companion.evaluate import (
        embed,
        evaluate_episodes,
        knn_probe,
        linear_probe,
        pixel_nearest_neighbour,
        prototype_probe,
        split_per_class,
    )

    test = load_dataset("omniglot", "evaluation", root=root, image_size=28)
    train_idx, test_idx = split_per_class(test.labels)
    y = test.labels
    encoders = {}
    for name, method in (("random-init Conv-4", "simclr"), ("random-init ViT (MAE)", "mae")):
        with torch.random.fork_rng(devices=[]):  # the initial weights of a seed-0 run
            torch.manual_seed(0)
            encoders[name] = methods.build_learner(method, ways=5, image_size=28,
                                                   in_channels=1, width=64, seed=0).encoder
    features = {"pixels (cosine)": test.images.flatten(1),
                **{name: embed(encoder, test.images) for name, encoder in encoders.items()}}
    rows = {}
    for name, z in features.items():
        row = {"command": None, "what": "no training: probed by this script's baselines()",
               "train_seconds": 0.0}
        for probe, score in (("linear", linear_probe), ("knn", knn_probe)):
            accuracy = score(z[train_idx], y[train_idx], z[test_idx], y[test_idx])
            ci = 1.96 * (accuracy * (1 - accuracy) / len(test_idx)) ** 0.5
            row[probe] = [accuracy, ci]
        for shots in TESTS:
            sampler = EpisodeSampler(test, 5, shots, 15, seed=0)  # eval's episodes
            if name.startswith("pixels"):
                def classify(episode):
                    return pixel_nearest_neighbour(episode, "cosine")
            else:
                def classify(episode, encoder=encoders[name]):
                    return prototype_probe(encoder, episode)
            result = evaluate_episodes(classify, sampler, episodes)
            row[f"5w{shots}s"] = [result.accuracy, result.ci95]
        rows[name] = {**row, "published": None, "published_source": None}
        print(name, {c: cell({"accuracy": row[c][0], "ci95": row[c][1]}) for c in COLUMNS},
              flush=True)
    sampler = EpisodeSampler(test, 5, 1, 15, seed=0)
    result = evaluate_episodes(pixel_nearest_neighbour, sampler, episodes)
    print(f"pixels, squared Euclidean 1-NN, 5w1s: {cell(vars(result))}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", default="runs/ssl-table", help="output folder")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes")
    parser.add_argument("--root", default=None, help="data folder (default: $COMPANION_DATA)")
    parser.add_argument("--no-baselines", action="store_true", help="skip pixels and random init")
    parser.add_argument("--eval-only", action="store_true",
                        help="probe the checkpoints already under --out; train nothing")
    parser.add_argument("--quick", action="store_true",
                        help="5 steps, 20 episodes, simclr and ae: a plumbing check")
    parser.add_argument("--profile", choices=result_file.PROFILES, default="cpu",
                        help="the recipes' profile (full: longer pre-training, for a GPU)")
    parser.add_argument("--save", action="store_true",
                        help="write the result file (not for --quick unless --results is given)")
    parser.add_argument("--results", type=Path, default=None,
                        help="default: bench/results/ssl.json (ssl_full.json)")
    args = parser.parse_args()
    saved = result_file.save_path(args.save, args.quick, args.results,
                                  result_file.default_path("ssl", args.profile))
    chosen, episodes = args.methods, args.episodes
    if args.quick:
        chosen, episodes = [m for m in chosen if m in ("simclr", "ae")], 20
    out = Path(args.out)
    root = ["--root", args.root] if args.root else []
    flags = ["--quick"] if args.quick else []
    flags += [f"--methods {' '.join(args.methods)}"] if args.methods != list(METHODS) else []
    flags += [f"--profile {args.profile}"] if args.profile != "cpu" else []
    flags += [f"--episodes {args.episodes}"] if args.episodes != 600 else []
    flags += [f"--results {args.results}"] if args.results else []
    flags += ["--no-baselines"] if args.no_baselines else []
    result = result_file.header(
        "bench/ssl_table.py", " ".join(["python bench/ssl_table.py", *flags, "--save"]),
        args.profile, list(COLUMNS), published_settings=list(FEW_SHOT), episodes=episodes)
    rows = result["rows"]
    if not args.no_baselines:
        rows.update(baselines(episodes, args.root))
    for method in chosen:
        recipe = ["--steps", "5"] if args.quick else []
        run_dir = out / method
        train = ["train", method, *COMMON, "--profile", args.profile, *root, *recipe,
                 "--out", str(run_dir), "--restart"]
        if not args.eval_only:
            run(train)
        row = {"command": shlex.join(["python", "-m", "companion", *train]),
               "eval_commands": {}}
        tests = [(f"5w{shots}s", ["--ways", "5", "--shots", str(shots), "--queries", "15",
                                  "--episodes", str(episodes)]) for shots in TESTS]
        tests += [(probe, ["--probe", probe]) for probe in PROBES]
        for column, options in tests:
            test_dir = run_dir / f"test-{column}"
            test = ["eval", "--checkpoint", str(run_dir / "checkpoint.pt"), *options, *root,
                    "--quiet", "--out", str(test_dir)]
            run(test)
            metrics = json.loads((test_dir / "metrics.json").read_text())
            row["eval_commands"][column] = shlex.join(["python", "-m", "companion", *test])
            row[column] = result_file.measured(metrics)
            row["train_seconds"] = metrics["train_seconds"]
        published, source = PUBLISHED.get(method, (None, None))
        rows[method] = {"command": row.pop("command"), "eval_commands": row.pop("eval_commands"),
                        **{c: row[c] for c in COLUMNS}, "train_seconds": row["train_seconds"],
                        "published": published, "published_source": source}
        if saved:  # after every method, so a stopped run keeps the rows it finished
            result_file.write(saved, result)
    if saved and not chosen:
        result_file.write(saved, result)
    lines = ["| method | linear | kNN | 5-way 1-shot | 5-way 5-shot | training (s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(cell({"accuracy": r[c][0], "ci95": r[c][1]})
                                          for c in COLUMNS)
              + f" | {r['train_seconds']:.0f} |" for name, r in rows.items()]
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
