"""Meta-learning without labels on Omniglot: every method of chapter 6, 5 minutes a stage.

The protocol of issue 11: meta-train on the images of Lake et al.'s background set with
their labels unread, test on 600 episodes of the evaluation set (5-way, 1 and 5 shots, 15
queries per class, the same episodes for every row), 28x28 images, Conv-4 with 64 filters,
2 CPU cores, the ``cpu`` profile. Stages that a row builds on (a SimCLR encoder, a VAE, a
ProtoNet trained on labelled ``glyphs``) are trained once and counted as their own stage,
each within the same 5-minute budget; the table lists each row's own training time.

Every stage is a ``python -m companion`` command, printed as it runs, so each number can be
reproduced by hand; the recipes are the registry's and the task sources' ``cpu`` presets
(:data:`companion.methods.REGISTRY`, :data:`companion.tasks.TASKS`).

Rows:

- the supervised ProtoNet and MAML (human labels), for reference;
- a SimCLR encoder with a prototype head (the baseline every other row must beat or explain);
- UMTRA with ProtoNet and with MAML; CACTUs (ProtoNet) on SimCLR's clusters; LASIUM
  (ProtoNet) on a VAE; PsCo;
- pseudo-labels from a similar task: CACTUs on the clusters of a ProtoNet trained on labelled
  ``glyphs`` (a different, synthetic source);
- several unlabeled sources: UMTRA on Omniglot + glyphs + digits, each task from one source,
  and all images in one pool.

The published numbers beside them (5-way 1-shot / 5-shot on Omniglot, full-length training
and the papers' architectures) are in ``PUBLISHED`` with where they come from.

Usage::

    COMPANION_DATA=../shared/data python bench/unsupervised_table.py --save   # ~90 minutes
    python bench/unsupervised_table.py --rows umtra-protonet cactus-simclr
    python bench/unsupervised_table.py --quick    # a few steps each: checks the plumbing
    python bench/unsupervised_table.py --profile full --save   # the full recipes, on a GPU

Finished stages are reused (``train`` resumes a finished checkpoint at once); ``--restart``
trains every chosen stage again. It writes ``table.md`` and ``results.json`` under
``--out`` (in the format of ``bench/result_file.py``); ``--save`` also copies the results
to ``bench/results/unsupervised.json`` (``unsupervised_full.json`` for the full profile),
which chapters 6, 8 and 9 read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import result_file

DATA = ["--dataset", "omniglot", "--quiet"]  # then --profile, from the flag (default cpu)

STAGES: dict[str, list[str]] = {
    # name: the arguments of `python -m companion train` (the output folder is added)
    "simclr": ["simclr"],
    "vae": ["vae"],
    "glyphs-protonet": ["protonet", "--dataset", "glyphs"],
}
"""Pre-training stages that rows build on; glyphs-protonet overrides --dataset."""

ROWS: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (what it is, stages it needs, the train arguments; "{stage}" is that checkpoint)
    "umtra-protonet": ("UMTRA, ProtoNet", [], ["protonet", "--tasks", "umtra"]),
    "cactus-simclr": ("CACTUs on SimCLR's clusters, ProtoNet from SimCLR", ["simclr"],
                      ["protonet", "--tasks", "cactus", "--encoder", "{simclr}"]),
    "simclr + prototypes": ("SimCLR encoder, prototype head (no meta-training)",
                            ["simclr"], []),
    "psco": ("PsCo (prototype head on its encoder)", [], ["psco"]),
    "umtra-maml": ("UMTRA, MAML", [], ["maml", "--tasks", "umtra"]),
    "cactus-glyphs": ("CACTUs on the clusters of a ProtoNet trained on labelled glyphs",
                      ["glyphs-protonet"],
                      ["protonet", "--tasks", "cactus", "--encoder", "{glyphs-protonet}"]),
    "lasium-protonet": ("LASIUM-RO in the VAE's latent space, ProtoNet", ["vae"],
                        ["protonet", "--tasks", "lasium", "--generator", "{vae}"]),
    "umtra-mixed-task": ("UMTRA on Omniglot + glyphs + digits, a source per task", [],
                         ["protonet", "--tasks", "umtra", "--unlabeled", "glyphs,digits"]),
    "umtra-mixed-pool": ("UMTRA on Omniglot + glyphs + digits in one pool", [],
                         ["protonet", "--tasks", "umtra", "--unlabeled", "glyphs,digits",
                          "--mix", "pool"]),
    "umtra-protonet, support as is": ("UMTRA as in the paper: support images unaugmented",
                                      [], ["protonet", "--tasks", "umtra", "--task-set",
                                           "augment_support=False"]),
    "protonet (labels)": ("supervised ProtoNet, human labels", [], ["protonet"]),
    "maml (labels)": ("supervised MAML, human labels", [], ["maml"]),
}

PUBLISHED: dict[str, tuple[str, str]] = {
    # row: (5w1s / 5w5s as published, source)
    "protonet (labels)": ("98.8 / 99.7", "Snell et al. 2017, Table 1 (60-way training)"),
    "maml (labels)": ("98.7 / 99.9", "Finn et al. 2017, Table 1"),
    "umtra-maml": ("83.8 / 95.4", "Khodadadeh et al. 2019 (UMTRA with MAML)"),
    "cactus-simclr": ("68.1 / 83.6", "Hsu et al. 2019 (CACTUs-ProtoNets, ACAI embedding)"),
    "lasium-protonet": ("80.2 / 91.1", "Khodadadeh et al. 2021 (LASIUM-ProtoNets)"),
    "psco": ("96.4 / 99.1", "Jang et al. 2023 (PsCo)"),
}
"""Published Omniglot numbers (5-way, 1 and 5 shots; full-length training). The unsupervised
rows are the papers' tables as quoted by later work, which we could check against the
quotes but not the papers here: UMTRA 83.80 / 95.43, CACTUs-ProtoNets 68.12 / 83.58 and
LASIUM-ProtoNets 80.15 / 91.10 in the C3LR README (github.com/ojss/c3lr) and Table VIII of
the uDTW paper; the 5-shot UMTRA value also on the UMTRA authors' poster. The PsCo row is
the value issue 11 quotes; we have not found a readable copy of its Table 1 to confirm it.
UMTRA and LASIUM report MAML with their best variant; our rows use ProtoNet where the
published row does."""


def run(argv: list[str]) -> None:
    print("$ python -m companion " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "companion", *argv], check=True)


def test(checkpoint: Path, out: Path, episodes: int) -> dict[str, dict]:
    """5-way 1-shot and 5-shot on the evaluation set, 15 queries, the same episodes each row."""
    results = {}
    for shots in (1, 5):
        folder = out / f"test-5w{shots}s"
        run(["eval", "--checkpoint", str(checkpoint), "--ways", "5", "--shots", str(shots),
             "--queries", "15", "--episodes", str(episodes), "--quiet", "--out", str(folder)])
        results[f"5w{shots}s"] = json.loads((folder / "metrics.json").read_text())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--out", default="runs/unsupervised-table")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--restart", action="store_true", help="train every stage again")
    parser.add_argument("--quick", action="store_true", help="10 steps and 20 episodes each")
    parser.add_argument("--profile", choices=result_file.PROFILES, default="cpu",
                        help="the recipes' profile (full: the papers' lengths, for a GPU)")
    parser.add_argument("--save", action="store_true",
                        help="also write the result file (not for --quick unless --results)")
    parser.add_argument("--results", type=Path, default=None,
                        help="default: bench/results/unsupervised.json (unsupervised_full.json)")
    args = parser.parse_args()
    data = [*DATA[:2], "--profile", args.profile, *DATA[2:]]
    copy = result_file.save_path(args.save, args.quick, args.results,
                                 result_file.default_path("unsupervised", args.profile))
    out = Path(args.out)
    extra = ["--steps", "10"] if args.quick else []
    episodes = 20 if args.quick else args.episodes
    restart = ["--restart"] if args.restart else []

    wall: dict[str, float] = {}

    def train(name: str, argv: list[str]) -> Path:
        folder = out / name.replace(" ", "_").replace("(", "").replace(")", "")
        started = time.perf_counter()
        run(["train", *argv[:1], *data, *argv[1:], *extra, *restart, "--no-eval",
             "--out", str(folder)])
        wall[name] = time.perf_counter() - started
        return folder / "checkpoint.pt"

    checkpoints: dict[str, Path] = {}
    saved = out / "results.json"  # earlier rows are kept, the rows run now replace theirs
    results = json.loads(saved.read_text())["rows"] if saved.exists() and not args.quick else {}
    for row in args.rows:
        what, needs, argv = ROWS[row]
        for stage in needs:
            if stage not in checkpoints:
                checkpoints[stage] = train(stage, STAGES[stage])
        argv = [a.format(**{k: str(v) for k, v in checkpoints.items()}) for a in argv]
        checkpoint = train(row, argv) if argv else checkpoints[needs[0]]
        tested = test(checkpoint, checkpoint.parent / "tests" if not argv else checkpoint.parent,
                      episodes)
        stage = row if argv else needs[0]
        results[row] = {
            "what": what, "needs": needs,
            "command": " ".join(["python -m companion train", *(argv or STAGES[needs[0]])[:1],
                                 *data, *(argv or STAGES[needs[0]])[1:], *extra]),
            "train_seconds": tested["5w1s"]["train_seconds"],  # fit's loop
            "stage_seconds": wall.get(stage),  # the whole command: data, clustering, loop
            **{k: (v["accuracy"], v["ci95"]) for k, v in tested.items()},
            "published": PUBLISHED.get(row, (None, None))[0],
            "published_source": PUBLISHED.get(row, (None, None))[1]}
        flags = ["--quick"] if args.quick else []
        flags += [f"--profile {args.profile}"] if args.profile != "cpu" else []
        flags += [f"--episodes {args.episodes}"] if args.episodes != 600 else []
        flags += [f"--results {args.results}"] if args.results else []
        table = result_file.header(
            "bench/unsupervised_table.py",
            " ".join(["python bench/unsupervised_table.py", *flags, "--save"]), args.profile,
            ["5w1s", "5w5s"], episodes=episodes)
        table["rows"] = results
        result_file.write(saved, table)
        if copy:
            result_file.write(copy, table)
    lines = ["| method | 5-way 1-shot | 5-way 5-shot | training (s) | stage (s) | published |",
             "|---|---|---|---|---|---|"]
    for row, r in results.items():
        cells = [f"{100 * r[k][0]:.1f} +- {100 * r[k][1]:.1f}" for k in ("5w1s", "5w5s")]
        stage = "-" if r["stage_seconds"] is None else f"{r['stage_seconds']:.0f}"
        lines.append(f"| {row} | {cells[0]} | {cells[1]} | {r['train_seconds']:.0f} | {stage} | "
                     f"{r['published'] or '-'} |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
