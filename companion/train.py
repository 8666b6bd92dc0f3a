r"""The one training loop every method shares.

Meta-training is stochastic gradient descent where each example is a *task*. Every
learner in :mod:`companion.meta` exposes ``meta_loss(batch) -> (loss, logs)``, whose
gradient is the method's meta-update direction, so one loop trains them all::

    for step in 1..T:
        batch = sampler.sample_batch(B)            # B tasks, a TaskBatch
        loss, logs = learner.meta_loss(batch)      # L(theta) = 1/B sum_i L_i(theta)
        loss.backward()                            # the meta-gradient
        clip the gradient norm (optional); optimizer.step(); scheduler.step()
        every val_every steps: accuracy on the same validation episodes
        every checkpoint_every steps: save everything needed to continue

**What it trains.** Any :class:`~companion.protocols.Learner` on batches from any
:class:`~companion.protocols.TaskSource` (``fit`` checks both and says what is missing).
After every optimiser step it calls the learner's ``after_step(step, total_steps)`` if it
has one (a MoCo queue, a BYOL target and its momentum schedule move there).

**Checkpoints and resume.** A checkpoint holds the learner's ``state_dict``, the
optimizer, scheduler and gradient-scaler states, the step, the random states (PyTorch's
CPU generator, CUDA's when used, and every generator the sampler and the learner name in
their ``generators()``), the
history so far, the config and a plain-data ``spec`` saying how to rebuild the learner. It
contains only tensors and plain containers, so it loads with ``weights_only=True``
(``torch.load`` then runs no code from the file). It is written to a temporary file in the same
folder, then renamed over the old one (``os.replace``), so a crash while saving leaves the
previous checkpoint whole. Because everything that steers the run is restored, a run
stopped after step ``k`` and resumed ends with the same parameters, bit for bit on a CPU,
as a run that never stopped (``tests/test_train.py`` checks this).

**Randomness.** The loop runs inside ``torch.random.fork_rng``: it seeds its own stream
with ``config.seed`` (dropout, augmentations inside ``meta_loss``) and leaves the caller's
random state as it was. Episodes come from the sampler's own generator.

**Several processes.** Launched by ``torchrun`` (after :func:`companion.distributed.setup`),
``fit`` trains data-parallel: ``config.meta_batch`` is the *global* batch, each of the ``W``
ranks draws ``meta_batch / W`` tasks or images from its own streams (rank ``r`` reseeds
every generator of the sampler and the learner, and its own torch stream, with
:func:`~companion.distributed.rank_seed`), and ``meta_loss`` runs inside PyTorch's
``DistributedDataParallel``, which averages the gradients over the ranks in ``backward``,
so every rank takes the same optimiser step. The logged numbers are averaged over the ranks.
Rank 0 alone validates, shows the progress bar and writes ``checkpoint.pt`` and
``metrics.json``; the checkpoint holds every rank's random states (``rng_ranks``), so a
resumed run equals one that never stopped, with the same number of ranks. What the split
changes (batch statistics) and which learners are refused: :mod:`companion.distributed`.

**Mixed precision.** With ``amp=True`` on CUDA, ``meta_loss`` runs under
``torch.autocast`` (bfloat16 by default; float16 adds a ``GradScaler`` so that small
gradients do not underflow). On a CPU the flag is ignored: CPU autocast speeds up only
processors with bfloat16 matrix units and would make CPU runs, the ones the tests and the
book's ``smoke``/``cpu`` profiles use, differ from full precision for no gain. Which learners
autocast is :func:`amp_enabled`'s choice, from ``bench/amp_numerics.py``: it compares each
method's meta-gradient in float32 and under bfloat16 autocast with float64, on an
Omniglot-sized batch (Conv-4 of width 64, 28x28, 5-way 1-shot), beside the difference that
another batch of the same size makes (``bench/results/amp_numerics.json`` for a CPU;
``bench/gpu_check.sh`` measures a GPU's kernels). For ProtoNet, MAML, first-order MAML, ANIL
and SimCLR the rounding is small against the sampling noise every step carries, and
second-order MAML is no exception: its Hessian term alone (MAML's gradient minus first-order
MAML's) moves no more than the whole. Reptile moves most, since its gradient
``theta - mean(phi)`` is the small difference of two parameter sets after inner Adam steps:
its cosine with the float64 gradient falls below 0.9, the rule's threshold, so Reptile sets
``amp_safe = False`` and trains in float32 whatever ``amp`` says.

**Memory layout, pinned copies, compilation.** ``channels_last=True`` stores the 4-d
weights and every batch's images channels-innermost (NHWC), the layout of the GPU's
tensor-core convolutions; the values are the same, only the kernels differ (in float64 the
runs agree to rounding, ``tests/test_train.py``; in float32, batch norm's backward (a difference of
means) lifts the kernels' different rounding far above float32's epsilon). It works through MAML's
``functional_call``, ``torch.func.grad`` and ``vmap``. On CUDA every batch is copied to
pinned host memory and sent with ``non_blocking=True`` (:func:`to_device`), before
``meta_loss`` augments it: the self-supervised learners' augmentations draw their random
parameters on the CPU and resample the images where they are, on the GPU.
``compile=True`` wraps ``meta_loss`` (or its DDP wrapper) in ``torch.compile``; the first
steps compile, and the logs (``.item()``, Python floats) and the norm layers' transform checks
split it into several graphs. Every learner compiles (ProtoNet, MAML, SimCLR and Reptile were
checked on a CPU); whether it pays on a GPU is for ``bench/gpu_paths.py`` to say, which
measures every one of these settings against float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn
from tqdm.auto import tqdm  # a text bar in a terminal, a widget in a notebook

from companion import distributed
from companion.checks import check_int
from companion.data.batches import ImageBatchSampler
from companion.data.episodes import EpisodeSampler
from companion.evaluate import EvalResult, evaluate_episodes
from companion.protocols import (
    MetaLossModule,
    TaskSource,
    check_learner,
    check_task_source,
    generators_of,
)

CHECKPOINT, METRICS_FILE = "checkpoint.pt", "metrics.json"
CHECKPOINT_FORMAT = 2  # 2: generators saved by name (format 1 kept one per object)
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("none", "step", "cosine", "linear")
AMP_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that steers a training run (the learner's own config is separate).

    ``schedule``: ``none`` keeps ``lr``; ``step`` multiplies it by ``decay_gamma`` every
    ``decay_every`` steps (ProtoNet halves it every 2,000 episodes); ``cosine`` anneals it
    to 0 over ``steps``; ``linear`` decreases it linearly to 0 (Reptile's outer step size).
    """

    steps: int = 2_000  # meta-updates
    meta_batch: int = 32  # tasks per meta-update (MAML: 32 for 5-way Omniglot)
    lr: float = 1e-3  # outer learning rate (ProtoNet's and MAML's Adam)
    optimizer: str = "adam"  # "adam" or "sgd" (plain SGD, e.g. for Reptile's outer step)
    schedule: str = "none"  # "none", "step", "cosine" or "linear"
    decay_every: int = 2_000  # "step" schedule: steps between decays
    decay_gamma: float = 0.5  # "step" schedule: factor per decay
    weight_decay: float = 0.0  # L2 penalty added to the gradient by the optimizer
    grad_clip: float | None = None  # clip the meta-gradient to this total norm
    log_every: int = 10  # steps averaged into one point of the training history
    val_every: int = 500  # steps between validations (and after the last step)
    val_episodes: int = 100  # validation episodes, the same ones every time
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    seed: int = 0  # seed of the loop's random stream (not of the episodes)
    device: str = "auto"  # "auto": CUDA if available, else CPU; or "cpu", "cuda:1", ...
    amp: bool = False  # mixed precision on CUDA; ignored on a CPU (see the module doc)
    amp_dtype: str = "bfloat16"  # "bfloat16" or "float16" (with a GradScaler)
    channels_last: bool = False  # weights and images in NHWC layout (faster convs on GPUs)
    compile: bool = False  # torch.compile the learner's meta_loss (see the module doc)

    def __post_init__(self) -> None:
        for name in ("steps", "meta_batch", "decay_every", "log_every", "val_every",
                     "val_episodes", "checkpoint_every"):
            check_int(name, getattr(self, name))
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("amp_dtype", AMP_DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; allowed: "
                                 f"{', '.join(allowed)}")
        if not self.lr > 0 or not 0 < self.decay_gamma <= 1 or not self.weight_decay >= 0:
            raise ValueError(f"need lr > 0, 0 < decay_gamma <= 1 and weight_decay >= 0; got "
                             f"{self.lr}, {self.decay_gamma} and {self.weight_decay}")
        for name in ("amp", "channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool; got {getattr(self, name)!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be None or positive; got {self.grad_clip}")


@dataclass(frozen=True)
class TrainResult:
    """What a run left.

    ``history["train"]``: ``{"step", "loss", "accuracy", ...}``, means of ``meta_loss``'s
    logs over each ``log_every`` steps; ``history["val"]``: ``{"step", "accuracy", "ci95"}``
    per validation (fractions). ``best_val`` is the best of those (the parameters kept are
    the last ones, not the best). ``finished`` is False after ``stop_after``.
    """

    step: int
    history: dict[str, list[dict[str, float]]]
    train_seconds: float
    best_val: dict[str, float] | None
    finished: bool
    config: dict[str, Any]
    spec: dict[str, Any]

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> TrainResult:
        """The result as of a checkpoint (see :func:`load_checkpoint`)."""
        val = state["history"]["val"]
        return cls(state["step"], state["history"], state["train_seconds"],
                   max(val, key=lambda v: v["accuracy"]) if val else None,
                   state["step"] >= state["config"]["steps"], state["config"], state["spec"])


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; other names as ``torch.device`` reads them."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for CUDA, which is not available here")
    return device


def evaluate_learner(learner: nn.Module, sampler: EpisodeSampler, episodes: int, *,
                     device: torch.device | str | None = None,
                     progress: bool = False) -> EvalResult:
    """Accuracy +- 95% CI of ``learner.classify`` over ``episodes`` episodes, in eval mode.

    ``device`` defaults to where the learner's parameters are, so a model trained on a
    GPU is evaluated there.
    """
    if device is None:
        device = next(learner.parameters()).device
    was_training = learner.training
    learner.to(device).eval()
    try:
        return evaluate_episodes(learner.classify, sampler, episodes, device=device,
                                 progress=progress)
    finally:
        learner.train(was_training)


def fit(
    learner: nn.Module,
    train_sampler: TaskSource,
    config: TrainConfig,
    *,
    val_sampler: EpisodeSampler | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool = True,
    spec: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Meta-train ``learner`` on ``config.steps`` meta-batches from ``train_sampler``.

    Args:
        learner: a :class:`~companion.protocols.Learner` (an ``nn.Module`` with
            ``meta_loss(batch) -> (loss, logs)`` and ``classify(episode)``).
        train_sampler: a :class:`~companion.protocols.TaskSource`: draws the training
            tasks, or image batches for a self-supervised learner (its generators are
            saved and restored).
        config: the run's settings.
        val_sampler: validation episodes (the same ``config.val_episodes`` each time).
        out_dir: folder for ``checkpoint.pt`` and ``metrics.json``; ``None`` saves nothing.
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (else start over).
        progress: show a progress bar (``tqdm.auto``: terminal or notebook).
        spec: plain data saved with the checkpoint; ``spec["learner"]``, the keyword
            arguments of :func:`companion.methods.build_learner`, lets
            ``python -m companion eval`` rebuild the learner. The samplers' episode shapes
            are added as ``spec["train_episodes"]`` and ``spec["val_episodes"]``.
        stop_after: stop once this many steps are done, saving a checkpoint, as if the
            run were interrupted there; a later call resumes it.

    A learner that draws its own random numbers names its generators in ``generators()``
    (as :class:`~companion.meta.reptile.Reptile` does); their states are saved and restored
    with the others. A learner with state that the gradient does not update (a MoCo queue, a
    BYOL target network) has an ``after_step(step, total_steps)`` method, called after every
    optimiser step with the steps done so far and ``config.steps``; that state must be in
    its ``state_dict`` (buffers or parameters) to be checkpointed.

    Self-supervised learners (:class:`companion.ssl.learner.SelfSupervised`) train on an
    :class:`~companion.data.batches.ImageBatchSampler`: their "meta-batch" is a batch of
    ``config.meta_batch`` unlabeled images.

    In a ``torch.distributed`` run (see the module docstring) every rank calls ``fit`` with
    the same arguments; ``config.meta_batch`` is the global batch, and only rank 0 writes
    files, shows progress and validates (the other ranks' ``history["val"]`` stays empty).

    Raises:
        TypeError: ``learner`` or ``train_sampler`` lacks a method of its protocol.
        ValueError: the checkpoint in ``out_dir`` was written with another config or spec
            (or number of ranks); in a distributed run, a global batch that the number of
            ranks does not divide, or a learner that cannot be split
            (:func:`companion.distributed.check_distributable`).
    """
    check_learner(learner)
    check_task_source(train_sampler)
    check_int("stop_after", stop_after, optional=True)
    if not isinstance(learner, nn.Module):
        raise TypeError(f"fit trains an nn.Module (its parameters and state_dict); got "
                        f"{type(learner).__name__}")
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:  # under torchrun: GPU LOCAL_RANK
        device = torch.device("cuda", torch.cuda.current_device())  # (distributed.setup)
    world, rank = distributed.world_size(), distributed.rank()
    batch_size = distributed.local_batch(config.meta_batch)  # this rank's share
    if world > 1:
        distributed.check_distributable(learner)
    progress = progress and rank == 0
    use_amp = config.amp and device.type == "cuda" and amp_enabled(learner)
    amp_dtype = getattr(torch, config.amp_dtype)
    spec = _plain({**(spec or {}), "train_episodes": _episodes(train_sampler),
                   "val_episodes": _episodes(val_sampler) if val_sampler else None})
    learner.to(device, memory_format=torch.channels_last if config.channels_last
               else torch.preserve_format)
    params = [p for p in learner.parameters() if p.requires_grad]
    optim_cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
    optimizer = optim_cls(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _scheduler(optimizer, config)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    path = Path(out_dir) / CHECKPOINT if out_dir is not None else None
    after_step = getattr(learner, "after_step", None)
    rngs = {"sampler": generators_of(train_sampler), "learner": generators_of(learner)}
    if rank > 0:  # this rank's own streams (a checkpoint, if any, overrides them below)
        for generators in rngs.values():
            for g in generators.values():
                g.manual_seed(distributed.rank_seed(g.initial_seed(), rank))
    # DDP averages the gradients over the ranks in backward; it hooks a module's forward,
    # which here is meta_loss (MetaLossModule). In one process the loss is computed directly.
    meta_loss = learner.meta_loss if world == 1 else nn.parallel.DistributedDataParallel(
        MetaLossModule(learner), device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        meta_loss = torch.compile(meta_loss)
    cuda = [torch.cuda.current_device() if device.index is None else device.index
            ] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(distributed.rank_seed(config.seed, rank))
        state: dict[str, Any] = {
            "step": 0, "history": {"train": [], "val": []}, "window": {}, "train_seconds": 0.0,
            "val_rng": _states(generators_of(val_sampler)) if val_sampler else None}
        if resume and path is not None and path.exists():
            state = load_checkpoint(path)
            _check_same_run(path, state, config, spec, rngs, world)
            rng = state["rng_ranks"][rank] if world > 1 else state["rng"]
            learner.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(rng["torch"])
            for owner, generators in rngs.items():
                _set_states(generators, rng[owner])
            if cuda:
                torch.cuda.set_rng_state(rng["cuda"], device)
        step, history, window = state["step"], state["history"], state["window"]
        last = config.steps if stop_after is None else min(stop_after, config.steps)
        bar = tqdm(total=config.steps, initial=step, desc=type(learner).__name__,
                   disable=not progress, unit="step")
        start = time.perf_counter() - state["train_seconds"]
        learner.train()
        while step < last:
            batch = to_device(train_sampler.sample_batch(batch_size), device,
                              channels_last=config.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                loss, logs = meta_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            if after_step is not None:  # state outside the gradient: a MoCo queue, a BYOL target
                after_step(step, config.steps)
            logs = distributed.mean_over_ranks({"loss": loss.item(), **logs})
            for key, value in logs.items():
                window.setdefault(key, []).append(float(value))
            if step % config.log_every == 0 or step == config.steps:
                history["train"].append({"step": step, **{k: sum(v) / len(v)
                                                          for k, v in window.items()}})
                window = {}
                bar.set_postfix({k: f"{v:.3f}" for k, v in history["train"][-1].items()
                                 if k in ("loss", "accuracy")})
            if val_sampler is not None and rank == 0 and (step % config.val_every == 0
                                                          or step == config.steps):
                _set_states(generators_of(val_sampler), state["val_rng"])  # the same episodes
                result = evaluate_learner(learner, val_sampler, config.val_episodes, device=device)
                history["val"].append({"step": step, "accuracy": result.accuracy,
                                       "ci95": _finite(result.ci95)})
                bar.set_description(f"{type(learner).__name__} val {100 * result.accuracy:.1f}%")
            bar.update(1)
            if path is not None and (step % config.checkpoint_every == 0 or step == last):
                rng = {"torch": torch.get_rng_state(),
                       **{owner: _states(g) for owner, g in rngs.items()},
                       "cuda": torch.cuda.get_rng_state(device) if cuda else None}
                rng_ranks = distributed.gather_objects(rng) if world > 1 else None
                state = {
                    "format": CHECKPOINT_FORMAT, "step": step, "config": asdict(config),
                    "spec": spec,
                    "model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "rng": rng, "world_size": world, "rng_ranks": rng_ranks,
                    "val_rng": state["val_rng"], "history": history, "window": window,
                    "train_seconds": time.perf_counter() - start,
                }
                if rank == 0:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _atomic_write(path, lambda f, s=state: torch.save(s, f))
        bar.close()
    result = TrainResult.from_checkpoint({**state, "step": step, "history": history,
                                          "config": asdict(config), "spec": spec,
                                          "train_seconds": time.perf_counter() - start})
    if out_dir is not None and rank == 0:
        write_metrics(out_dir, result)
    distributed.barrier()  # the files are written when fit returns, on every rank
    return result


def amp_enabled(learner: nn.Module) -> bool:
    """Whether ``fit`` runs ``learner.meta_loss`` under autocast when ``amp=True`` (on CUDA):
    unless the learner's class sets ``amp_safe = False``, as
    :class:`~companion.meta.reptile.Reptile` does (see the module docstring)."""
    return bool(getattr(learner, "amp_safe", True))


def to_device(batch: Any, device: torch.device, *, channels_last: bool = False) -> Any:
    """A training batch on ``device``: a tensor, or a dataclass of tensors (``TaskBatch``,
    ``LabelledBatch``); anything else through its own ``to(device)``.

    On CUDA each tensor is first copied to pinned (page-locked) host memory and then sent
    with ``non_blocking=True``, so the copy runs on the GPU's copy engine while the host
    goes on; on the CPU the tensors are returned as they are. ``channels_last`` stores
    every floating-point image tensor channels-innermost: ``(B, C, H, W)`` as
    ``torch.channels_last``, and a stack of them ``(T, B, C, H, W)`` so that each
    ``batch[t]`` is ``channels_last`` (the values are unchanged, only the strides).
    """
    pin = device.type == "cuda"

    def move(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        if pin and x.device.type == "cpu":
            x = x.pin_memory().to(device, non_blocking=True)
        else:
            x = x.to(device)
        if channels_last and x.is_floating_point() and x.ndim >= 4:
            lead = x.ndim - 3  # (..., C, H, W) -> (..., H, W, C) in memory
            order = (*range(lead), lead + 1, lead + 2, lead)
            x = x.permute(order).contiguous().permute(*range(lead), x.ndim - 1, lead, lead + 1)
        return x

    if isinstance(batch, torch.Tensor):
        return move(batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return type(batch)(**{f.name: move(getattr(batch, f.name))
                              for f in dataclasses.fields(batch)})
    if channels_last:
        raise TypeError(f"channels_last needs a batch that is a tensor or a dataclass of "
                        f"tensors; got {type(batch).__name__}")
    return batch.to(device)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint written by :func:`fit`, loaded safely (``weights_only=True``) onto the CPU.

    Keys: ``format`` (:data:`CHECKPOINT_FORMAT`), ``step``, ``config``
    (``asdict(TrainConfig)``), ``spec``, ``model``, ``optimizer``, ``scheduler``, ``scaler``
    (state dicts), ``rng`` (``torch`` and ``cuda``: generator states or ``None``;
    ``sampler`` and ``learner``: ``{name: state}`` of their ``generators()``), ``val_rng``,
    ``history``, ``window`` (logs of the unfinished history window), ``train_seconds``,
    ``world_size`` (ranks that trained it; absent in older checkpoints: 1) and ``rng_ranks``
    (every rank's ``rng``, in rank order, in a distributed run; else ``None``).

    Raises:
        ValueError: the file was written by an older version of ``fit``.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is a checkpoint of format {state.get('format')!r}; this "
                         f"version reads format {CHECKPOINT_FORMAT} (train it again, or "
                         "use the companion version that wrote it)")
    return state


def write_metrics(out_dir: str | os.PathLike[str], result: TrainResult,
                  evaluation: EvalResult | None = None,
                  sampler: EpisodeSampler | None = None, *,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir/metrics.json`` (atomically) and return what it holds.

    ``accuracy`` and ``ci95`` are fractions from ``evaluation`` (``None`` before one);
    ``dataset``, ``split``, ``ways``, ``shots``, ``queries`` describe the evaluation episodes
    (``sampler``), or the training episodes when there is none. ``extra`` adds or replaces
    entries (e.g. ``probe`` for a self-supervised encoder's evaluation).
    """
    episodes = _episodes(sampler) if sampler else dict(result.spec["train_episodes"])
    learner = result.spec.get("learner") or {}
    metrics = {
        "method": learner.get("method", "unknown"), **episodes,
        "accuracy": evaluation.accuracy if evaluation else None,
        "ci95": _finite(evaluation.ci95) if evaluation else None,
        "episodes": evaluation.episodes if evaluation else 0,
        "train_seconds": result.train_seconds, "steps": result.step,
        "best_val": result.best_val, "history": result.history,
        "config": result.config, "spec": result.spec, **(extra or {}),
    }
    text = json.dumps(metrics, indent=2, allow_nan=False).encode()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    _atomic_write(Path(out_dir) / METRICS_FILE, lambda f: f.write(text))
    return metrics


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    lr_scheduler = torch.optim.lr_scheduler
    if config.schedule == "step":
        return lr_scheduler.StepLR(optimizer, config.decay_every, gamma=config.decay_gamma)
    if config.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    end = 0.0 if config.schedule == "linear" else 1.0  # "none": the factor stays exactly 1
    return lr_scheduler.LinearLR(optimizer, 1.0, end, total_iters=config.steps)


def _episodes(sampler: TaskSource | EpisodeSampler | ImageBatchSampler) -> dict[str, Any]:
    """What a sampler draws: the split, and the episode shape (``None`` for image batches,
    and for a task source with no dataset of its own)."""
    dataset = getattr(sampler, "dataset", None)
    return {"dataset": getattr(dataset, "name", None), "split": getattr(dataset, "split", None),
            **{k: getattr(sampler, k, None) for k in ("ways", "shots", "queries")}}


def _states(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    return {name: g.get_state() for name, g in generators.items()}


def _set_states(generators: Mapping[str, torch.Generator],
                states: Mapping[str, torch.Tensor]) -> None:
    for name, g in generators.items():
        g.set_state(states[name])


def _check_same_run(path: Path, state: Mapping[str, Any], config: TrainConfig,
                    spec: Mapping[str, Any],
                    rngs: Mapping[str, Mapping[str, torch.Generator]], world: int) -> None:
    if state.get("world_size", 1) != world:
        raise ValueError(f"{path} was written by a run on {state.get('world_size', 1)} "
                         f"rank(s); this one has {world} (each rank's random streams are in "
                         "the checkpoint): resume with the same number of processes, or pass "
                         "resume=False (CLI: --restart)")
    for owner, generators in rngs.items():
        if set(state["rng"][owner]) != set(generators):
            raise ValueError(f"{path} saved the {owner}'s generators "
                             f"{sorted(state['rng'][owner])}, but this {owner} has "
                             f"{sorted(generators)}; pass resume=False (CLI: --restart) or "
                             "choose another output folder")
    new = asdict(config)  # a field newer than the checkpoint had its default then
    old = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **state["config"]}
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
    changed += [f"spec[{k!r}]: {state['spec'].get(k)!r} -> {spec.get(k)!r}"
                for k in sorted(set(spec) | set(state["spec"]))
                if state["spec"].get(k) != spec.get(k)]
    if changed:
        raise ValueError(f"{path} belongs to a different run ({'; '.join(changed)}); "
                         "pass resume=False (CLI: --restart) or choose another output folder")


def _plain(spec: Mapping[str, Any]) -> dict[str, Any]:
    try:  # a JSON round trip keeps plain data only (tuples become lists)
        return json.loads(json.dumps(spec, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"spec must be plain data (str, int, float, bool, None, lists and "
                         f"dicts); {err}") from err


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # one episode has no CI; JSON has no NaN


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)  # atomic: readers see the old file or the new one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
