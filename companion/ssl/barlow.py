r"""Barlow Twins: redundancy reduction (Zbontar, Jing, Misra, LeCun & Deny, 2021).

Barlow Twins makes the **cross-correlation matrix** of the embeddings of two views close to
the identity. Each embedding dimension is standardised over the batch, :math:`\hat z =
(z - \mu_B) / \sigma_B`, and with batch size :math:`N`

.. math:: \mathcal{C}_{ij} = \frac{1}{N} \sum_{b=1}^{N} \hat z^A_{b,i} \hat z^B_{b,j}

is the correlation of dimension :math:`i` of view A with dimension :math:`j` of view B,
in :math:`[-1, 1]`. The loss (eq. 1) has an **invariance** term, which makes each
dimension agree across views, and a **redundancy-reduction** term, which decorrelates
different dimensions and so rules out collapse without negatives or an asymmetry:

.. math:: \mathcal{L}_{BT} = \sum_i (1 - \mathcal{C}_{ii})^2
    + \lambda \sum_i \sum_{j \ne i} \mathcal{C}_{ij}^2. \tag{1}

It is 0 exactly when the two views give identical, pairwise-decorrelated dimensions.

**Standardisation.** As in the authors' code (a ``BatchNorm1d`` without affine
parameters), :math:`\sigma_B` is the *biased* standard deviation (divide by :math:`N`) and
``eps`` (1e-5) is added to the variance, so a constant dimension gives 0 instead of a
division by zero; ``eps=0`` is plain standardisation.

References:
    Zbontar, Jing, Misra, LeCun & Deny, *Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction*, ICML 2021.

Example:
    >>> z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    >>> barlow_twins_loss(z, z, eps=0.0)  # standardised, orthogonal columns: C = I
    tensor(0.)
    >>> barlow_twins_loss(z, z[:, [1, 0]], eps=0.0)  # swapped dimensions: C = [[0, 1], [1, 0]]
    tensor(2.0100)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from companion.ssl.simclr import check_views, projection_head


def _check_non_negative(**values: float) -> None:
    """``ValueError`` naming the first of ``values`` that is not a real number ``>= 0``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{name} must be a non-negative number; got {value!r}")


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(z - mean) / sqrt(var + eps)`` per dimension over the batch, biased variance.

    Shape:
        - z: ``(N, D)``; returns: ``(N, D)``
    """
    mean = z.mean(dim=0, keepdim=True)  # (1, D)
    var = z.var(dim=0, unbiased=False, keepdim=True)  # (1, D), divide by N
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """The matrix ``C`` of eq. 1: ``standardise(z1).T @ standardise(z2) / N``.

    Shape:
        - z1, z2: ``(N, D)``; returns: ``(D, D)``
    """
    return standardise(z1, eps).T @ standardise(z2, eps) / z1.shape[0]  # einsum("bi,bj->ij")


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, *, lambd: float = 5e-3, eps: float = 1e-5
) -> torch.Tensor:
    """Eq. 1: ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2``.

    Args:
        z1, z2: projections of the two views (row ``n`` of each from image ``n``).
        lambd: ``lambda``, the weight of the redundancy-reduction term.
        eps: added to the batch variance before standardising.

    Shape:
        - z1, z2: ``(N, D)`` with ``N >= 2``
        - returns: a scalar
    """
    if z1.ndim != 2 or z1.shape[0] < 2:
        raise ValueError(f"z1 and z2 must be (N, D) with N >= 2; got {tuple(z1.shape)}")
    check_views(z1, z2, "z1 and z2")
    _check_non_negative(lambd=lambd, eps=eps)
    c = cross_correlation(z1, z2, eps)  # (D, D)
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


@dataclass(frozen=True)
class BarlowTwinsConfig:
    """Hyper-parameters of Barlow Twins; defaults are the paper's implementation details."""

    lambd: float = 5e-3  # lambda of eq. 1
    proj_dim: int = 8192  # projector: three linear layers of 8192 units, BN + ReLU after two
    eps: float = 1e-5  # BatchNorm1d's default in the authors' code

    def __post_init__(self) -> None:
        _check_non_negative(lambd=self.lambd, eps=self.eps)


class BarlowTwins(nn.Module):
    """Barlow Twins: one encoder and projector for both views, and eq. 1.

    There is no state besides the parameters: :meth:`after_step` does nothing.

    Args:
        encoder: images ``(B, C, H, W)`` -> ``(B, feature_dim)``.
        feature_dim: the encoder's output dimension ``D``.
        config: the method's hyper-parameters (:class:`BarlowTwinsConfig`).
    """

    views = 2  # loss(x1, x2): two augmented views of each image

    def __init__(
        self, encoder: nn.Module, feature_dim: int, config: BarlowTwinsConfig = BarlowTwinsConfig()
    ) -> None:
        super().__init__()
        if not isinstance(config, BarlowTwinsConfig):
            raise TypeError(f"config must be a BarlowTwinsConfig; got {type(config).__name__}")
        self.config = config
        self.encoder = encoder
        self.projector = projection_head(feature_dim, config.proj_dim, config.proj_dim, layers=3)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 1 on the projections of two views.

        A pure function of the parameters and the inputs, safe under
        ``torch.func.functional_call`` and ``vmap``.

        Shape:
            - x1, x2: ``(B, C, H, W)``, two augmentations of the same ``B`` images
            - returns: a scalar loss and ``{"loss"}``, a detached 0-dim tensor
        """
        check_views(x1, x2)
        z1 = self.projector(self.encoder(x1))  # (B, proj_dim)
        z2 = self.projector(self.encoder(x2))
        loss = barlow_twins_loss(z1, z2, lambd=self.config.lambd, eps=self.config.eps)
        return loss, {"loss": loss.detach()}

    def loss(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, :meth:`forward` (Barlow Twins draws nothing, records nothing)."""
        return self(x1, x2)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after the optimiser step (Barlow Twins keeps no extra state)."""
