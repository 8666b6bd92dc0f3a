r"""Rotation prediction (Gidaris, Singh & Komodakis, 2018), a pretext task.

A **pretext task** invents labels from the images themselves. Gidaris et al. rotate every
image by one of four multiples of 90 degrees, :math:`\operatorname{rot}_y(x)` a turn by
:math:`90y` degrees for :math:`y \in \{0, 1, 2, 3\}` (the paper's :math:`g(x \mid y)`), and
train a classifier :math:`F` on top of the encoder to say which rotation it sees (sec. 2.1):

.. math:: \mathcal L(x) = -\frac{1}{4} \sum_{y=0}^{3} \log F^y(\operatorname{rot}_y(x)),

where :math:`F^y` is the predicted probability of rotation :math:`y`. Recognising that a
glyph is upside down needs a notion of what the glyph looks like upright: its strokes,
their order and orientation. Multiples of 90 degrees are exact on a pixel grid
(``torch.rot90``: no interpolation artefacts a network could use to cheat, sec. 2.2), and
all four rotations of an image go into the same mini-batch, which the paper found better
than sampling one rotation per image (sec. 3).

**Deviation.** The paper trains a NIN or AlexNet and puts the classifier on a deep layer;
we use any encoder with a linear head (``hidden=None``) or one hidden layer on top.

Reference:
    Gidaris, Singh & Komodakis, *Unsupervised Representation Learning by Predicting Image
    Rotations*, ICLR 2018.

Example:
    >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # one 2x2 image
    >>> rotated, y = rotate_batch(x)
    >>> y
    tensor([0, 1, 2, 3])
    >>> rotated[1, 0]  # 90 degrees counter-clockwise
    tensor([[2., 4.],
            [1., 3.]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.checks import check_int

ROTATIONS = 4  # 0, 90, 180, 270 degrees: the paper's best choice of K (sec. 3, table 2)


@dataclass(frozen=True)
class RotationConfig:
    """Hyper-parameters of :class:`RotationPrediction`."""

    hidden: int | None = None  # None: a linear head; else one hidden ReLU layer of this width

    def __post_init__(self) -> None:
        check_int("hidden", self.hidden, optional=True)


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image and their labels, rotation-major.

    Block ``y`` (rows ``y*B`` to ``(y+1)*B - 1``) holds ``torch.rot90(x, y, dims=(2, 3))``:
    ``y`` quarter-turns counter-clockwise, as displayed, with label ``y``.

    Shape:
        - x: ``(B, C, H, W)`` with ``H == W``
        - returns: ``(4B, C, H, W)`` images and ``(4B,)`` int64 labels
    """
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"rotate_batch expects square images (B, C, H, H); got {tuple(x.shape)}")
    rotated = torch.cat([torch.rot90(x, y, dims=(2, 3)) for y in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


class RotationPrediction(nn.Module):
    """An encoder and a 4-way rotation classifier on its features.

    Args:
        encoder: images ``(B, C, H, W) -> (B, feature_dim)``.
        feature_dim: the encoder's output dimension ``D``.
        config: the head's shape (:class:`RotationConfig`).

    Shape:
        - x: ``(B, C, H, H)``; ``loss`` returns a scalar and ``{"loss", "accuracy"}``
    """

    views = 1  # loss(x): one (optionally augmented) batch of images

    def __init__(
        self, encoder: nn.Module, feature_dim: int, config: RotationConfig = RotationConfig()
    ) -> None:
        super().__init__()
        if not isinstance(config, RotationConfig):
            raise TypeError(f"config must be a RotationConfig; got {type(config).__name__}")
        check_int("feature_dim", feature_dim)
        self.encoder, self.config = encoder, config
        if config.hidden is None:
            self.head: nn.Module = nn.Linear(feature_dim, ROTATIONS)
        else:
            self.head = nn.Sequential(
                nn.Linear(feature_dim, config.hidden),
                nn.ReLU(),
                nn.Linear(config.hidden, ROTATIONS),
            )

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation logits of all four rotations of ``x``: ``(4B, 4)``, and the labels ``(4B,)``."""
        rotated, labels = rotate_batch(x)
        return self.head(self.encoder(rotated)), labels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy over the four rotations of every image; logs the rotation accuracy.

        A pure function of the parameters and the inputs (the rotations are fixed, not
        drawn), safe under ``torch.func.functional_call`` and ``vmap``.

        Shape:
            - x: ``(B, C, H, H)``
            - returns: a scalar loss and ``{"loss", "accuracy"}``, detached 0-dim tensors
        """
        logits, labels = self.logits(x)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "accuracy": accuracy.detach()}

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, :meth:`forward` (nothing is drawn or recorded)."""
        return self(x)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after an optimiser step (no EMA state)."""
