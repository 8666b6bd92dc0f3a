r"""BYOL (Grill et al., 2020) and SimSiam (Chen & He, 2021): learning without negatives.

Both train an **online** branch, encoder + projector + **predictor**, to predict the
projection of another view of the same image, and neither uses negative pairs. What stops
the trivial solution, a constant output, is an asymmetry: the target side gets no gradient.

**BYOL.** The target is a separate network whose parameters :math:`\xi` are an exponential
moving average of the online parameters :math:`\theta` (eq. 1,
:func:`~companion.ssl.moco.ema_update`): :math:`\xi \leftarrow \tau \xi + (1 - \tau)
\theta`, with :math:`\tau` from 0.996 to 1 on a cosine schedule (sec. 3.2,
:func:`byol_momentum`). With the online
prediction :math:`p` (the paper's :math:`q_\theta(z_\theta)`) and the target projection
:math:`z` of the other view, the loss is the squared distance of the unit vectors (eq. 2),

.. math:: \mathcal{L} = \lVert \bar p - \bar z \rVert_2^2
    = 2 - 2 \frac{\langle p, z \rangle}{\lVert p \rVert_2 \lVert z \rVert_2}, \tag{2}

summed over both directions, :math:`\mathcal{L}^{\text{BYOL}} = \mathcal{L} +
\tilde{\mathcal{L}}` (sec. 3.1), and minimised with respect to :math:`\theta` only.

**SimSiam.** Chen & He drop the moving average: the target is the online network itself
behind a **stop-gradient** (Algorithm 1). With :math:`D(p, z) = -\cos(p, z)`,

.. math:: \mathcal{L} = \tfrac12 D(p_1, \operatorname{stopgrad}(z_2))
    + \tfrac12 D(p_2, \operatorname{stopgrad}(z_1)).

Without the stop-gradient the network collapses within a few epochs (sec. 4.1, Fig. 2).
The paper's monitor is the standard deviation over the batch of the L2-normalised
:math:`z / \lVert z \rVert`, averaged over dimensions (:func:`output_std`): near 0 for a
collapsed output, about :math:`1/\sqrt{d}` for unit vectors spread over :math:`d`
dimensions. ``SimSiamConfig(stop_gradient=False)`` reproduces that collapse. The batch
norm on the projector's output (the default) keeps every dimension of :math:`z`
standardised, so the monitor can only fall once the variance before that norm is below its
``eps``; on small glyph runs it stayed near :math:`1/\sqrt{d}` for 200 steps, while with
``out_norm=False`` the std fell to a sixteenth of the stop-gradient run's
(``tests/ssl/test_contrastive.py``).

The detach is part of both losses' contract: :func:`byol_loss` and :func:`simsiam_loss`
pass no gradient to ``z`` (unless ``simsiam_loss(..., stop_gradient=False)``).

References:
    Grill et al., *Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning*,
    NeurIPS 2020.
    Chen & He, *Exploring Simple Siamese Representation Learning*, CVPR 2021.

Example:
    >>> p, z = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    >>> byol_loss(p, z)  # orthogonal: 2 - 2 cos = 2
    tensor(2.)
    >>> simsiam_loss(p, p, 2 * p, 2 * p)  # every prediction points at its target: -1
    tensor(-1.)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.ssl.moco import ema_update
from companion.ssl.simclr import _check_views, projection_head


def _check_pairs(*pairs: tuple[str, torch.Tensor, torch.Tensor]) -> None:
    for names, a, b in pairs:
        if a.ndim != 2:
            raise ValueError(f"{names} must be (N, D); got {tuple(a.shape)}")
        _check_views(a, b, names)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 2, ``2 - 2 cos(p, z)``, averaged over the batch; no gradient flows into ``z``.

    Args:
        p: online predictions.
        z: target projections of the other view (detached here).

    Shape:
        - p, z: ``(N, D)``
        - returns: a scalar in ``[0, 4]``
    """
    _check_pairs(("p and z", p, z))
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def simsiam_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    stop_gradient: bool = True,
) -> torch.Tensor:
    """SimSiam's symmetric loss, ``D(p1, z2)/2 + D(p2, z1)/2`` with ``D = -cos``, batch mean.

    Args:
        p1, p2: predictions from the two views.
        z1, z2: projections of the two views; detached unless ``stop_gradient=False`` (the
            paper's collapse ablation, sec. 4.1).

    Shape:
        - p1, p2, z1, z2: ``(N, D)``
        - returns: a scalar in ``[-1, 1]``
    """
    _check_pairs(("p1 and z2", p1, z2), ("p2 and z1", p2, z1))
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    d12 = -F.cosine_similarity(p1, z2, dim=1).mean()
    d21 = -F.cosine_similarity(p2, z1, dim=1).mean()
    return d12 / 2 + d21 / 2


def output_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor (SimSiam sec. 4.1): std over the batch of ``z/||z||``, mean over dims.

    Uses the unbiased std. About ``1/sqrt(D)`` for well-spread outputs, 0 for a constant.

    Shape:
        - z: ``(N, D)`` with ``N >= 2``; returns: a scalar
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be (N, D) with N >= 2; got {tuple(z.shape)}")
    return F.normalize(z.detach(), dim=1).std(dim=0).mean()


def byol_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """BYOL's target decay ``tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2`` (sec. 3.2).

    Goes from ``base`` at step 0 to 1 at step ``total_steps``; pass it to
    :meth:`BYOL.after_step`.
    """
    if not 0 <= step <= total_steps or total_steps < 1:
        raise ValueError(
            f"need 0 <= step <= total_steps and total_steps >= 1; got step={step}, "
            f"total_steps={total_steps}"
        )
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


@dataclass(frozen=True)
class BYOLConfig:
    """Hyper-parameters of BYOL; defaults are the paper's (sec. 3.2).

    Deviation: ``momentum`` is fixed unless the loop passes :func:`byol_momentum` values.
    """

    momentum: float = 0.996  # tau_base; the paper raises it to 1 with a cosine schedule
    hidden_dim: int = 4096  # hidden width of the projector and of the predictor
    out_dim: int = 256  # output of the projector and of the predictor

    def __post_init__(self) -> None:
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got {self.momentum!r}")


class BYOL(nn.Module):
    """BYOL: online encoder, projector and predictor; target encoder and projector by EMA.

    Args:
        encoder: the online encoder, images ``(B, C, H, W)`` -> ``(B, feature_dim)``.
        feature_dim: the encoder's output dimension ``D``.
        config: the method's hyper-parameters (:class:`BYOLConfig`).
    """

    views = 2  # loss(x1, x2): two augmented views of each image

    def __init__(
        self, encoder: nn.Module, feature_dim: int, config: BYOLConfig = BYOLConfig()
    ) -> None:
        super().__init__()
        if not isinstance(config, BYOLConfig):
            raise TypeError(f"config must be a BYOLConfig; got {type(config).__name__}")
        self.config = config
        self.encoder = encoder
        self.projector = projection_head(feature_dim, config.hidden_dim, config.out_dim)
        self.predictor = projection_head(config.out_dim, config.hidden_dim, config.out_dim)
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)  # xi: eq. 1 only
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L + L~``: each view's prediction against the other view's target projection.

        Shape:
            - x1, x2: ``(B, C, H, W)``, two augmentations of the same ``B`` images
            - returns: a scalar loss in ``[0, 8]`` and ``{"loss", "output_std"}`` floats
        """
        _check_views(x1, x2)
        z1 = self.projector(self.encoder(x1))  # (B, out_dim), online
        z2 = self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():  # the target branch: no gradient (sec. 3.1)
            t1 = self.target_projector(self.target_encoder(x1))  # z'_xi of view 1
            t2 = self.target_projector(self.target_encoder(x2))
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return loss, {"loss": float(loss.detach()), "output_std": float(output_std(z1))}

    def after_step(self, momentum: float | None = None) -> None:
        """Eq. 1 after ``optimizer.step()``, with ``config.momentum`` or the given ``tau``."""
        tau = self.config.momentum if momentum is None else momentum
        ema_update(self.target_encoder, self.encoder, tau)
        ema_update(self.target_projector, self.projector, tau)


@dataclass(frozen=True)
class SimSiamConfig:
    """Hyper-parameters of SimSiam; defaults are the paper's ImageNet baseline settings."""

    proj_dim: int = 2048  # projector: 3 layers of 2048, batch norm on every layer
    pred_hidden: int = 512  # predictor: 2048 -> 512 -> 2048, a bottleneck
    out_norm: bool = True  # BN (no affine) on z, the paper's default; ablated in sec. 4.4
    stop_gradient: bool = True  # False is the collapse ablation of sec. 4.1

    def __post_init__(self) -> None:
        if not isinstance(self.stop_gradient, bool):
            raise TypeError(f"stop_gradient must be a bool; got {self.stop_gradient!r}")


class SimSiam(nn.Module):
    """SimSiam: one encoder + projector for both views, a predictor, and a stop-gradient.

    There is no target network: :meth:`after_step` does nothing.

    Args:
        encoder: images ``(B, C, H, W)`` -> ``(B, feature_dim)``.
        feature_dim: the encoder's output dimension ``D``.
        config: the method's hyper-parameters (:class:`SimSiamConfig`).
    """

    views = 2  # loss(x1, x2): two augmented views of each image

    def __init__(
        self, encoder: nn.Module, feature_dim: int, config: SimSiamConfig = SimSiamConfig()
    ) -> None:
        super().__init__()
        if not isinstance(config, SimSiamConfig):
            raise TypeError(f"config must be a SimSiamConfig; got {type(config).__name__}")
        self.config = config
        self.encoder = encoder
        self.projector = projection_head(
            feature_dim, config.proj_dim, config.proj_dim, layers=3, out_norm=config.out_norm
        )
        self.predictor = projection_head(config.proj_dim, config.pred_hidden, config.proj_dim)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Algorithm 1: the symmetric negative cosine with stop-gradient on ``z``.

        Shape:
            - x1, x2: ``(B, C, H, W)``, two augmentations of the same ``B`` images
            - returns: a scalar loss in ``[-1, 1]`` and ``{"loss", "output_std"}`` floats
        """
        _check_views(x1, x2)
        z1 = self.projector(self.encoder(x1))  # (B, proj_dim)
        z2 = self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss(p1, p2, z1, z2, stop_gradient=self.config.stop_gradient)
        return loss, {"loss": float(loss.detach()), "output_std": float(output_std(z1))}

    def after_step(self) -> None:
        """Nothing to update after the optimiser step (SimSiam keeps no extra state)."""
