r"""MoCo v2: momentum contrast with a queue of negatives (He et al., 2020; Chen et al., 2020).

MoCo treats contrastive learning as a dictionary look-up. A **query** :math:`q = f_q(x^q)`
should match its **key** :math:`k_+ = f_k(x^k)`, another view of the same image, and none
of :math:`K` keys :math:`k_1..k_K` of other images. With dot products of unit vectors and
a temperature :math:`\tau`, the InfoNCE loss is (He et al., eq. 1)

.. math::

    \mathcal{L}_q = -\log \frac{\exp(q \cdot k_+ / \tau)}
        {\exp(q \cdot k_+ / \tau) + \sum_{i=1}^{K} \exp(q \cdot k_i / \tau)}, \tag{1}

a :math:`(K+1)`-way cross-entropy whose label is 0 when the positive logit comes first
(Algorithm 1): :func:`infonce_with_queue`. Two pieces of **state** make it work, and both
live in plain sight here:

* The negatives are a **queue** of the keys of recent batches (sec. 3.2): the current
  batch's keys are enqueued and the oldest are dropped, so the dictionary is large
  (:math:`K = 65536`) and decoupled from the batch size. :class:`FeatureQueue` is that ring
  buffer, a module buffer so that it is saved in checkpoints.
* The key encoder :math:`f_k` is a **momentum** copy of the query encoder, never trained
  by back-propagation (eq. 2, :func:`ema_update`), so the keys in the queue change slowly
  and stay comparable:

.. math:: \theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q. \tag{2}

MoCo v2 (Chen et al., 2020, "Improved baselines") adds SimCLR's MLP head (2048-d hidden
layer with ReLU, no batch norm), stronger augmentation and :math:`\tau = 0.2`.

**The training-loop contract.** :meth:`MoCo.loss` computes the loss and mutates nothing
but a record of this batch's keys (:attr:`MoCo.last_keys`); after ``optimizer.step()`` the
loop calls :meth:`MoCo.after_step`, which performs eq. 2 and enqueues those keys. In the
paper's order (Algorithm 1): loss, backward, step, momentum update, enqueue.

**Deviations.** The queue holds 4096 keys by default rather than 65536, because an
Omniglot-sized dataset has a few thousand images per split and a queue longer than the
dataset would hold stale keys of the very images being queried. There is no "shuffling
BN" (sec. 3.3): it needs several devices.

References:
    He, Fan, Wu, Xie & Girshick, *Momentum Contrast for Unsupervised Visual Representation
    Learning*, CVPR 2020.
    Chen, Fan, Girshick & He, *Improved Baselines with Momentum Contrastive Learning*,
    arXiv:2003.04297, 2020.

Example:
    >>> queue = FeatureQueue(dim=2, size=3)  # starts with 3 random unit vectors
    >>> queue.enqueue(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # slots 0, 1
    >>> queue.enqueue(torch.tensor([[2.0, 2.0], [3.0, 3.0]]))  # slots 2, 0: wraps around
    >>> queue.features
    tensor([[3., 3.],
            [0., 1.],
            [2., 2.]])
    >>> int(queue.ptr)  # the next slot to write, holding the oldest key
    1
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion import distributed
from companion.checks import check_int
from companion.ssl.simclr import check_temperature, check_views, projection_head


def infonce_with_queue(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, *, temperature: float = 0.2
) -> torch.Tensor:
    """InfoNCE of eq. 1: each query against its key (label 0) and every queued negative.

    ``q``, ``k`` and the queue are L2-normalised here. The keys and the queue are constants:
    no gradient flows into them (Algorithm 1's ``k.detach()``).

    Args:
        q: the queries, ``f_q`` of one view.
        k: their positive keys, ``f_k`` of the other view (row ``n`` pairs with row ``n``).
        queue: the negative keys.
        temperature: ``tau``; must be positive.

    Shape:
        - q, k: ``(N, C)``; queue: ``(K, C)``
        - returns: a scalar, the mean of eq. 1 over the ``N`` queries
    """
    check_temperature(temperature)
    if q.ndim != 2 or queue.ndim != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(
            f"expected q (N, C), k (N, C) and queue (K, C); got {tuple(q.shape)}, "
            f"{tuple(k.shape)} and {tuple(queue.shape)}"
        )
    check_views(q, k, "q and k")
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    queue = F.normalize(queue.detach(), dim=1)
    l_pos = (q * k).sum(1, keepdim=True)  # (N, 1): einsum("nc,nc->n")
    l_neg = q @ queue.T  # (N, K): einsum("nc,kc->nk")
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)
    labels = torch.zeros(len(q), dtype=torch.long, device=q.device)  # the positive is column 0
    return F.cross_entropy(logits, labels)


class FeatureQueue(nn.Module):
    """A FIFO ring buffer of ``size`` feature vectors: MoCo's dictionary of negatives.

    Starts as random unit vectors, as in the authors' code, so that the first batches have
    negatives too; :meth:`enqueue` overwrites the oldest rows, wrapping around. The rows of
    :attr:`features` are in ring order (slot ``ptr`` is the oldest), which does not matter
    to the loss. Both ``features`` and ``ptr`` are buffers, so they move with ``.to()`` and
    are saved in ``state_dict()``.

    Args:
        dim: dimension ``C`` of one feature.
        size: number of features ``K`` kept.
        generator: draws the initial vectors (``None``: PyTorch's default generator).

    Shape:
        - features: ``(K, C)``
    """

    features: torch.Tensor
    ptr: torch.Tensor

    def __init__(self, dim: int, size: int, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_int("dim", dim)
        check_int("size", size)
        features = F.normalize(torch.randn(size, dim, generator=generator), dim=1)  # (K, C)
        self.register_buffer("features", features)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))  # next slot to write

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` into the oldest slots (FIFO), wrapping around the end.

        In a ``torch.distributed`` run the keys of every rank are gathered first, in rank
        order (:func:`companion.distributed.gather`, as MoCo's ``concat_all_gather``), so
        each rank writes the global batch's keys and the queues stay identical.

        Shape:
            - keys: ``(n, C)`` on each rank, with ``W n <= K`` for ``W`` ranks
        """
        size, dim = self.features.shape
        if keys.ndim != 2 or keys.shape[1] != dim:
            raise ValueError(f"keys must be (n, {dim}); got {tuple(keys.shape)}")
        keys = distributed.gather(keys)  # (W n, C); the same keys in one process
        if keys.shape[0] > size:
            raise ValueError(
                f"cannot enqueue {keys.shape[0]} keys (over all ranks) into a queue of "
                f"{size} (the queue size); it must hold at least one global batch"
            )
        slots = (self.ptr + torch.arange(len(keys), device=self.ptr.device)) % size  # (n,)
        self.features[slots] = keys.detach().to(self.features)
        self.ptr.copy_((self.ptr + len(keys)) % size)

    def extra_repr(self) -> str:
        return f"dim={self.features.shape[1]}, size={self.features.shape[0]}"


def check_momentum(momentum: float) -> float:
    """``momentum`` if it is a number in ``[0, 1]`` (an EMA decay, ``m`` or ``tau``), else an error.

    Raises ``TypeError`` for a non-number (``bool`` included), ``ValueError`` outside
    ``[0, 1]``.
    """
    if isinstance(momentum, bool) or not isinstance(momentum, int | float):
        raise TypeError(f"momentum must be a number in [0, 1]; got {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum!r}")
    return momentum


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Eq. 2 in place: ``target = m * target + (1 - m) * online`` for every parameter.

    Buffers (e.g. batch-norm running statistics) are copied from ``online``. The two
    modules must have the same structure (``target`` is usually a ``deepcopy``).

    Args:
        target: the momentum network, updated in place.
        online: the network trained by back-propagation; not modified.
        momentum: ``m`` in ``[0, 1]``; 1 freezes the target, 0 copies the online network.
    """
    check_momentum(momentum)
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    t_buffers, o_buffers = dict(target.named_buffers()), dict(online.named_buffers())
    if t_params.keys() != o_params.keys() or t_buffers.keys() != o_buffers.keys():
        raise ValueError(
            "target and online must have the same parameters and buffers; got "
            f"{sorted(t_params)} + {sorted(t_buffers)} and "
            f"{sorted(o_params)} + {sorted(o_buffers)}"
        )
    for name, theta_k in t_params.items():
        theta_k.mul_(momentum).add_(o_params[name], alpha=1.0 - momentum)
    for name, buffer in t_buffers.items():
        buffer.copy_(o_buffers[name])


@dataclass(frozen=True)
class MoCoConfig:
    """Hyper-parameters of MoCo v2; defaults are the papers' except the queue size.

    Deviation: ``queue_size`` is 4096, not 65536 (see the module docstring).
    """

    queue_size: int = 4096  # K; 65536 in the papers (He et al., sec. 4.1)
    momentum: float = 0.999  # m of eq. 2 (He et al., sec. 4.1)
    temperature: float = 0.2  # tau; 0.07 in MoCo v1, 0.2 in MoCo v2
    hidden_dim: int = 2048  # MoCo v2's MLP head: 2048-d hidden layer with ReLU
    out_dim: int = 128  # feature dimension C of q, k and the queue
    symmetric: bool = False  # also contrast q(x2) with k(x1) and average; not in the papers

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        check_momentum(self.momentum)


class MoCo(nn.Module):
    """MoCo v2: query encoder and head trained by back-propagation, key copies by eq. 2.

    Args:
        encoder: the query encoder's backbone, images ``(B, C, H, W)`` -> ``(B, feature_dim)``;
            this is the representation kept after pre-training.
        feature_dim: the encoder's output dimension ``D``.
        config: the method's hyper-parameters (:class:`MoCoConfig`).
        generator: draws the queue's initial random keys (see :class:`FeatureQueue`).

    Example:
        >>> model = MoCo(nn.Flatten(), 4, MoCoConfig(queue_size=8, hidden_dim=8, out_dim=2),
        ...              generator=torch.Generator().manual_seed(0))
        >>> loss, logs = model.loss(torch.rand(4, 1, 2, 2), torch.rand(4, 1, 2, 2))
        >>> loss.backward()  # then optimizer.step(), then:
        >>> model.after_step(1, 100)  # after step 1 of 100: eq. 2, then enqueue the 4 keys
        >>> int(model.queue.ptr)
        4
    """

    views = 2  # loss(x1, x2): two augmented views of each image

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        config: MoCoConfig = MoCoConfig(),
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, MoCoConfig):
            raise TypeError(f"config must be a MoCoConfig; got {type(config).__name__}")
        self.config = config
        self.encoder = encoder  # f_q's backbone
        self.projector = projection_head(feature_dim, config.hidden_dim, config.out_dim, norm=None)
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)  # f_k, eq. 2 only
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.queue = FeatureQueue(config.out_dim, config.queue_size, generator=generator)
        self.last_keys: torch.Tensor | None = None  # keys of the last loss(), for after_step

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        """Unit keys ``k = f_k(x)`` from the momentum encoder, without gradient, ``(B, C)``."""
        with torch.no_grad():
            return F.normalize(self.key_projector(self.key_encoder(x)), dim=1)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Eq. 1 for queries from ``x1`` and keys from ``x2`` (and the reverse if symmetric).

        A pure function of the parameters, the buffers (the queue) and the inputs, safe
        under ``torch.func.functional_call`` and ``vmap``: it changes nothing and returns
        this batch's keys, the ones :meth:`after_step` will enqueue.

        Shape:
            - x1, x2: ``(B, C, H, W)``, two augmentations of the same ``B`` images
            - returns: a scalar loss, ``{"loss"}`` as a detached 0-dim tensor, and the
              keys ``(B, out_dim)`` (``(2B, out_dim)`` if symmetric)
        """
        check_views(x1, x2)
        tau, queue = self.config.temperature, self.queue.features
        q1 = self.projector(self.encoder(x1))  # (B, out_dim)
        k2 = self.keys(x2)
        loss = infonce_with_queue(q1, k2, queue, temperature=tau)
        keys = k2
        if self.config.symmetric:
            q2 = self.projector(self.encoder(x2))
            k1 = self.keys(x1)
            loss = (loss + infonce_with_queue(q2, k1, queue, temperature=tau)) / 2
            keys = torch.cat([k2, k1])
        return loss, {"loss": loss.detach()}, keys

    def loss(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward`, recording its keys in :attr:`last_keys` for :meth:`after_step`.

        Changes neither the queue nor the key encoder.

        Shape:
            - x1, x2: ``(B, C, H, W)``; returns: a scalar loss and ``{"loss"}``
        """
        loss, logs, self.last_keys = self(x1, x2)
        return loss, logs

    def after_step(self, step: int, total_steps: int) -> None:
        """Call after ``optimizer.step()``: eq. 2 on the key encoder, then enqueue the keys.

        MoCo's momentum ``m`` is constant (He et al., sec. 3.2 and 4.1), so ``step`` and
        ``total_steps`` (the training loop's count, see :mod:`companion.protocols`) are not
        used. Raises ``RuntimeError`` if no :meth:`loss` was computed since the last call.
        """
        if self.last_keys is None:
            raise RuntimeError(
                "MoCo.after_step() needs the keys of a loss() call since the "
                "last after_step(); got none (call loss, backward, step first)"
            )
        ema_update(self.key_encoder, self.encoder, self.config.momentum)
        ema_update(self.key_projector, self.projector, self.config.momentum)
        self.queue.enqueue(self.last_keys)
        self.last_keys = None
