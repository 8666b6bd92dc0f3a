r"""Autoencoders: plain and denoising (Vincent et al., 2008), and their decoder.

An **autoencoder** trains an encoder :math:`f` (images to vectors, ``h = f(x)``) together
with a decoder :math:`r` that must rebuild the image from ``h``. Our :class:`Decoder`
returns logits ``a = r(h)``; the reconstruction is :math:`\hat x = \sigma(a)`. For ink in
``[0, 1]`` the loss is the *reconstruction cross-entropy* of Vincent et al. (sec. 2.2),
summed over the ``d`` pixels of an image and averaged over the batch,

.. math:: L_H(x, \hat x) = -\sum_{i=1}^d \big[x_i \log \hat x_i + (1 - x_i)\log(1 - \hat x_i)\big],

computed from the logits for stability; ``reconstruction="mse"`` uses the squared error
:math:`\lVert x - \hat x\rVert^2` instead.

**Denoising** (Vincent et al., 2008, sec. 2.3). A bottleneck is not needed if the encoder
must undo a corruption :math:`\tilde x = \operatorname{corrupt}(x, u)` (Vincent et al.'s
:math:`q_\mathcal{D}`): the loss is :math:`L_H(x, \sigma(r(f(\tilde x))))`, the *clean*
image as target. Masking noise, the paper's, zeroes a fixed number :math:`\nu d` of randomly
chosen pixels of every image; ``noise="gaussian"`` adds :math:`\mathcal N(0, \nu^2)` to every
pixel (Vincent et al., 2010).

The variational autoencoder, which reuses :class:`Decoder`, is in :mod:`companion.ssl.vae`.

References:
    Vincent, Larochelle, Bengio & Manzagol, *Extracting and Composing Robust Features with
    Denoising Autoencoders*, ICML 2008. Vincent et al., *Stacked Denoising Autoencoders*,
    JMLR 2010.

Example:
    >>> reconstruction_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))  # 4 log 2
    tensor([2.7726])
    >>> Decoder(8, image_size=28)(torch.zeros(5, 8)).shape
    torch.Size([5, 1, 28, 28])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.checks import check_choice, check_int

RECONSTRUCTIONS = ("bce", "mse")
NOISES = ("mask", "gaussian")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters of :class:`Autoencoder`."""

    reconstruction: str = "bce"  # cross-entropy for [0, 1] inputs (Vincent et al., sec. 2.2)

    def __post_init__(self) -> None:
        check_choice("reconstruction", self.reconstruction, RECONSTRUCTIONS)


@dataclass(frozen=True)
class DenoisingConfig:
    """Hyper-parameters of :class:`DenoisingAutoencoder`; the paper picks ``nu`` by validation."""

    reconstruction: str = "bce"  # cross-entropy, as in the paper
    noise: str = "mask"  # masking noise (sec. 2.3), or "gaussian" (Vincent et al., 2010)
    level: float = 0.25  # nu: fraction of pixels zeroed (paper's range 0-50%) or Gaussian std

    def __post_init__(self) -> None:
        check_choice("reconstruction", self.reconstruction, RECONSTRUCTIONS)
        check_choice("noise", self.noise, NOISES)
        if not (0 < self.level < 1 if self.noise == "mask" else self.level > 0):
            allowed = "in (0, 1) for masking noise" if self.noise == "mask" else "positive"
            raise ValueError(f"level must be {allowed}; got {self.level!r}")


def _size_pair(image_size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if min(h, w) < 4:
        raise ValueError(f"image_size must be at least 4x4; got {image_size!r}")
    return h, w


class Decoder(nn.Module):
    """A small conv decoder ``(B, D) -> (B, C, H, W)`` logits; mirrors Conv4 at 28x28.

    A linear layer to ``hidden`` maps of a quarter of the image side (7x7 at 28x28), then
    twice a nearest-neighbour upsampling and a 3x3 convolution (upsample + conv rather than
    transposed convolutions avoids checkerboard artefacts), then a 3x3 convolution to
    ``out_channels``. Any ``H, W >= 4`` works: the upsampling targets exact sizes.

    Args:
        in_features: the code dimension ``D`` (encoder features or a VAE's latent ``J``).
        out_channels: channels ``C`` of the images.
        image_size: ``H`` (square) or ``(H, W)``.
        hidden: channels of the feature maps.

    Shape:
        - h: ``(B, in_features)``
        - returns: ``(B, out_channels, H, W)`` logits (apply a sigmoid for pixel values)
    """

    def __init__(
        self,
        in_features: int,
        out_channels: int = 1,
        image_size: int | tuple[int, int] = 28,
        hidden: int = 32,
    ) -> None:
        super().__init__()
        check_int("in_features", in_features)
        check_int("out_channels", out_channels)
        check_int("hidden", hidden)
        h, w = _size_pair(image_size)
        self.in_features = in_features
        self.image_shape = (out_channels, h, w)
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden * math.ceil(h / 4) * math.ceil(w / 4)),
            nn.Unflatten(1, (hidden, math.ceil(h / 4), math.ceil(w / 4))),  # (B, hidden, H/4, W/4)
            nn.ReLU(),
            nn.Upsample(size=(math.ceil(h / 2), math.ceil(w / 2))),  # (B, hidden, H/2, W/2)
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(size=(h, w)),  # (B, hidden, H, W)
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 3, padding=1),  # (B, C, H, W)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.ndim != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"Decoder expects codes (B, {self.in_features}); got {tuple(h.shape)}")
        return self.layers(h)


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Per-image reconstruction loss: ``L_H`` (``"bce"``) or squared error of ``sigmoid(logits)``.

    Shape:
        - logits, x: ``(B, C, H, W)``, ``x`` in ``[0, 1]``
        - returns: ``(B,)``, summed over the pixels of each image
    """
    check_choice("reconstruction", kind, RECONSTRUCTIONS)
    if logits.shape != x.shape:
        raise ValueError(
            f"decoder output {tuple(logits.shape)} must match the images {tuple(x.shape)}"
        )
    if kind == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        per_pixel = (torch.sigmoid(logits) - x).square()
    return per_pixel.flatten(1).sum(1)


def draw_corruption(x: torch.Tensor, noise: str, generator: torch.Generator) -> torch.Tensor:
    """The random numbers of one corruption of ``x``, drawn from ``generator``.

    Uniform scores in ``[0, 1)`` for masking noise (the pixels with the highest scores are
    zeroed), standard normal values for Gaussian noise. Drawn on ``generator``'s device and
    moved to ``x``'s, so a seed gives the same corruption on any device.

    Shape:
        - x: ``(B, C, H, W)``; returns: same shape
    """
    check_choice("noise", noise, NOISES)
    return draw_on(torch.rand if noise == "mask" else torch.randn, x.shape, generator, x)


def corrupt_with(x: torch.Tensor, u: torch.Tensor, noise: str, level: float) -> torch.Tensor:
    """``x_tilde`` from ``x`` and the random numbers ``u`` of :func:`draw_corruption`.

    Masking noise zeroes the ``round(level * d)`` pixels of each image with the highest
    scores ``u``, so a fixed number, chosen uniformly at random (Vincent et al., sec. 2.3);
    Gaussian noise adds ``level * u``. A pure function: safe under ``torch.func.vmap``.

    Shape:
        - x, u: ``(B, C, H, W)``; returns: same shape
    """
    check_choice("noise", noise, NOISES)
    if not (0 <= level <= 1 if noise == "mask" else level >= 0):
        raise ValueError(
            f"level must be in [0, 1] for masking noise, >= 0 for Gaussian; got {level!r}"
        )
    if u.shape != x.shape:
        raise ValueError(f"u must have the shape of x {tuple(x.shape)}; got {tuple(u.shape)}")
    if noise == "gaussian":
        return x + level * u
    flat = x.flatten(1)  # (B, d)
    destroyed = round(level * flat.shape[1])
    keep = torch.ones_like(flat).scatter(1, u.flatten(1).topk(destroyed, dim=1).indices, 0.0)
    return (flat * keep).view_as(x)


def corrupt(x: torch.Tensor, noise: str, level: float, generator: torch.Generator) -> torch.Tensor:
    """Draw ``x_tilde = corrupt(x, u)``: :func:`corrupt_with` of :func:`draw_corruption`.

    Shape:
        - x: ``(B, C, H, W)``; returns: same shape
    """
    return corrupt_with(x, draw_corruption(x, noise, generator), noise, level)


def draw_on(
    sampler: Callable[..., torch.Tensor],
    shape: torch.Size,
    generator: torch.Generator,
    like: torch.Tensor,
) -> torch.Tensor:
    """``sampler(shape)`` (``torch.rand`` or ``torch.randn``) drawn from ``generator`` on the
    generator's device in ``like``'s dtype, then moved to ``like``'s device: the same numbers
    on a CPU and a GPU run with the same seed. Shared by the autoencoders and the VAE."""
    values = sampler(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return values.to(like.device)


class Autoencoder(nn.Module):
    """``x -> h = encoder(x) -> logits = decoder(h)``, trained to reconstruct ``x``.

    Shape:
        - x: ``(B, C, H, W)`` in ``[0, 1]``; ``loss`` returns a scalar and ``{"loss"}``
    """

    views = 1  # loss(x): one (optionally augmented) batch of images

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        config: AutoencoderConfig = AutoencoderConfig(),
    ) -> None:
        super().__init__()
        if not isinstance(config, AutoencoderConfig):
            raise TypeError(f"config must be an AutoencoderConfig; got {type(config).__name__}")
        self.encoder, self.decoder, self.config = encoder, decoder, config

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``x_hat = sigmoid(decoder(encoder(x)))``, shape ``(B, C, H, W)``."""
        return torch.sigmoid(self.decoder(self.encoder(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Reconstruction loss per image, averaged over the batch.

        A pure function of the parameters and the inputs, safe under
        ``torch.func.functional_call`` and ``vmap``.

        Shape:
            - x: ``(B, C, H, W)``; returns: a scalar and ``{"loss"}``, a detached 0-dim tensor
        """
        logits = self.decoder(self.encoder(x))  # (B, C, H, W)
        loss = reconstruction_loss(logits, x, self.config.reconstruction).mean()
        return loss, {"loss": loss.detach()}

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, :meth:`forward` (nothing is drawn or recorded)."""
        return self(x)

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after an optimiser step (no EMA state)."""


class DenoisingAutoencoder(nn.Module):
    """Reconstruct the clean ``x`` from ``x_tilde = corrupt(x, u)`` (Vincent et al., 2008).

    Args:
        encoder, decoder: as for :class:`Autoencoder`.
        config: noise type and level (:class:`DenoisingConfig`).
        generator: draws the corruption; default a CPU generator seeded with 0.

    Shape:
        - x: ``(B, C, H, W)`` in ``[0, 1]``; ``loss`` returns a scalar and ``{"loss"}``
    """

    views = 1  # loss(x): one (optionally augmented) batch of images

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        config: DenoisingConfig = DenoisingConfig(),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, DenoisingConfig):
            raise TypeError(f"config must be a DenoisingConfig; got {type(config).__name__}")
        self.encoder, self.decoder, self.config = encoder, decoder, config
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def forward(
        self, x: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L_H(x, r(f(x_tilde)))`` per image, averaged, for the corruption drawn as ``u``.

        The pure path: the caller draws ``u`` (:func:`draw_corruption`), so this is a
        function of the parameters and the inputs, safe under ``torch.func.functional_call``
        and ``vmap`` (give each batch of the vmapped axis its own ``u``).

        Shape:
            - x, u: ``(B, C, H, W)``; returns: a scalar and ``{"loss"}``, a detached 0-dim
              tensor
        """
        x_tilde = corrupt_with(x, u, self.config.noise, self.config.level)
        logits = self.decoder(self.encoder(x_tilde))  # (B, C, H, W)
        loss = reconstruction_loss(logits, x, self.config.reconstruction).mean()  # clean target
        return loss, {"loss": loss.detach()}

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward` with a fresh corruption drawn from :attr:`generator`.

        Shape:
            - x: ``(B, C, H, W)`` in ``[0, 1]``; returns: a scalar and ``{"loss"}``
        """
        return self(x, draw_corruption(x, self.config.noise, self.generator))

    def generators(self) -> dict[str, torch.Generator]:
        """The random stream of the corruptions, by name (saved in checkpoints)."""
        return {"noise": self.generator}

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after an optimiser step (no EMA state)."""
