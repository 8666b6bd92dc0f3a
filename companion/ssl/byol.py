r"""BYOL (Grill et al., 2020) and SimSiam (Chen & He, 2021): learning without negatives.

Both train an **online** branch, encoder + projector + **predictor**, to predict the
projection of another view of the same image, and neither uses negative pairs. What stops
the trivial solution, a constant output, is an asymmetry: the target side gets no gradient.

**BYOL.** The target is a separate network whose parameters :math:`\xi` are an exponential
moving average of the online parameters :math:`\theta` (eq. 1,
:func:`~companion.ssl.moco.ema_update`): :math:`\xi \leftarrow \tau \xi + (1 - \tau)
\theta`. The decay rises from :math:`\tau_{\text{base}} = 0.996` to 1 on a cosine schedule
over the :math:`K` steps of the run (sec. 3.2, :func:`byol_momentum`),

.. math:: \tau_k = 1 - (1 - \tau_{\text{base}}) \left(\cos(\pi k / K) + 1\right) / 2,

which :meth:`BYOL.after_step` applies after optimiser step ``k + 1``, as the training loop
tells it the step and ``K`` (``BYOLConfig(momentum_schedule="constant")`` keeps
:math:`\tau_{\text{base}}` throughout). With the online prediction :math:`p` (the paper's
:math:`q_\theta(z_\theta)`) and the target projection :math:`z` of the other view, the loss
is the squared distance of the unit vectors (eq. 2),

.. math:: \mathcal{L} = \lVert \bar p - \bar z \rVert_2^2
    = 2 - 2 \frac{\langle p, z \rangle}{\lVert p \rVert_2 \lVert z \rVert_2}, \tag{2}

summed over both directions, :math:`\mathcal{L}^{\text{BYOL}} = \mathcal{L} +
\tilde{\mathcal{L}}` (sec. 3.1), and minimised with respect to :math:`\theta` only.

**SimSiam.** Chen & He drop the moving average: the target is the online network itself
behind a **stop-gradient** (Algorithm 1). With :math:`D(p, z) = -\cos(p, z)`,

.. math:: \mathcal{L} = \tfrac12 D(p_1, \operatorname{stopgrad}(z_2))
    + \tfrac12 D(p_2, \operatorname{stopgrad}(z_1)).

Without the stop-gradient the network collapses within a few epochs (sec. 4.1, Fig. 2).

**The collapse monitor.** Chen & He watch the standard deviation over the batch of the
L2-normalised output, averaged over dimensions (sec. 4.1, :func:`output_std`): 0 when
every image gives the same direction, about :math:`1/\sqrt{d}` when the unit vectors are
spread over :math:`d` dimensions (for a zero-mean isotropic Gaussian output, as the paper
notes). The paper reads it on the projection :math:`z`; we read it on the **prediction**
:math:`p` (a deviation). The projector ends with a batch norm without affine parameters
(the paper's default, ``SimSiamConfig.out_norm``), which standardises every dimension of
:math:`z` over the batch: the std of :math:`z / \lVert z \rVert` then stays near
:math:`1/\sqrt{d}` until the variance before that norm falls below its ``eps``, so it
shows a collapse only once it is complete. No norm layer holds :math:`p` up, and where the
loss is met :math:`p` points where :math:`z` does, so the same two reference values apply.
``SimSiamConfig(stop_gradient=False, out_norm=False)`` collapses quickly enough to watch
(``tests/ssl/test_contrastive.py``; chapter 5 plots it).

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

from companion.checks import check_choice, check_int
from companion.ssl.moco import check_momentum, ema_update
from companion.ssl.simclr import check_views, projection_head


def _check_pairs(*pairs: tuple[str, torch.Tensor, torch.Tensor]) -> None:
    for names, a, b in pairs:
        if a.ndim != 2:
            raise ValueError(f"{names} must be (N, D); got {tuple(a.shape)}")
        check_views(a, b, names)


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


def output_std(p: torch.Tensor) -> torch.Tensor:
    """Collapse monitor (Chen & He, sec. 4.1): std over the batch of ``p/||p||``, mean over dims.

    The methods below pass the prediction ``p`` (see the module docstring for why not
    ``z``). Uses the unbiased std; the input is detached. 0 when every row has the same
    direction (a collapse), about ``1/sqrt(D)`` for rows drawn from a zero-mean isotropic
    Gaussian.

    Shape:
        - p: ``(N, D)`` with ``N >= 2``; returns: a scalar
    """
    if p.ndim != 2 or p.shape[0] < 2:
        raise ValueError(f"p must be (N, D) with N >= 2; got {tuple(p.shape)}")
    return F.normalize(p.detach(), dim=1).std(dim=0).mean()


def byol_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """BYOL's target decay ``tau_k = 1 - (1 - base) (cos(pi k / K) + 1) / 2`` (sec. 3.2).

    Goes from ``base`` at ``k = 0`` to 1 at ``k = K``. :meth:`BYOL.after_step` uses it with
    ``k`` the number of steps done before the current one.

    Args:
        step: ``k``, from 0 to ``total_steps``.
        total_steps: ``K``, the run's number of optimiser steps.
        base: ``tau_base``, in ``[0, 1]``.
    """
    check_int("step", step, minimum=0)
    check_int("total_steps", total_steps)
    check_momentum(base)
    if step > total_steps:
        raise ValueError(f"need step <= total_steps; got step={step}, total_steps={total_steps}")
    return 1 - (1 - base) * (math.cos(math.pi * step / total_steps) + 1) / 2


MOMENTUM_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class BYOLConfig:
    """Hyper-parameters of BYOL; defaults are the paper's (sec. 3.2)."""

    momentum: float = 0.996  # tau_base, the target's EMA decay at the first step
    momentum_schedule: str = "cosine"  # tau_base to 1 (sec. 3.2); "constant": tau_base always
    hidden_dim: int = 4096  # hidden width of the projector and of the predictor
    out_dim: int = 256  # output of the projector and of the predictor

    def __post_init__(self) -> None:
        check_momentum(self.momentum)
        check_choice("momentum_schedule", self.momentum_schedule, MOMENTUM_SCHEDULES)


class BYOL(nn.Module):
    """BYOL: online encoder, projector and predictor; target encoder and projector by EMA.

    Args:
        encoder: the online encoder, images ``(B, C, H, W)`` -> ``(B, feature_dim)``.
        feature_dim: the encoder's output dimension ``D``.
        config: the method's hyper-parameters (:class:`BYOLConfig`).

    Example:
        >>> model = BYOL(nn.Flatten(), 4, BYOLConfig(hidden_dim=8, out_dim=2))
        >>> loss, logs = model.loss(torch.rand(4, 1, 2, 2), torch.rand(4, 1, 2, 2))
        >>> loss.backward()  # then optimizer.step(), then, after step 1 of 100:
        >>> model.momentum_at(1, 100)  # tau_0 of sec. 3.2: the first update uses tau_base
        0.996
        >>> model.after_step(1, 100)  # eq. 1 with that tau
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

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L + L~``: each view's prediction against the other view's target projection.

        A pure function of the parameters (online and target) and the inputs, safe under
        ``torch.func.functional_call`` and ``vmap``.

        Shape:
            - x1, x2: ``(B, C, H, W)``, two augmentations of the same ``B`` images
            - returns: a scalar loss in ``[0, 8]`` and ``{"loss", "output_std"}``, detached
              0-dim tensors (``output_std`` of the predictions ``p1``)
        """
        check_views(x1, x2)
        z1 = self.projector(self.encoder(x1))  # (B, out_dim), online
        z2 = self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():  # the target branch: no gradient (sec. 3.1)
            t1 = self.target_projector(self.target_encoder(x1))  # z'_xi of view 1
            t2 = self.target_projector(self.target_encoder(x2))
        loss = byol_loss(p1, t2) + byol_loss(p2, t1)
        return loss, {"loss": loss.detach(), "output_std": output_std(p1)}

    def loss(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, :meth:`forward` (BYOL draws nothing and records nothing)."""
        return self(x1, x2)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """``tau`` for the update after optimiser step ``step`` (1 to ``total_steps``).

        ``config.momentum`` if the schedule is ``"constant"``; else :func:`byol_momentum`
        at ``k = step - 1``, the steps done before this one, as in the authors' code (the
        decay of the update that follows step ``k + 1``): the first update uses
        ``tau_base``.
        """
        check_int("step", step)
        check_int("total_steps", total_steps)
        if step > total_steps:
            raise ValueError(
                f"need step <= total_steps; got step={step}, total_steps={total_steps}"
            )
        if self.config.momentum_schedule == "constant":
            return self.config.momentum
        return byol_momentum(step - 1, total_steps, self.config.momentum)

    def after_step(self, step: int, total_steps: int) -> None:
        """Eq. 1 after optimiser step ``step`` of ``total_steps``, with :meth:`momentum_at`."""
        tau = self.momentum_at(step, total_steps)
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
        for name in ("out_norm", "stop_gradient"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool; got {getattr(self, name)!r}")


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

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Algorithm 1: the symmetric negative cosine with stop-gradient on ``z``.

        A pure function of the parameters and the inputs, safe under
        ``torch.func.functional_call`` and ``vmap``.

        Shape:
            - x1, x2: ``(B, C, H, W)``, two augmentations of the same ``B`` images
            - returns: a scalar loss in ``[-1, 1]`` and ``{"loss", "output_std"}``,
              detached 0-dim tensors (``output_std`` of the predictions ``p1``)
        """
        check_views(x1, x2)
        z1 = self.projector(self.encoder(x1))  # (B, proj_dim)
        z2 = self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = simsiam_loss(p1, p2, z1, z2, stop_gradient=self.config.stop_gradient)
        return loss, {"loss": loss.detach(), "output_std": output_std(p1)}

    def loss(
        self, x1: torch.Tensor, x2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, :meth:`forward` (SimSiam draws nothing and records nothing)."""
        return self(x1, x2)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after the optimiser step (SimSiam keeps no extra state)."""
