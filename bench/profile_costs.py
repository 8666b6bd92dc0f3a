"""What each chapter costs in the ``gpu`` profile on a T4, estimated before a GPU measures it.

Every chapter's time is mostly its training runs. For each run (the chapter's sizes are read
from its ``SIZES`` dict in ``book/chXX_*.md``, so the estimate follows the book) this script
builds the same learner on the same kind of batch and, for one training step on the CPU,
counts

- ``F``, the floating-point operations of the forward and backward pass
  (``torch.utils.flop_counter.FlopCounterMode``: matrix products and convolutions, which
  carry nearly all of them), and
- ``n``, the ATen operations it dispatches (a ``TorchDispatchMode`` that counts calls): on a
  GPU each is about one kernel launch, so ``n`` prices the overhead that dominates small
  models.

A step then costs ``F / (P e) + n L`` on a device of peak throughput ``P``, efficiency ``e``
and per-operation overhead ``L``, and a chapter ``sum over runs of steps x step cost``, plus
the part that is not training (evaluation, data, figures), taken from the cpu profile's
measured time (below).

The T4 (NVIDIA T4 Tensor Core GPU datasheet,
https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf):
``P`` = 8.1 TFLOPS in float32 (65 TFLOPS in mixed fp16/fp32, which the chapters do not
use). Assumed, until a GPU run measures them: ``e`` = 0.25 (cuDNN's float32 convolutions on
28x28 images with tens of channels reach a fraction of peak; a T4 also clocks down at its
70 W) and ``L`` = 10 us per operation (a CUDA kernel launch costs a few microseconds, and
eager PyTorch's dispatch on a Colab virtual CPU as much again).

Calibration, the CPU side of the same model: ``P`` is a float32 matrix product measured
here on one thread (doubled for the 2 cores of ``bench/results/chapter_times.json``), ``L``
the measured cost of a tiny operation, and ``e`` fitted so that the model matches the
measured time of the cpu-sized steps (one thread; CPU time, so that other work on the
machine does not inflate it). The model then predicts each
chapter's cpu-profile training time; ``measured - predicted`` (at least 0) is the
chapter's part that is not training, and is added unchanged to the GPU estimate (on a GPU
the evaluation runs faster but over more episodes: a rough wash). The file records, per
chapter, the measured cpu time, the model's cpu training time, and the GPU estimate.

Run it alone with one thread (``OMP_NUM_THREADS=1 nice -n 19 python bench/profile_costs.py``,
about 5 minutes); ``--chapters ch03 ch05`` runs some.

Writes ``bench/results/profile_costs.json``:

top level
    ``script``, ``command``, ``commit``, ``machine``, ``when``: as in ``result_file.py``
    ``device``: ``{"name", "peak_tflops", "efficiency", "op_overhead_us", "source"}``, the
    GPU the estimate is for; ``slow``: the pessimistic ``efficiency`` and ``op_overhead_us``
    ``cpu``: ``{"matmul_gflops_1thread", "cores", "op_overhead_us", "efficiency",
    "step_median_error"}``, the calibrated CPU side (the last: the model's median relative
    error on the measured cpu-profile steps)
    ``profile``: ``"gpu"``; ``note``: what is estimated and what measured
    ``chapters``: ``{chapter stem: row}``

each row
    ``runs``: ``[{"run", "steps", "gflop_per_step", "ops_per_step", "cpu_step_s" (``null``:
    only the cpu-sized steps are timed), "gpu_step_s" (estimated)}]`` at the gpu sizes
    ``cpu_measured_s``: the cpu profile's measured time (``chapter_times.json``)
    ``cpu_train_model_s``: the model's cpu-profile training time (2 cores)
    ``rest_s``: ``max(0, cpu_measured_s - cpu_train_model_s)``
    ``gpu_train_s``: the model's gpu-profile training time on the T4
    ``gpu_estimated_s``: ``gpu_train_s + rest_s``, the chapter's estimate
    ``gpu_slow_s``: the same on a slow T4 (:data:`SLOW`: e = 0.1, L = 25 us), the upper end
    ``full_estimated_s``: the same model for the ``full`` sizes (counted, not timed: a
    full-sized step can take a minute here), with the same ``rest_s``
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import result_file  # noqa: E402

from companion import methods  # noqa: E402
from companion.data import EpisodeSampler, load_dataset  # noqa: E402
from companion.data.batches import ImageBatchSampler  # noqa: E402
from companion.data.sinusoid import SinusoidTasks  # noqa: E402
from companion.guided.maxl import HierarchyBatches, hierarchy_split  # noqa: E402
from companion.meta.maml import MAML, MAMLConfig  # noqa: E402
from companion.nets import MLP  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "bench" / "results" / "profile_costs.json"
TIMES = REPO / "bench" / "results" / "chapter_times.json"
T4 = {"name": "NVIDIA T4", "peak_tflops": 8.1, "efficiency": 0.25, "op_overhead_us": 10.0,
      "source": "NVIDIA T4 Tensor Core GPU datasheet: 8.1 TFLOPS fp32, 65 TFLOPS mixed "
                "precision; efficiency and overhead assumed (see bench/profile_costs.py)"}
SLOW = {"efficiency": 0.1, "op_overhead_us": 25.0}
"""A pessimistic T4 for the upper end of the estimate: a tenth of peak, and 25 us per
operation (a throttled card behind a slow two-core Colab host)."""
CPU_CORES = 2  # the cores of the measured chapter times


# ---- one step, counted and timed ---------------------------------------------------------

class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched while active (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


@dataclass
class Run:
    """A training run of a chapter: ``steps`` steps of ``make()``'s step function."""

    name: str
    steps: int
    make: Callable[[], Callable[[], None]]  # builds the learner and data, returns one step
    flop_scale: float = 1.0  # FLOPs of the real step / FLOPs of the counted one (see ch03)


def measure(run: Run, timed: int = 2, warm_up: bool = True) -> dict[str, Any]:
    """FLOPs and operations of one step (after a warm-up one, if ``warm_up``), and its time
    on this CPU, the mean of ``timed`` steps (``timed=0``: counted only).

    Times are the process's CPU time, not wall time: with one thread that is what the step
    takes on one core, however busy the machine's other work keeps it.
    """
    torch.manual_seed(0)
    step = run.make()
    if warm_up:
        step()  # lazy buffers, allocator
    flops, ops = FlopCounterMode(display=False), OpCounter()
    with flops, ops:
        step()
    seconds = None
    if timed:
        start = time.process_time()
        for _ in range(timed):
            step()
        seconds = round((time.process_time() - start) / timed, 4)
    return {"run": run.name, "steps": run.steps,
            "gflop_per_step": round(run.flop_scale * flops.get_total_flops() / 1e9, 4),
            "ops_per_step": ops.ops, "cpu_step_s": seconds}


def learner_step(learner: torch.nn.Module, sample: Callable[[], Any]) -> Callable[[], None]:
    """One training step as ``fit`` takes it (the optimiser's few operations left out)."""
    def step() -> None:
        learner.zero_grad(set_to_none=True)
        loss, _ = learner.meta_loss(sample())
        loss.backward()
    return step


# ---- the data every run draws from (content does not change the counts) --------------------

_DATA: dict[str, Any] = {}


def glyphs() -> Any:
    if "glyphs" not in _DATA:
        # 6 alphabets: enough characters for chapter 8's 128-way full-profile view episodes
        _DATA["glyphs"] = load_dataset("glyphs", "train", alphabets=6)
    return _DATA["glyphs"]


def episodes(method: str, ways: int, shots: int, queries: int, meta_batch: int, width: int,
             **fields: Any) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        learner = methods.build_learner(method, ways=ways, image_size=28, in_channels=1,
                                        width=width, **fields)
        sampler = EpisodeSampler(glyphs(), ways, shots, queries, seed=0)
        return learner_step(learner, lambda: sampler.sample_batch(meta_batch))
    return make


def images(method: str, batch: int, width: int, **fields: Any
           ) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        learner = methods.build_learner(method, ways=5, image_size=28, in_channels=1,
                                        width=width, **fields)
        sampler = ImageBatchSampler(glyphs(), seed=0)
        return learner_step(learner, lambda: sampler.sample_batch(batch))
    return make


def sine(shots: int, inner_steps: int) -> Callable[[], Callable[[], None]]:
    """Chapter 3's sinusoid MAML (MLP 1-40-40-1, 25 tasks per step, vmap)."""
    def make() -> Callable[[], None]:
        config = MAMLConfig(inner_lr=0.01, inner_steps=inner_steps, loss="mse",
                            strategy="vmap")
        learner = MAML(MLP(1, hidden=(40, 40), out_features=1), config)
        tasks = SinusoidTasks(shots=shots, queries=shots, seed=0)
        return learner_step(learner, lambda: tasks.sample_batch(25))
    return make


def maxl(labels: str, width: int) -> Callable[[], Callable[[], None]]:
    """Chapter 7's MAXL on 20 alphabets of 5 characters, 64 drawings per step."""
    def make() -> Callable[[], None]:
        data = load_dataset("glyphs", "train", alphabets=20)
        problem, train_index, _ = hierarchy_split(data, per_group=5, groups=20)
        batches = HierarchyBatches(problem, train_index, seed=0)
        learner = methods.build_learner("maxl", ways=batches.primary_classes, image_size=28,
                                        in_channels=1, width=width, labels=labels,
                                        inner_lr=0.1)
        return learner_step(learner, lambda: batches.sample_batch(64))
    return make


# ---- each chapter's training runs, from its sizes --------------------------------------------
# Approximations, stated: a task source without labels (UMTRA, CACTUs, views) costs what a
# labelled episode of the same shape does (its augmentations are left out); chapter 7's
# meta-learned auxiliary weight costs what a fixed one does.

def ch02(s: dict, profile: str) -> list[Run]:
    return [Run("ProtoNet", s["steps"], episodes("protonet", s["proto_ways"], 1, 5, 1,
                                                 s["width"])),
            Run("Matching Network", s["steps"], episodes("matchingnet", 5, 1, 15, 1,
                                                         s["width"]))]


def ch03(s: dict, profile: str) -> list[Run]:
    runs = [Run(f"sine {name} K={k}", s["sine_steps"], sine(k, inner))
            for k in s["sine_shots"] for name, inner in (("MAML", 1), ("pretrained", 0))]
    # MAML's strategy "auto" maps the tasks with vmap on CUDA and loops over them on a CPU
    gpu = profile != "cpu"
    maml = {"inner_steps": s["inner_steps"], "strategy": "vmap" if gpu else "loop"}
    # Under vmap the tasks share every operation, so FLOPs grow with the tasks and the
    # operations do not: count at most 8 tasks (full's 32 would need gigabytes here) and
    # scale the FLOPs.
    counted = min(s["meta_batch"], 8) if gpu else s["meta_batch"]
    queries = min(s["queries"], 19)
    for name, method, fields in (("MAML", "maml", maml), ("FOMAML", "fomaml", maml),
                                 ("ANIL", "anil", maml),
                                 ("Proto-MAML", "protomaml",
                                  {**maml, "first_order": True, "inner_lr": 0.1})):
        runs.append(Run(name, s["image_steps"], episodes(method, 5, 1, queries, counted,
                                                         s["width"], **fields),
                        flop_scale=s["meta_batch"] / counted))
    runs.append(Run("Reptile", s["image_steps"], episodes(
        "reptile", 5, s["reptile_shots"], min(s["queries"], 20 - s["reptile_shots"]),
        s["reptile_meta_batch"], s["width"], **s["reptile"])))
    return runs


def ch04(s: dict, profile: str) -> list[Run]:
    runs = []
    for method, steps in s["steps"].items():
        batch = methods.get(method).batch(s["batch"]) * (2 if method == "mae" else 1)
        runs.append(Run(method, steps, images(method, batch, s["width"])))
    return runs


def ch05(s: dict, profile: str) -> list[Run]:
    fields = {m: methods.get(m).preset("cpu").get("set", {}) for m in s["steps"]}
    runs = [Run(m, steps, images(m, s["batch"], s["width"], **fields[m]))
            for m, steps in s["steps"].items()]
    return runs + [Run(f"SimSiam collapse demo ({which})", s["collapse_steps"],
                       images("simsiam", 64, 16, proj_dim=16)) for which in ("with", "without")]


def ch06(s: dict, profile: str) -> list[Run]:
    protonet = episodes("protonet", 20, 1, 5, 1, s["width"])
    return [Run("SimCLR", s["ssl_steps"], images("simclr", 256, s["width"], temperature=0.2)),
            Run("VAE", s["vae_steps"], images("vae", 256, s["width"])),
            *(Run(f"ProtoNet on {source}", s["steps"], protonet)
              for source in ("UMTRA", "labels", "CACTUs"))]


def ch07(s: dict, profile: str) -> list[Run]:
    aux = episodes("protonet", s["aux_ways"], 1, 4, 1, s["aux_width"], aux="rotation")
    return [*(Run(f"MAXL ({labels})", s["maxl_steps"], maxl(labels, s["width"]))
              for labels in ("none", "human", "maxl")),
            *(Run(f"weighted auxiliary ({which})", s["aux_steps"], aux)
              for which in ("rotation", "collapse"))]


def ch08(s: dict, profile: str) -> list[Run]:
    n, w = s["images"], s["width"]
    cosine = {"metric": "cosine", "scale": 5.0}
    return [Run("SimCLR", s["steps"], images("simclr", n, w, temperature=0.2)),
            Run("ProtoNet on view episodes", s["steps"], episodes("protonet", n, 1, 1, 1, w,
                                                                   **cosine)),
            Run("ProtoNet, 3 views as shots", s["steps"],
                episodes("protonet", n // 2, 3, 1, 1, w, **cosine)),
            Run("ProtoNet, rotations as classes", s["steps"],
                episodes("protonet", n, 1, 1, 1, w, **cosine)),
            Run("ProtoNet, few classes", s["aux_steps"], episodes("protonet", 5, 1, 5, 1, w)),
            *(Run(f"ProtoNet + rotation ({which})", s["aux_steps"],
                  episodes("protonet", 5, 1, 5, 1, w, aux="rotation"))
              for which in ("episodes", "episodes and unlabeled images"))]


CHAPTERS: dict[str, Callable[[dict, str], list[Run]]] = {
    "ch01_few_shot": lambda s, p: [], "ch02_metric": ch02, "ch03_gradient": ch03,
    "ch04_generative": ch04, "ch05_contrastive": ch05, "ch06_unsupervised_meta": ch06,
    "ch07_guided_ssl": ch07, "ch08_contrastive_meta": ch08, "ch09_benchmarks": lambda s, p: [],
}
"""Chapters 1 and 9 train nothing: their gpu time is their cpu time."""


def chapter_sizes(stem: str) -> dict[str, dict]:
    """The ``SIZES`` dict of ``book/{stem}.md``, evaluated (``dict(...)`` and literals only);
    ``{}`` for a chapter without one."""
    text = (REPO / "book" / f"{stem}.md").read_text()
    start = text.find("SIZES = {")
    if start < 0:
        return {}
    lines = text[start:].splitlines()
    for end in range(1, len(lines) + 1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
        expression = ast.Expression(tree.body[0].value)
        return eval(compile(expression, stem, "eval"), {"__builtins__": {}, "dict": dict})
    raise ValueError(f"no complete SIZES dict in book/{stem}.md")


# ---- the CPU side: throughput and per-operation overhead, measured ---------------------------

def matmul_gflops(n: int = 1_024, repeats: int = 5) -> float:
    """Float32 matrix-product throughput of one thread, in CPU time (as :func:`measure`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.process_time()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.process_time() - start) / 1e9


def op_overhead_us(repeats: int = 20_000) -> float:
    """CPU time of one tiny operation (four floats): the per-operation overhead."""
    x = torch.ones(4)
    start = time.process_time()
    for _ in range(repeats):
        x = x + 1
    return (time.process_time() - start) / repeats * 1e6


def step_seconds(run: dict, throughput: float, efficiency: float, overhead_us: float) -> float:
    return run["gflop_per_step"] * 1e9 / (throughput * efficiency) + run["ops_per_step"] * \
        overhead_us * 1e-6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapters", nargs="*", default=None,
                        help="chapter stems or prefixes (default: all)")
    parser.add_argument("--results", type=Path, default=RESULT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    stems = [c for c in CHAPTERS if not args.chapters
             or any(c.startswith(p) for p in args.chapters)]
    measured = json.loads(TIMES.read_text())["cpu"]["seconds"]

    gflops, overhead = matmul_gflops(), op_overhead_us()
    print(f"CPU: {gflops:.0f} GFLOPS (1 thread matmul), {overhead:.1f} us per tiny op",
          flush=True)
    runs: dict[str, dict[str, list[dict]]] = {}
    for stem in stems:
        sizes = chapter_sizes(stem)
        runs[stem] = {}
        for profile in ("cpu", "gpu", "full"):  # timed: cpu only (the calibration); full:
            plan = CHAPTERS[stem](sizes[profile], profile) if sizes else []  # no warm-up
            runs[stem][profile] = [measure(r, timed=2 if profile == "cpu" else 0,
                                           warm_up=profile != "full") for r in plan]
            for r in runs[stem][profile]:
                print(f"{stem} {profile} {r['run']}: {r['steps']} steps, "
                      f"{r['gflop_per_step']:.2f} GFLOP, {r['ops_per_step']} ops, "
                      f"{r['cpu_step_s']} s/step here", flush=True)

    # e_cpu: the efficiency that makes the model match the measured one-thread cpu-profile
    # steps (the gpu-sized ones ran here too, but MAML's with the GPU's vmap strategy).
    every = [r for stem in runs for r in runs[stem]["cpu"]]
    compute = sum(r["gflop_per_step"] * 1e9 / (gflops * 1e9) for r in every)
    rest = sum(max(r["cpu_step_s"] - r["ops_per_step"] * overhead * 1e-6, 0) for r in every)
    efficiency = min(1.0, compute / rest) if rest else 1.0
    fitted = [step_seconds(r, gflops * 1e9, efficiency, overhead) for r in every]
    errors = [abs(f / r["cpu_step_s"] - 1) for f, r in zip(fitted, every, strict=True)]
    median_error = sorted(errors)[len(errors) // 2] if errors else 0.0
    print(f"CPU efficiency fitted: {efficiency:.2f}; model vs measured step time: median "
          f"error {100 * median_error:.0f}%")

    peak = T4["peak_tflops"] * 1e12
    chapters = {}
    for stem in stems:
        cpu_train = sum(r["steps"] * step_seconds(r, CPU_CORES * gflops * 1e9, efficiency,
                                                  overhead) for r in runs[stem]["cpu"])
        gpu_rows = [{**r, "gpu_step_s": round(step_seconds(r, peak, T4["efficiency"],
                                                           T4["op_overhead_us"]), 5)}
                    for r in runs[stem]["gpu"]]
        gpu_train = sum(r["steps"] * r["gpu_step_s"] for r in gpu_rows)
        gpu_slow = sum(r["steps"] * step_seconds(r, peak, SLOW["efficiency"],
                                                 SLOW["op_overhead_us"]) for r in gpu_rows)
        rest_s = max(0.0, measured[stem] - cpu_train)
        full_train = sum(r["steps"] * step_seconds(r, peak, T4["efficiency"],
                                                   T4["op_overhead_us"])
                         for r in runs[stem]["full"])
        chapters[stem] = {"runs": gpu_rows, "cpu_measured_s": measured[stem],
                          "cpu_train_model_s": round(cpu_train, 1), "rest_s": round(rest_s, 1),
                          "gpu_train_s": round(gpu_train, 1),
                          "gpu_estimated_s": round(gpu_train + rest_s, 1),
                          "gpu_slow_s": round(gpu_slow + rest_s, 1),
                          "full_estimated_s": round(full_train + rest_s, 1)}
        print(f"{stem}: cpu measured {measured[stem]:.0f} s, model's training "
              f"{cpu_train:.0f} s; gpu (T4) training {gpu_train:.0f} s, estimate "
              f"{gpu_train + rest_s:.0f} s (a slow T4: {gpu_slow + rest_s:.0f} s); full "
              f"{(full_train + rest_s) / 60:.0f} min")

    result = {"script": "bench/profile_costs.py",
              "command": "OMP_NUM_THREADS=1 python bench/profile_costs.py",
              "commit": result_file.commit(), "machine": result_file.machine(),
              "when": time.strftime("%Y-%m-%d %H:%M"), "profile": "gpu", "device": T4, "slow": SLOW,
              "cpu": {"matmul_gflops_1thread": round(gflops, 1), "cores": CPU_CORES,
                      "op_overhead_us": round(overhead, 2), "efficiency": round(efficiency, 3),
                      "step_median_error": round(median_error, 3)},
              "note": "gpu times are estimates from FLOP and operation counts until "
                      "`python bench/chapter_times.py --profile gpu` measures them on a GPU",
              "chapters": chapters}
    if args.chapters and args.results.exists():  # a partial run keeps the other chapters
        kept = json.loads(args.results.read_text())
        result["chapters"] = {**kept.get("chapters", {}), **chapters}
    result_file.write(args.results, result)


if __name__ == "__main__":
    main()
