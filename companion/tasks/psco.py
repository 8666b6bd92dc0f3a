r"""PsCo: few-shot tasks pseudo-labelled online from a momentum queue (Jang, Lee & Shin, 2023).

*Unsupervised Meta-Learning via Few-shot Pseudo-supervised Contrastive Learning* (ICLR
2023). UMTRA builds a task from one image per class; CACTUs fixes its pseudo-classes once.
PsCo builds a **fresh N-way K-shot task at every step** from the batch and a MoCo queue
(chapter 5): the ``N`` images of the batch are the task's ``N`` classes, and the shots of
class ``i`` are the ``K`` queued keys that a balanced assignment gives to image ``i``.

For a batch with two views, the online network gives queries
:math:`q_i = h(g(f(x^1_i)))` (backbone, projector, predictor) and the momentum network
keys :math:`z_i = g'(f'(x^2_i))`, all unit vectors. With the queue
:math:`\mathcal M = \{\kappa_1..\kappa_{|\mathcal M|}\}` of past keys (the paper's
:math:`\mathcal Q`; this book keeps that letter for query sets):

1. **Pseudo-labels.** :math:`A = \operatorname{Sinkhorn}(z \mathcal M^\top)`, an
   ``(N, |M|)`` soft assignment whose rows and columns are balanced (SwAV's Sinkhorn-Knopp
   with :math:`\varepsilon = 0.05`, 3 iterations, :func:`sinkhorn`), so that no queue
   entry is every image's neighbour.
2. **The task.** The shots of class ``i`` are the ``K`` keys :math:`\kappa` with the largest
   :math:`A_{i\cdot}` (:func:`pseudo_shots`); its query is :math:`q_i`.
3. **The loss** is a supervised-contrastive loss on that task (temperature :math:`\tau'`),
   every query against all ``N K`` shots,

   .. math::

       \mathcal L_\text{PsCo} = \frac1N \sum_i \Big[\log \sum_{j,k} e^{q_i \cdot s_{jk} / \tau'}
           - \frac1K \sum_k q_i \cdot s_{ik} / \tau'\Big],

   plus MoCo's InfoNCE of :math:`q_i` against its key :math:`z_i` and the queue
   (temperature :math:`\tau`); the keys are then enqueued and the momentum network moves
   by an EMA, exactly as in MoCo.

**On several ranks** (``torchrun``, :mod:`companion.distributed`) the task spans the
*global* batch, as in one process: each rank gathers every rank's keys (without gradient),
runs the Sinkhorn over all of them, and scores its own queries against all ``N K`` shots
(``supcon_task_loss(..., first=rank * n)``); the queue enqueues the gathered keys.

It is meta-learning without labels in the strict sense: each step is an N-way K-shot
episode whose support comes from a memory, not a fixed clustering.

**Settings.** The official code's Omniglot run (alinlab/PsCo): ``K = 1``, batch 256,
queue 16,384, momentum 0.99, :math:`\tau = 0.2`, :math:`\tau' = 1`, projector and
predictor MLPs with 4,096 hidden units and 256 outputs. Deviations: smaller heads for a
Conv-4 of 64 features (as for every method of chapter 5, :data:`companion.methods.SSL_HEADS`),
a queue of 4,096 keys (the queue of a 5-minute run must not hold keys of the very images
being queried, as for MoCo here), and the few-shot probe of the other self-supervised
methods (prototypes of the backbone's features) instead of the paper's projector and
predictor features.

Example:
    >>> scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0]])  # 2 keys, 3 queued
    >>> pseudo_shots(scores, shots=1).tolist()  # balanced: image 1 does not also get entry 0
    [[0], [1]]
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion import distributed
from companion.checks import check_int, check_positive
from companion.ssl.moco import FeatureQueue, check_momentum, ema_update, infonce_with_queue
from companion.ssl.simclr import check_temperature, check_views, projection_head


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, *, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """A balanced soft assignment of ``B`` rows to ``M`` columns (Sinkhorn-Knopp, as in SwAV).

    Starts from :math:`\\exp(\\text{scores} / \\varepsilon)` and alternately rescales the
    columns to equal mass and the rows to equal mass. Returned rows sum to 1.

    Shape:
        - scores: ``(B, M)``; returns ``(B, M)``
    """
    check_positive("epsilon", epsilon)
    check_int("iterations", iterations)
    p = torch.exp((scores - scores.max()) / epsilon).double()  # the shift cancels out
    p = p / p.sum()
    b, m = p.shape
    for _ in range(iterations):
        p = p / p.sum(0, keepdim=True) / m  # every column (queue entry) gets mass 1/M
        p = p / p.sum(1, keepdim=True) / b  # every row (image) gets mass 1/B
    return (p * b).to(scores.dtype)


def pseudo_shots(scores: torch.Tensor, shots: int, **sinkhorn_kwargs: float) -> torch.Tensor:
    """Indices of the ``K`` queue entries assigned to each row by :func:`sinkhorn`.

    Shape:
        - scores: ``(B, M)`` similarities; returns ``(B, K)`` int64
    """
    return sinkhorn(scores, **sinkhorn_kwargs).topk(shots, dim=1).indices


def supcon_task_loss(q: torch.Tensor, shots: torch.Tensor, *, temperature: float,
                     first: int = 0) -> torch.Tensor:
    """The PsCo loss: each query against the ``N K`` shots of an N-way K-shot task.

    Query ``i`` belongs to class ``first + i``: all ``N`` queries when ``first = 0`` and
    ``n = N``, or one rank's share of them in a distributed run.

    Shape:
        - q: ``(n, D)`` unit queries; shots: ``(N, K, D)`` unit shots, row ``c`` class ``c``
        - returns: a scalar, the mean over the ``n`` queries
    """
    check_temperature(temperature)
    (n, _), (classes, k, _) = q.shape, shots.shape
    if not 0 <= first <= classes - n:
        raise ValueError(f"queries {first}..{first + n - 1} are not classes of a "
                         f"{classes}-way task")
    logits = q @ shots.flatten(0, 1).T / temperature  # (n, N*K)
    rows = torch.arange(n, device=q.device)
    positive = logits.view(n, classes, k)[rows, first + rows].mean(1)  # (n,)
    return (torch.logsumexp(logits, 1) - positive).mean()


@dataclass(frozen=True)
class PsCoConfig:
    """Hyper-parameters of PsCo; defaults from the official code's Omniglot run except the
    queue and the head widths (module docstring)."""

    shots: int = 1  # K, pseudo-shots per image
    queue_size: int = 4096  # M; 16384 in the official Omniglot run
    momentum: float = 0.99  # EMA of the key network
    temperature: float = 0.2  # tau of the MoCo term
    task_temperature: float = 1.0  # tau' of the few-shot term
    hidden_dim: int = 512  # projector and predictor hidden width; 4096 in the paper
    out_dim: int = 128  # 256 in the paper
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3

    def __post_init__(self) -> None:
        check_int("shots", self.shots)
        check_int("queue_size", self.queue_size)
        check_momentum(self.momentum)
        check_temperature(self.temperature)
        check_temperature(self.task_temperature)
        if self.shots > self.queue_size:
            raise ValueError(f"shots ({self.shots}) must be at most queue_size "
                             f"({self.queue_size})")


class PsCo(nn.Module):
    """PsCo: MoCo plus a pseudo-labelled N-way K-shot task per batch.

    Args:
        encoder: the backbone ``f``, images ``(B, C, H, W)`` -> ``(B, feature_dim)``.
        feature_dim: its output dimension.
        config: :class:`PsCoConfig`.
        generator: draws the queue's initial random keys.
    """

    views = 2

    def __init__(self, encoder: nn.Module, feature_dim: int, config: PsCoConfig = PsCoConfig(),
                 *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(config, PsCoConfig):
            raise TypeError(f"config must be a PsCoConfig; got {type(config).__name__}")
        self.config = config
        self.encoder = encoder  # f
        self.projector = projection_head(feature_dim, config.hidden_dim, config.out_dim)  # g
        self.predictor = projection_head(config.out_dim, config.hidden_dim, config.out_dim)  # h
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)  # f'
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)  # g'
        self.queue = FeatureQueue(config.out_dim, config.queue_size, generator=generator)
        self.last_keys: torch.Tensor | None = None

    def forward(self, x1: torch.Tensor, x2: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """The two losses for queries from ``x1`` and keys from ``x2``; changes nothing.

        Shape:
            - x1, x2: ``(B, C, H, W)``; returns a scalar, logs (0-dim tensors) and the keys
              ``(B, out_dim)`` that :meth:`after_step` enqueues
        """
        check_views(x1, x2)
        c = self.config
        q = F.normalize(self.predictor(self.projector(self.encoder(x1))), dim=1)  # (B, d)
        with torch.no_grad():
            z = F.normalize(self.key_projector(self.key_encoder(x2)), dim=1)  # (B, d)
            queue = F.normalize(self.queue.features, dim=1)  # (M, d)
            # In a distributed run the task spans the global batch: every rank's keys,
            # the Sinkhorn over all of them, and this rank's queries as rows from `first`.
            z_all = distributed.gather(z)  # (W B, d); z in one process
            index = pseudo_shots(z_all @ queue.T, c.shots, epsilon=c.sinkhorn_epsilon,
                                 iterations=c.sinkhorn_iterations)  # (W B, K)
            shots = queue[index]  # (W B, K, d): the task's support
        task = supcon_task_loss(q, shots, temperature=c.task_temperature,
                                first=distributed.rank() * len(q))
        moco = infonce_with_queue(q, z, queue, temperature=c.temperature)
        loss = task + moco
        return loss, {"loss": loss.detach(), "task_loss": task.detach(),
                      "moco_loss": moco.detach()}, z

    def loss(self, x1: torch.Tensor, x2: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward`, keeping its keys for :meth:`after_step`."""
        loss, logs, self.last_keys = self(x1, x2)
        return loss, logs

    def after_step(self, step: int, total_steps: int) -> None:
        """After ``optimizer.step()``: the momentum network's EMA, then enqueue the keys."""
        if self.last_keys is None:
            raise RuntimeError("PsCo.after_step() needs the keys of a loss() call since the "
                               "last after_step(); got none (call loss, backward, step first)")
        ema_update(self.key_encoder, self.encoder, self.config.momentum)
        ema_update(self.key_projector, self.projector, self.config.momentum)
        self.queue.enqueue(self.last_keys)
        self.last_keys = None
