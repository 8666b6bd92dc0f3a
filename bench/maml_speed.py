"""Speed and memory of the package's MAML meta-step against a learn2learn-style loop.

Both sides run the same Conv-4 (hidden 64, BatchNorm as tensor ops), the same 28x28
glyph tasks (5-way 1-shot 15-query, ``--tasks`` per meta-batch, default 32), the same
initial weights, one inner step with alpha = 0.4, second order, Adam:

- **package**: ``companion.meta.maml.MAML.meta_loss`` (``torch.func``; the tasks are a loop
  on the CPU and ``vmap`` on CUDA, as ``strategy="auto"`` chooses; ``--strategy`` overrides).
- **l2l-style loop**: what learn2learn's ``MAML.clone()``/``adapt()`` do, written out: per
  task a deep copy of the model whose parameters are replaced by graph-connected clones of
  the meta-parameters, one inner step with ``torch.autograd.grad(create_graph=True)``
  written back into the copy's ``_parameters``, tasks in a Python loop.

It prints the meta-gradient difference of the two (a correctness check), the time per
meta-step (forward, backward and Adam step; median of ``--steps``, the two methods
interleaved so that a change of machine load hits both), the peak extra memory of one step,
the achieved GFLOP/s and the machine's conv throughput, then the line
``speedup_vs_loop=<x> conv_efficiency=<y>``.

**FLOP counting** (convolutions only: BatchNorm, ReLU, pooling and the head are ignored).
A 3x3 conv with ``c_in -> c_out`` channels at ``s x s`` costs ``2 * 9 * c_in * c_out * s^2``
FLOPs per image; Conv-4 on 28x28 runs its convs at 28, 14, 7 and 3 pixels. With ``F(n)``
the forward FLOPs of ``n`` images, a backward pass costs about ``2 F`` (input and weight
gradients), so one task of second-order MAML with ``k`` inner steps costs

    k * (F_s + 2 F_s)      inner forward + backward with create_graph
    + F_q + 2 F_q          query forward + backward to the fast weights
    + k * (2 F_s + 4 F_s)  backward through the inner forward (2 F_s) and through the inner
                           backward graph (each of its ~2 F_s of convs costs 2x to differentiate)
    = 9 k F_s + 3 F_q      (first order: 3 k F_s + 3 F_q)

with ``F_s = F(N K)`` and ``F_q = F(N Q)``. It slightly over-counts (the first layer needs no
input gradient). ``conv_efficiency`` = achieved GFLOP/s of the package's step / GFLOP/s of
one large batched conv (``(B, 64, 14, 14) * (64, 64, 3, 3)``) timed in the same run: the
fastest of 3 after every round of steps, then the median over the rounds (on a shared 2-core
machine the conv alone ran anywhere from 150 to 280 GFLOP/s within one day, so a single
timing after the steps made the ratio swing by half).

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the rise of the
resident set size during one meta-step (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``), each method in a fresh process.

Usage::

    python bench/maml_speed.py --quick            # a smoke run: 2 tasks, 1 step
    python bench/maml_speed.py --steps 5 --tasks 32 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from companion import methods
from companion.data import EpisodeSampler, TaskBatch, load_dataset
from companion.meta.maml import MAML, MAMLConfig
from companion.nets import Conv4, linear_head

WAYS, SHOTS, QUERIES, SIZE, HIDDEN = 5, 1, 15, 28, 64
OUTER_LR = methods.get("maml").training["lr"]  # beta: Adam's step size in Finn et al.


def conv4_forward_flops(images: int, size: int = SIZE, hidden: int = HIDDEN) -> int:
    """Conv FLOPs (2 per multiply-add) of Conv-4's forward pass on ``images`` images."""
    flops, c_in = 0, 1
    for _ in range(4):
        flops += 2 * 9 * c_in * hidden * size * size
        size, c_in = size // 2, hidden  # 2x2 max-pool after each block
    return images * flops


def maml_step_flops(tasks: int, inner_steps: int, first_order: bool) -> int:
    f_s, f_q = conv4_forward_flops(WAYS * SHOTS), conv4_forward_flops(WAYS * QUERIES)
    return tasks * ((3 if first_order else 9) * inner_steps * f_s + 3 * f_q)


def setup(args: argparse.Namespace) -> tuple[nn.Module, TaskBatch, MAMLConfig]:
    """The model (seeded init), one meta-batch of glyph tasks and the MAML config."""
    torch.manual_seed(0)  # the model's default init
    model = nn.Sequential(Conv4(1, HIDDEN), linear_head(HIDDEN, WAYS)).to(args.device)
    data = load_dataset("glyphs", "train", alphabets=2 if args.quick else 6)
    batch = EpisodeSampler(data, WAYS, SHOTS, QUERIES, seed=0).sample_batch(args.tasks)
    config = MAMLConfig(strategy=args.strategy)
    return model, batch.to(args.device), config


def l2l_style_meta_loss(model: nn.Module, batch: TaskBatch, lr: float) -> torch.Tensor:
    """learn2learn's recipe: clone the module per task, adapt it in place, Python loop."""
    losses = []
    for task in batch:
        learner = copy.deepcopy(model)  # clone_module: same structure, ...
        for module, original in zip(learner.modules(), model.modules(), strict=True):
            for name, p in original._parameters.items():  # ... graph-connected parameters
                module._parameters[name] = p.clone()
        params = [p for m in learner.modules() for p in m._parameters.values()]
        loss = F.cross_entropy(learner(task.support_x), task.support_y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        updates = iter([p - lr * g for p, g in zip(params, grads, strict=True)])
        for module in learner.modules():  # update_module: write the fast weights back
            for name in module._parameters:
                module._parameters[name] = next(updates)
        losses.append(F.cross_entropy(learner(task.query_x), task.query_y))
    return torch.stack(losses).mean()


def make_steps(model: nn.Module, batch: TaskBatch, config: MAMLConfig):
    """The two meta-steps, each with its own copy of the initial weights and its own Adam."""
    maml = MAML(copy.deepcopy(model), config)
    loop_model = copy.deepcopy(model)
    opt_maml = torch.optim.Adam(maml.parameters(), lr=OUTER_LR)
    opt_loop = torch.optim.Adam(loop_model.parameters(), lr=OUTER_LR)

    def package_step() -> None:
        loss, _ = maml.meta_loss(batch)
        opt_maml.zero_grad()
        loss.backward()
        opt_maml.step()

    def loop_step() -> None:
        loss = l2l_style_meta_loss(loop_model, batch, config.inner_lr)
        opt_loop.zero_grad()
        loss.backward()
        opt_loop.step()

    return {"package": package_step, "loop": loop_step}, (maml, loop_model)


def gradient_gap(maml: MAML, loop_model: nn.Module, batch: TaskBatch, lr: float) -> float:
    """max |meta-gradient of the package - of the l2l-style loop| at the same weights.

    TF32 is switched off for the check: cuDNN convolutions use it by default on Ampere and
    later GPUs, and its 10-bit mantissa alone makes the two differ by ~1e-2 (~1e-4 without).
    The timings below run with PyTorch's defaults.
    """
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        loss, _ = maml.meta_loss(batch)
        ours = torch.autograd.grad(loss, list(maml.parameters()))
        theirs = torch.autograd.grad(
            l2l_style_meta_loss(loop_model, batch, lr), list(loop_model.parameters())
        )
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    return max((a - b).abs().max().item() for a, b in zip(ours, theirs, strict=True))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_mb(
    method: str, model: nn.Module, batch: TaskBatch, config: MAMLConfig, threads: int
) -> float:
    """Extra memory of one meta-step (CUDA: allocator peak; CPU: rise of the peak RSS).

    On the CPU this runs in a fresh process that gets the model and the batch from its
    parent (a process's freed memory stays with its allocator, and a spawned process
    inherits its parent's peak RSS), and the peak RSS is reset just before the step.
    """
    torch.set_num_threads(threads)
    steps, _ = make_steps(model, batch, config)
    if batch.support_x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        steps[method]()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    try:  # Linux: reset the peak RSS (VmHWM) to the current RSS, then read it after the step
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
        steps[method]()
        return (_proc_status_kib("VmHWM") - before) / 2**10
    except OSError:  # elsewhere: the rise of the lifetime peak (0 if the step stays below it)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        steps[method]()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**10


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def conv_throughput(device: str, quick: bool, repeats: int = 3) -> float:
    """GFLOP/s of one large batched 3x3 conv (forward), the machine's practical peak: the
    fastest of ``repeats`` timings after a warm-up."""
    b = 64 if quick else 256
    x = torch.randn(b, HIDDEN, 14, 14, device=device)
    w = torch.randn(HIDDEN, HIDDEN, 3, 3, device=device)
    flops = 2 * 9 * HIDDEN * HIDDEN * 14 * 14 * b
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        F.conv2d(x, w, padding=1)
        sync(device)
        times.append(time.perf_counter() - start)
    return flops / min(times[1:]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed meta-steps per method")
    parser.add_argument("--tasks", type=int, default=32, help="tasks per meta-batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--strategy", default="auto", choices=("auto", "loop", "vmap"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 tasks, 1 step")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.steps = min(args.tasks, 2), min(args.steps, 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, batch, config = setup(args)
    steps, (maml, loop_model) = make_steps(model, batch, config)
    print(
        f"device {args.device} ({torch.get_num_threads()} threads), torch {torch.__version__}; "
        f"Conv-4 hidden {HIDDEN}, {SIZE}x{SIZE}, {WAYS}-way {SHOTS}-shot {QUERIES}-query, "
        f"{args.tasks} tasks, second order, strategy {config.strategy}"
    )
    gap = gradient_gap(maml, loop_model, batch, config.inner_lr)
    print(f"meta-gradient check: max |package - loop| = {gap:.2e}")

    times: dict[str, list[float]] = {"package": [], "loop": []}
    peaks = []  # the conv reference, timed in every round: the machine's speed drifts
    for i in range(args.steps + 1):  # the first round warms up
        for name, step in steps.items():
            sync(args.device)
            start = time.perf_counter()
            step()
            sync(args.device)
            if i:
                times[name].append(time.perf_counter() - start)
        if i:
            peaks.append(conv_throughput(args.device, args.quick))
    memory_args = (model, batch, config, torch.get_num_threads())
    if args.device.startswith("cuda"):
        memory = {name: peak_memory_mb(name, *memory_args) for name in steps}
    else:  # one fresh process per method
        memory = {}
        for name in steps:
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                memory[name] = pool.apply(peak_memory_mb, (name, *memory_args))

    flops = maml_step_flops(args.tasks, config.inner_steps, config.first_order)
    peak = statistics.median(peaks)
    print(f"{'method':<16}{'s/step':>10}{'peak MB':>10}{'GFLOP/step':>12}{'GFLOP/s':>10}")
    for name, label in (("package", "package MAML"), ("loop", "l2l-style loop")):
        t = statistics.median(times[name])
        row = f"{t:>10.3f}{memory[name]:>10.1f}{flops / 1e9:>12.2f}{flops / t / 1e9:>10.2f}"
        print(f"{label:<16}{row}")
    print(f"conv throughput: {peak:.1f} GFLOP/s (batched conv2d, same device; median of "
          f"{len(peaks)} rounds, range {min(peaks):.0f}-{max(peaks):.0f})")
    package, loop = statistics.median(times["package"]), statistics.median(times["loop"])
    efficiency = flops / package / 1e9 / peak
    print(f"speedup_vs_loop={loop / package:.2f} conv_efficiency={efficiency:.3f}")


if __name__ == "__main__":
    main()
