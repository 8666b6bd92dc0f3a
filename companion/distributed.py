r"""Data-parallel training with ``torch.distributed``: the helpers that ``fit`` needs.

Data parallelism splits every *global* batch of ``B`` tasks (or images) over ``W``
processes, the **ranks**: each draws and processes ``B / W`` of them, and the gradients are
averaged over the ranks before every optimiser step, so all ranks keep the same
parameters. ``fit`` does this with PyTorch's own engine,
``torch.nn.parallel.DistributedDataParallel`` (DDP), whose all-reduce runs during
``backward``; this module only reads the launcher's environment and gathers tensors.

Launch with ``torchrun``, which starts ``W`` copies of a program and tells each its place
through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``)::

    torchrun --nproc_per_node=2 -m companion train simclr --dataset glyphs --device cpu

:func:`setup` joins the process group (``gloo`` on a CPU, ``nccl`` on CUDA). Without a
process group every helper here is the single-process identity (rank 0 of 1), so code that
calls them runs unchanged in one process.

**Randomness per rank.** Every rank draws its share of the global batch from its own
streams: ``fit`` reseeds each generator of the sampler and of the learner on rank ``r`` with
:func:`rank_seed` ``(seed, r)`` (rank 0 keeps its seeds, so a one-process run is
unchanged). A global batch is then the concatenation, in rank order, of what ``W``
single-process samplers seeded ``rank_seed(seed, 0..W-1)`` draw; the tests build the
one-process reference that way. (The alternative, every rank drawing the whole global batch
from one shared stream and keeping its slice, would make each rank draw ``W`` times the
data, and would not extend to a learner's own randomness, such as the augmentations a
self-supervised learner draws inside ``meta_loss`` for its slice.) ``fit`` reseeds at every
call, from each generator's ``initial_seed()``: to continue a distributed run, resume from
its checkpoint (``out_dir``) rather than calling ``fit`` again with the same, already
advanced, objects.

**What differs from one process.** Anything that mixes the examples of a batch sees only
the rank's share of it:

- batch normalisation with batch statistics (:class:`companion.nets.BatchNorm`, the
  default of Conv-4 and of the SSL projection heads) normalises over the rank's ``B / W``
  examples. ``torch.nn.SyncBatchNorm`` would share the statistics, but it only replaces
  ``nn.BatchNorm*`` layers and, in PyTorch 2.13, raises a ``ValueError`` on CPU tensors in
  training (it supports CUDA, XPU and HPU). A ProtoNet's meta-batch, whose tasks share one
  forward (and so one BN), and SimCLR's encoder and head see smaller batches; MAML's
  tasks run one at a time, so its BN is unchanged;
- losses over the whole batch other than NT-Xent (Barlow Twins' cross-correlation, VICReg
  style statistics) use the rank's share;
- SimCLR's NT-Xent gathers every rank's projections (:func:`gather_with_grad`), so its
  negatives are the global batch's, as in the paper (Chen et al., 2020, sec. 2, *Training
  with Large Batch Size*, where the global batch is split over TPU cores).

**Queues of negatives** (MoCo, PsCo: :class:`companion.ssl.moco.FeatureQueue`) enqueue
the keys of the *global* batch: :meth:`~companion.ssl.moco.FeatureQueue.enqueue` gathers
every rank's keys first (:func:`gather`, in rank order), as MoCo's official code does
(``facebookresearch/moco``, ``builder.py``, ``_dequeue_and_enqueue`` with
``concat_all_gather``), so every rank's queue is the one-process queue. PsCo's Sinkhorn
assignment and its N-way task also run over the gathered keys, so each rank's queries meet
the global batch's pseudo-classes (:class:`companion.tasks.psco.PsCo`). MoCo's "shuffling
BN" (He et al., sec. 3.3) is not done: the key encoder's BN, like every BN here, sees the
rank's share.

**Refused** (:func:`check_distributable`): MAXL with generated labels and an auxiliary
loss whose weight is meta-learned (``--aux-weight meta``). Both take a look-ahead step on
the whole batch and differentiate through it; a step on one rank's share is another step,
and no average over ranks recovers the global one.

References:
    Li et al., *PyTorch Distributed: Experiences on Accelerating Data Parallel Training*,
    VLDB 2020 (DDP's design).
    Chen, Kornblith, Norouzi & Hinton, *A Simple Framework for Contrastive Learning of
    Visual Representations*, ICML 2020, sec. 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

RANK_SEED_STRIDE = 1_000_003  # a prime, so that nearby seeds of nearby ranks rarely meet


def is_initialized() -> bool:
    """Whether this process belongs to a ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank, ``0`` without a process group."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of ranks ``W``, ``1`` without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one that writes files and shows progress bars."""
    return rank() == 0


def setup(device: str = "auto") -> str:
    """Join the process group ``torchrun`` describes, if any; return this rank's device.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With ``WORLD_SIZE`` unset or 1 it
    does nothing and returns ``device`` (one process). Otherwise it initialises the group
    from the environment (``env://``): ``nccl`` when the device is CUDA, ``gloo`` on a CPU;
    on CUDA each rank takes GPU ``LOCAL_RANK``.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (a numbered GPU such as ``"cuda:1"``
            is refused with several ranks: each rank takes its own).

    Returns:
        the device name this rank should train on (``"cuda:LOCAL_RANK"`` on CUDA, which is
        also made the current CUDA device, so ``"cuda"`` and ``"auto"`` mean it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_initialized():
        return device if world <= 1 else _rank_device(device)
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"WORLD_SIZE is {world} but {name} is not set; launch with "
                             "torchrun (e.g. torchrun --nproc_per_node=2 -m companion ...)")
    device = _rank_device(device)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def _rank_device(device: str) -> str:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if device != "cuda":
            raise ValueError(f"--device {device} names one GPU, but each of the "
                             f"{os.environ.get('WORLD_SIZE')} ranks takes GPU LOCAL_RANK; "
                             "give --device cuda or auto")
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def teardown() -> None:
    """Leave the process group (if any), as a program should before it exits."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (nothing without a process group)."""
    if is_initialized():
        dist.barrier()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s copy of a stream seeded ``seed`` (``seed`` on rank 0)."""
    return seed + RANK_SEED_STRIDE * rank


def local_batch(global_batch: int, world: int | None = None) -> int:
    """Each rank's share ``B / W`` of a global batch of ``B`` tasks or images.

    Raises:
        ValueError: ``W`` does not divide ``B`` (the ranks would draw unequal shares, and
            averaging their gradients would weigh examples unequally).
    """
    world = world_size() if world is None else world
    if global_batch % world:
        allowed = ", ".join(str(world * k) for k in range(1, 4))
        raise ValueError(f"the global batch of {global_batch} does not split over {world} "
                         f"ranks; give a multiple of {world} ({allowed}, ...) as meta_batch "
                         "(CLI: --meta-batch)")
    return global_batch // world


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x``, concatenated in rank order, without gradient (MoCo's
    ``concat_all_gather``). Without a process group it returns ``x``.

    Shape:
        - x: ``(n, *)``, the same on every rank; returns: ``(W * n, *)``
    """
    if not is_initialized():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x``, concatenated in rank order, with gradients flowing back to each.

    In ``backward`` each rank receives the *sum* over ranks of the gradients of its own
    rows (every rank's loss depends on them). Without a process group it returns ``x``.
    (``torch.distributed.nn.functional.all_gather`` does the same but is deprecated in
    PyTorch 2.13 in favour of a private module, hence :class:`_GatherWithGrad`.)

    Shape:
        - x: ``(n, *)``, the same on every rank; returns: ``(W * n, *)``
    """
    return _GatherWithGrad.apply(x) if is_initialized() else x


class _GatherWithGrad(torch.autograd.Function):
    """All-gather forward; backward: sum the gradients over ranks, keep this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return gather(x)  # (W * n, *)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place
        dist.all_reduce(grad)  # sum over ranks of d loss_r / d (every gathered row)
        n = grad.shape[0] // world_size()
        return grad[rank() * n:(rank() + 1) * n]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order (``[obj]`` in one process)."""
    if not is_initialized():
        return [obj]
    found: list[Any] = [None] * world_size()
    dist.all_gather_object(found, obj)
    return found


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """The mean over ranks of each number (every rank must pass the same keys, in order)."""
    if not is_initialized() or not values:
        return dict(values)
    total = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # NCCL reduces tensors on this rank's GPU (setup())
        total = total.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(total)
    return {k: float(v) / world_size() for k, v in zip(values, total.tolist(), strict=True)}


def check_distributable(learner: nn.Module) -> None:
    """Raise a ``ValueError`` if ``learner`` cannot be trained on several ranks.

    A module of the learner refuses by a ``not_distributable`` attribute that holds the
    reason (``None``: it can). Two do: MAXL with generated labels and an auxiliary loss
    with a meta-learned weight, whose look-ahead step on the whole batch has no per-rank
    split (:class:`companion.guided.MAXL`, :class:`companion.guided.WithAuxiliary`).
    """
    for name, module in learner.named_modules():
        reason = getattr(module, "not_distributable", None)
        if reason:
            raise ValueError(
                f"{type(module).__name__} ({name or 'the learner'}) cannot train on several "
                f"ranks: {reason}; train it in one process (drop torchrun)")
