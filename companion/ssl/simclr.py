r"""SimCLR and its NT-Xent loss (Chen, Kornblith, Norouzi & Hinton, 2020).

SimCLR learns an encoder :math:`f` by making two augmented views of the same image agree.
A batch of :math:`N` images gives :math:`2N` views; each view :math:`x` is embedded,
:math:`h = f(x)`, and projected by a small MLP, :math:`z = g(h)` (sec. 2.1). With the
cosine similarity :math:`\operatorname{sim}(u, v) = u^\top v / \lVert u\rVert \lVert v\rVert`
and a temperature :math:`\tau`, the loss of the positive pair :math:`(i, j)`, the two views
of one image, is the **NT-Xent** (normalised temperature-scaled cross-entropy, eq. 1):

.. math::

    \ell_{i,j} = -\log \frac{\exp(\operatorname{sim}(z_i, z_j)/\tau)}
        {\sum_{k=1}^{2N} \mathbb{1}_{[k \ne i]} \exp(\operatorname{sim}(z_i, z_k)/\tau)}. \tag{1}

Every one of the :math:`2N` views is an anchor once; its positive is the other view of its
image and the other :math:`2N - 2` views are its negatives. The loss is the mean of
:math:`\ell` over all :math:`2N` anchors, so :func:`nt_xent` is a cross-entropy over a
``(2N, 2N)`` similarity matrix whose diagonal (self-similarity) is masked out. When all
embeddings coincide the loss is :math:`\log(2N - 1)`: the positive is no more similar than
any negative.

The projection head :math:`g` is discarded after pre-training: the representation is
:math:`h`, which the paper finds better than :math:`z` for downstream tasks (sec. 4.2).

References:
    Chen, Kornblith, Norouzi & Hinton, *A Simple Framework for Contrastive Learning of
    Visual Representations*, ICML 2020.

Example:
    >>> z = torch.ones(2, 3)  # N = 2 images, both views identical: no signal
    >>> nt_xent(z, z, temperature=0.5)  # log(2N - 1) = log 3
    tensor(1.0986)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion import distributed
from companion.checks import check_int, check_positive
from companion.nets import BatchNorm, NormFactory, make_norm


def check_temperature(temperature: float) -> float:
    """``temperature`` if it is a positive number (the ``tau`` of eq. 1), else a ``ValueError``.

    Shared by every contrastive loss of :mod:`companion.ssl` (NT-Xent here, InfoNCE in
    :mod:`companion.ssl.moco`) and their configs.
    """
    return check_positive("temperature", temperature)


def check_views(x1: torch.Tensor, x2: torch.Tensor, name: str = "x1 and x2") -> None:
    """Raise a ``ValueError`` unless two views (images or embeddings) have the same shape.

    Row ``n`` of one view pairs with row ``n`` of the other in every two-view loss of
    :mod:`companion.ssl`, so the shapes must agree. Only shapes are read, which keeps the
    check safe under ``torch.func.vmap``.

    Args:
        x1, x2: the two views.
        name: how the message names them (``"z1 and z2"``, ``"q and k"``).
    """
    if x1.shape != x2.shape:
        raise ValueError(
            f"{name} must have the same shape; got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )


def nt_xent_logits(
    z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of eq. 1: cosine similarities of every view to every other view.

    Row ``i`` holds ``sim(z_i, z_k) / tau`` for the ``2N`` views ``z = [z1; z2]``, with
    ``-inf`` at ``k = i``; its target is the index of the other view of the same image.

    Shape:
        - z1, z2: ``(N, D)``, row ``n`` of each is a view of image ``n``
        - returns: logits ``(2N, 2N)`` and targets ``(2N,)`` int64
    """
    check_temperature(temperature)
    if z1.ndim != 2 or z1.shape[0] < 1:
        raise ValueError(f"z1 and z2 must be (N, D) with N >= 1; got {tuple(z1.shape)}")
    check_views(z1, z2, "z1 and z2")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D), unit rows: dot = cosine
    self_pair = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))  # (2N, 2N)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # i <-> i+N
    return logits, targets


def nt_xent_logits_global(
    z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nt_xent_logits` of a global batch split over the ranks of a ``torch.distributed`` run.

    With ``W`` ranks, each holding ``n`` of the global batch's ``N = W n`` images, the rows
    are this rank's ``2n`` views and the columns the ``2N`` views of every rank, gathered
    with their gradients (:func:`companion.distributed.gather_with_grad`), as SimCLR computes
    the loss on its global batch split over TPU cores (Chen et al., 2020, sec. 2, *Training
    with Large Batch Size*). The columns are in rank order, ``[z1; z2]`` of rank 0, then of
    rank 1, ...; row ``i`` has ``-inf`` at its own column and targets its other view.

    Each anchor's softmax runs over the same ``2N - 1`` other views as in one process, so
    the cross-entropy averaged over this rank's anchors, then over the ranks, is the
    one-process loss of the global batch. Since the gather's backward sums every rank's
    gradient into the rows it came from, DDP's average of the ranks' gradients is exactly
    that loss's gradient (``tests/test_distributed.py`` checks both). Without a process
    group it is :func:`nt_xent_logits`.

    Shape:
        - z1, z2: ``(n, D)``, row ``i`` of each is a view of image ``i``
        - returns: logits ``(2n, 2N)`` and targets ``(2n,)`` int64
    """
    check_temperature(temperature)
    if z1.ndim != 2 or z1.shape[0] < 1:
        raise ValueError(f"z1 and z2 must be (n, D) with n >= 1; got {tuple(z1.shape)}")
    check_views(z1, z2, "z1 and z2")
    n, device = z1.shape[0], z1.device
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2n, D), unit rows: dot = cosine
    keys = distributed.gather_with_grad(z)  # (2N, D): [z1; z2] of rank 0, of rank 1, ...
    first = 2 * n * distributed.rank()  # this rank's first column
    rows = torch.arange(2 * n, device=device)
    self_pair = torch.zeros(2 * n, keys.shape[0], dtype=torch.bool, device=device)
    self_pair[rows, first + rows] = True
    logits = (z @ keys.T / temperature).masked_fill(self_pair, float("-inf"))  # (2n, 2N)
    return logits, first + (rows + n) % (2 * n)  # the other view: i <-> i + n


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, *, temperature: float = 0.5) -> torch.Tensor:
    """The NT-Xent loss of eq. 1, averaged over all ``2N`` anchors.

    Invariant to the scale of each embedding (cosine similarity) and symmetric in the views.

    Args:
        z1: projections of the first views.
        z2: projections of the second views (row ``n`` pairs with row ``n`` of ``z1``).
        temperature: ``tau``; must be positive.

    Shape:
        - z1, z2: ``(N, D)``
        - returns: a scalar
    """
    logits, targets = nt_xent_logits(z1, z2, temperature=temperature)
    return F.cross_entropy(logits, targets)


def projection_head(
    in_dim: int,
    hidden: int,
    out_dim: int,
    *,
    layers: int = 2,
    norm: str | NormFactory | None = "batch",
    out_norm: bool = False,
) -> nn.Sequential:
    """An MLP head: ``layers - 1`` blocks of ``Linear -> norm -> ReLU``, then a ``Linear``.

    The default is SimCLR's ``g`` (sec. 2.1, with batch norm as in the authors' code).
    The other SSL methods build their heads with it: MoCo v2 with ``norm=None``, SimSiam
    and Barlow Twins with ``layers=3``, SimSiam with ``out_norm=True`` (a batch norm
    without affine parameters on the output).

    Args:
        in_dim: the encoder's feature dimension.
        hidden: width of every hidden layer.
        out_dim: width of the output.
        layers: number of linear layers, at least 1.
        norm: a name in :data:`companion.nets.NORMS`, a factory, or ``None``.
        out_norm: end with :class:`~companion.nets.BatchNorm` without affine parameters.

    Shape:
        - input: ``(B, in_dim)``; returns: ``(B, out_dim)``
    """
    for name, value in (
        ("in_dim", in_dim),
        ("hidden", hidden),
        ("out_dim", out_dim),
        ("layers", layers),
    ):
        check_int(name, value)
    widths = [in_dim] + [hidden] * (layers - 1)
    blocks: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        blocks += [nn.Linear(w_in, w_out), make_norm(norm, w_out), nn.ReLU()]
    blocks.append(nn.Linear(widths[-1], out_dim))
    if out_norm:
        blocks.append(BatchNorm(out_dim, affine=False))
    return nn.Sequential(*blocks)


@dataclass(frozen=True)
class SimCLRConfig:
    """Hyper-parameters of SimCLR; defaults are the paper's.

    Deviation: the head is ``Linear -> BN -> ReLU -> Linear``. The paper writes
    ``W2 relu(W1 h)`` (sec. 2.1); the authors' code batch-normalises every layer, output
    included; we keep batch norm on the hidden layer only.
    """

    temperature: float = 0.5  # best on CIFAR-10 (App. B.9); the ImageNet runs use 0.1
    hidden_dim: int = 2048  # hidden width of g: ResNet-50's feature dimension (sec. 2.1)
    out_dim: int = 128  # output of g (sec. 4.2: the dimension barely matters)

    def __post_init__(self) -> None:
        check_temperature(self.temperature)


class SimCLR(nn.Module):
    """SimCLR: an encoder ``f``, a projection head ``g`` and the NT-Xent loss.

    There is no state besides the parameters: :meth:`after_step` does nothing.

    Args:
        encoder: ``f``, any module mapping images ``(B, C, H, W)`` to ``(B, feature_dim)``.
        feature_dim: the encoder's output dimension ``D``.
        config: the method's hyper-parameters (:class:`SimCLRConfig`).

    Example:
        >>> model = SimCLR(nn.Flatten(), feature_dim=4, config=SimCLRConfig(hidden_dim=8))
        >>> loss, logs = model.loss(torch.rand(6, 1, 2, 2), torch.rand(6, 1, 2, 2))
        >>> sorted(logs)
        ['accuracy', 'loss']
    """

    views = 2  # loss(x1, x2): two augmented views of each image

    def __init__(
        self, encoder: nn.Module, feature_dim: int, config: SimCLRConfig = SimCLRConfig()
    ) -> None:
        super().__init__()
        if not isinstance(config, SimCLRConfig):
            raise TypeError(f"config must be a SimCLRConfig; got {type(config).__name__}")
        self.encoder = encoder
        self.projector = projection_head(feature_dim, config.hidden_dim, config.out_dim)
        self.config = config

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NT-Xent of the projections of two views of a batch: a pure function.

        It reads the parameters and the inputs only, so it runs under
        ``torch.func.functional_call`` and ``torch.func.vmap`` (see :mod:`companion.ssl`).
        ``accuracy`` is the fraction of the ``2N`` anchors whose most similar other view is
        their positive (1/(2N-1) by chance). In a ``torch.distributed`` run the negatives
        are every rank's views (:func:`nt_xent_logits_global`; not under ``vmap`` there).

        Shape:
            - x1, x2: ``(B, C, H, W)``, two augmentations of the same ``B`` images
            - returns: a scalar loss and ``{"loss", "accuracy"}``, detached 0-dim tensors
        """
        check_views(x1, x2)
        z1 = self.projector(self.encoder(x1))  # (B, out_dim)
        z2 = self.projector(self.encoder(x2))
        tau = self.config.temperature
        if distributed.is_initialized():  # the global batch's views are the negatives
            logits, targets = nt_xent_logits_global(z1, z2, temperature=tau)
        else:
            logits, targets = nt_xent_logits(z1, z2, temperature=tau)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(1) == targets).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy.detach()}

    def loss(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, :meth:`forward` (SimCLR draws nothing and records nothing)."""
        return self(x1, x2)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after the optimiser step (SimCLR keeps no extra state)."""
