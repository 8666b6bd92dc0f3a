"""Training speed of the fast GPU paths of ``fit``, each against float32 in the same run.

For ProtoNet, MAML (second order) and SimCLR it trains through :func:`companion.train.fit`
itself, so the figures include what a run pays (batch copies, pinned memory, logging), with
each of these :class:`~companion.train.TrainConfig` settings:

- ``fp32``: the defaults (float32, NCHW, eager);
- ``bf16``: ``amp=True`` (bfloat16 autocast);
- ``channels_last``: ``channels_last=True``;
- ``bf16+channels_last``: both;
- ``compile``: ``compile=True`` (``torch.compile`` of ``meta_loss``).

Each variant gets a fresh learner (the same seeded init), ``--warmup`` steps that are not
timed (cuDNN's autotuning, compilation), then ``--steps`` timed ones; the result is steps
per second and the ratio to ``fp32`` of the same method in the same run. A variant that
fails (say, a compile error) is recorded with its error and the others go on. Sizes: Conv-4
of width 64 on 28x28 glyphs; 5-way 1-shot 15-query episodes, ``--tasks`` per meta-batch
(default 32, MAML's Omniglot batch); SimCLR on ``8 * tasks`` images.

Usage::

    python bench/gpu_paths.py                    # on CUDA; prints the table
    python bench/gpu_paths.py --save             # ... and writes bench/results/gpu_paths.json
    python bench/gpu_paths.py --quick --results /tmp/gpu_paths.json   # plumbing, any device

On a CPU ``fit`` ignores ``amp``, so the ``bf16`` rows there measure nothing; ``--save``
(the kept file) needs CUDA, and ``--quick`` (tiny sizes) never writes the kept file.

The result file has a small format of its own: ``script``, ``command``, ``commit``,
``machine``, ``when``, ``device``, ``setting`` (sizes and steps), ``rows`` ``{method:
{variant: {"steps_per_s", "ratio", "loss"}}}`` (``loss``: the mean training loss of the timed
steps, a sanity check; a failed variant has ``{"error": "..."}`` instead).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import result_file
import torch

from companion import methods
from companion.data import EpisodeSampler, load_dataset
from companion.data.batches import ImageBatchSampler
from companion.train import TrainConfig, fit

VARIANTS = {
    "fp32": {},
    "bf16": {"amp": True},
    "channels_last": {"channels_last": True},
    "bf16+channels_last": {"amp": True, "channels_last": True},
    "compile": {"compile": True},
}
METHODS = ("protonet", "maml", "simclr")


def learner_and_sampler(method: str, width: int, tasks: int):
    torch.manual_seed(0)  # the same initial weights for every variant
    learner = methods.build_learner(method, ways=5, image_size=28, in_channels=1,
                                    width=width, seed=0)
    data = load_dataset("glyphs", "train")
    if methods.get(method).trains_on == "images":
        return learner, ImageBatchSampler(data, seed=0), 8 * tasks
    return learner, EpisodeSampler(data, 5, 1, 15, seed=0), tasks


def measure(method: str, variant: str, args: argparse.Namespace) -> dict[str, float | str]:
    learner, sampler, batch = learner_and_sampler(method, args.width, args.tasks)
    config = TrainConfig(steps=args.warmup, meta_batch=batch, device=args.device,
                         log_every=1, val_every=10**9, checkpoint_every=10**9,
                         **methods.get(method).training, **VARIANTS[variant])
    try:
        fit(learner, sampler, config, progress=False)  # warm-up: autotuning, compilation
        result = fit(learner, sampler, replace(config, steps=args.steps), progress=False,
                     resume=False)
    except Exception as err:  # noqa: BLE001 (a benchmark records what failed, then goes on)
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    losses = [h["loss"] for h in result.history["train"]]
    return {"steps_per_s": args.steps / result.train_seconds,
            "loss": sum(losses) / len(losses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--tasks", type=int, default=32, help="tasks per meta-batch")
    parser.add_argument("--width", type=int, default=64, help="Conv-4 width")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--quick", action="store_true",
                        help="plumbing check: width 8, 2 tasks, 1 + 2 steps")
    parser.add_argument("--save", action="store_true",
                        help="write bench/results/gpu_paths.json (needs CUDA)")
    parser.add_argument("--results", type=Path, default=None, help="write here instead")
    args = parser.parse_args()
    if args.quick:
        args.width, args.tasks, args.warmup, args.steps = 8, 2, 1, 2
    if args.save and args.results is None and not args.device.startswith("cuda"):
        raise SystemExit("--save writes the kept GPU figures; on this device pass --results")
    path = result_file.save_path(args.save or args.results is not None, args.quick,
                                 args.results, result_file.RESULTS / "gpu_paths.json")
    print(f"device {args.device}, torch {torch.__version__}; Conv-4 width {args.width}, "
          f"{args.tasks} tasks (SimCLR {8 * args.tasks} images), {args.warmup} warm-up + "
          f"{args.steps} timed steps per variant")
    if not args.device.startswith("cuda"):
        print("(not CUDA: fit ignores amp here, so the bf16 rows measure float32)")
    rows: dict[str, dict[str, dict[str, float | str]]] = {}
    for method in args.methods:
        rows[method] = {}
        for variant in args.variants:
            began = time.perf_counter()
            row = rows[method][variant] = measure(method, variant, args)
            base = rows[method].get("fp32", {}).get("steps_per_s")
            if "steps_per_s" in row and base:
                row["ratio"] = row["steps_per_s"] / base
                text = (f"{row['steps_per_s']:8.2f} steps/s  x{row['ratio']:.2f} vs fp32  "
                        f"loss {row['loss']:.4f}")
            else:
                text = row.get("error", f"{row.get('steps_per_s', 0):8.2f} steps/s")
            print(f"{method:<10}{variant:<20}{text}  ({time.perf_counter() - began:.0f} s)",
                  flush=True)
        if path is not None:  # after every method, so a run cut short keeps what it measured
            save(path, args, rows)


def save(path: Path, args: argparse.Namespace, rows: dict) -> None:
    command = "python bench/gpu_paths.py --save" if args.save and not args.results else (
        f"python bench/gpu_paths.py --device {args.device} --warmup {args.warmup} "
        f"--steps {args.steps} --tasks {args.tasks} --width {args.width} --results {path}")
    result_file.write(path, {
        "script": "bench/gpu_paths.py", "command": command,
        "commit": result_file.commit(), "machine": result_file.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"), "device": args.device,
        "setting": {"width": args.width, "tasks": args.tasks, "simclr_images": 8 * args.tasks,
                    "warmup": args.warmup, "steps": args.steps, "image_size": 28,
                    "episodes": "5-way 1-shot 15-query"},
        "rows": rows})

if __name__ == "__main__":
    main()
