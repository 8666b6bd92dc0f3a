r"""The variational autoencoder (Kingma & Welling, 2014).

A VAE puts two linear heads on an encoder's features; they give the approximate posterior
:math:`q_\phi(z \mid x) = \mathcal N(\mu, \operatorname{diag} \sigma^2)`; a sample is
reparameterised, :math:`z = \mu + \sigma \odot \epsilon` with
:math:`\epsilon \sim \mathcal N(0, I)` (sec. 2.4), so gradients reach :math:`\mu` and
:math:`\log \sigma^2`. With prior :math:`p(z) = \mathcal N(0, I)` and a Bernoulli decoder
(appendix C.1), one sample per image gives the estimator of eq. 10,

.. math:: \operatorname{ELBO}(x) = \underbrace{\tfrac12 \sum_{j=1}^J \big(1 + \log\sigma_j^2 -
   \mu_j^2 - \sigma_j^2\big)}_{-D_{KL}(q_\phi(z|x)\,\|\,p(z)) \text{ (appendix B)}}
   + \log p_\theta(x \mid z), \qquad \log p_\theta(x \mid z) = -L_H(x, \sigma(r_\theta(z))),

where :math:`L_H` is the reconstruction cross-entropy of :mod:`companion.ssl.autoencoders`
and :math:`r_\theta` its :class:`~companion.ssl.autoencoders.Decoder`, here fed with :math:`z`.

:class:`VAE` minimises :math:`-\operatorname{ELBO}` averaged over images; ``beta`` weights the KL
term (beta-VAE, Higgins et al., 2017; 1 is the ELBO). Glyph ink is grey at stroke edges,
and a Bernoulli "likelihood" of a non-binary ``x`` is not normalised (Loaiza-Ganem &
Cunningham, 2019), so the ELBO is then a training objective, not a bound on a density.

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes*, ICLR 2014. Higgins et al.,
    *beta-VAE*, ICLR 2017. Loaiza-Ganem & Cunningham, *The continuous Bernoulli*, NeurIPS
    2019.

Example:
    >>> gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3))  # q = p
    tensor([0., 0.])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from companion.checks import check_int
from companion.ssl.autoencoders import Decoder, draw_on, reconstruction_loss

__all__ = ["VAE", "VAEConfig", "Decoder", "elbo", "gaussian_kl", "reparameterise", "sample_z"]


@dataclass(frozen=True)
class VAEConfig:
    """Hyper-parameters of :class:`VAE`; one sample ``z`` per image (the paper's L = 1)."""

    latent_dim: int = 20  # J; the paper shows 3 to 200 on MNIST (fig. 2)
    beta: float = 1.0  # weight of the KL term; 1 is the ELBO, > 1 is a beta-VAE

    def __post_init__(self) -> None:
        check_int("latent_dim", self.latent_dim)
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0; got {self.beta!r}")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``D_KL(N(mu, diag exp(logvar)) || N(0, I))`` in closed form (appendix B), per sample.

    Shape:
        - mu, logvar: ``(B, J)``; returns: ``(B,)``, summed over the ``J`` latent dimensions
    """
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)  # (B, J) -> (B,)


def sample_z(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The reparameterisation ``z = mu + sigma * eps`` (sec. 2.4) for a given ``eps``.

    Shape:
        - mu, logvar, eps: ``(B, J)``; returns: ``(B, J)``
    """
    return mu + torch.exp(0.5 * logvar) * eps


def reparameterise(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """``z = mu + sigma * eps``, ``eps ~ N(0, I)`` from ``generator`` (sec. 2.4).

    Shape:
        - mu, logvar: ``(B, J)``; returns: ``(B, J)``
    """
    return sample_z(mu, logvar, draw_on(torch.randn, mu.shape, generator, mu))


def elbo(
    logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one-sample ELBO of eq. 10 with a Bernoulli decoder, and its two terms.

    Args:
        logits: decoder output ``r(z)`` for a sample ``z ~ q(z | x)``.
        x: the images, in ``[0, 1]``.
        mu, logvar: the parameters of ``q(z | x)``.
        beta: weight of the KL term (1: the ELBO).

    Shape:
        - logits, x: ``(B, C, H, W)``; mu, logvar: ``(B, J)``
        - returns: ``(elbo, log_px, kl)``, each ``(B,)``: ``elbo = log_px - beta * kl``
    """
    log_px = -reconstruction_loss(logits, x, "bce")  # log p(x | z), summed over pixels
    kl = gaussian_kl(mu, logvar)
    return log_px - beta * kl, log_px, kl


class VAE(nn.Module):
    """A VAE around any encoder: linear heads to ``mu`` and ``log sigma^2``, a Bernoulli decoder.

    Args:
        encoder: features ``(B, C, H, W) -> (B, feature_dim)``.
        decoder: latents ``(B, latent_dim) -> (B, C, H, W)`` logits, e.g. :class:`Decoder`.
        feature_dim: the encoder's output dimension ``D``.
        config: latent size and ``beta`` (:class:`VAEConfig`).
        generator: draws ``eps``; default a CPU generator seeded with 0.

    Example:
        >>> from companion.nets import Conv4
        >>> vae = VAE(Conv4(1, hidden=16), Decoder(20), feature_dim=16)  # J = 20 by default
        >>> loss, logs = vae.loss(torch.rand(4, 1, 28, 28))
        >>> sorted(logs), vae.decode(torch.zeros(2, 20)).shape
        (['kl', 'loss', 'recon'], torch.Size([2, 1, 28, 28]))
    """

    views = 1  # loss(x): one (optionally augmented) batch of images

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        feature_dim: int,
        config: VAEConfig = VAEConfig(),
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise TypeError(f"config must be a VAEConfig; got {type(config).__name__}")
        check_int("feature_dim", feature_dim)
        self.encoder, self.decoder, self.config = encoder, decoder, config
        self.mu = nn.Linear(feature_dim, config.latent_dim)
        self.logvar = nn.Linear(feature_dim, config.latent_dim)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``q(z | x)``, each ``(B, J)``."""
        h = self.encoder(x)  # (B, D)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The Bernoulli means ``sigmoid(decoder(z))`` in ``[0, 1]``, ``(B, C, H, W)``."""
        return torch.sigmoid(self.decoder(z))

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Negative ELBO per image for the sample ``z = mu + sigma * eps``, averaged.

        The pure path: the caller draws ``eps ~ N(0, I)`` (:meth:`draw_eps`), so this is a
        function of the parameters and the inputs, safe under ``torch.func.functional_call``
        and ``vmap`` (give each batch of the vmapped axis its own ``eps``).

        Shape:
            - x: ``(B, C, H, W)`` in ``[0, 1]``; eps: ``(B, J)``
            - returns: a scalar and ``{"loss", "recon", "kl"}``, detached 0-dim tensors
        """
        mu, logvar = self.encode(x)
        if eps.shape != mu.shape:
            raise ValueError(f"eps must be (B, J) = {tuple(mu.shape)}; got {tuple(eps.shape)}")
        bound, log_px, kl = elbo(
            self.decoder(sample_z(mu, logvar, eps)), x, mu, logvar, self.config.beta
        )
        loss = -bound.mean()
        return loss, {
            "loss": loss.detach(),
            "recon": -log_px.detach().mean(),
            "kl": kl.detach().mean(),
        }

    def draw_eps(self, x: torch.Tensor) -> torch.Tensor:
        """``eps ~ N(0, I)`` of shape ``(B, J)`` from :attr:`generator`, in ``x``'s dtype and
        on its device (drawn on the generator's)."""
        return draw_on(
            torch.randn, torch.Size((x.shape[0], self.config.latent_dim)), self.generator, x
        )

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward` with one fresh ``eps`` per image from :attr:`generator`.

        Shape:
            - x: ``(B, C, H, W)``; returns: a scalar and ``{"loss", "recon", "kl"}``
        """
        return self(x, self.draw_eps(x))

    def generators(self) -> dict[str, torch.Generator]:
        """The random stream of ``eps``, by name (saved in checkpoints)."""
        return {"eps": self.generator}

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after an optimiser step (no EMA state)."""
