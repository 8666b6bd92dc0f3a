r"""LASIUM: tasks sampled in the latent space of a generative model.

Khodadadeh et al. (2021), *Unsupervised Meta-Learning through Latent-Space Interpolation
in Generative Models* (ICLR). A generator :math:`G` (a GAN's, or a VAE's decoder) maps
latent codes to images. Codes far apart give images of different classes, codes close
together images of one class; so an ``N``-way task needs ``N`` **anchors**
:math:`z_1, \dots, z_N` far apart, and for each anchor ``K + Q`` codes near it, whose
images are that class's support and queries. The paper's three ways to draw a code near
:math:`z_i` (its LASIUM-N, -RO and -OC; the official code calls them p1, p2, p3):

.. math::

    \text{N (noise):}\quad z' = z_i + \epsilon, \ \epsilon \sim \mathcal N(0, \sigma^2 I);
    \qquad
    \text{RO (random out-of-class):}\quad z' = z_i + \gamma (v - z_i), \ v \sim \mathcal N(0, I);

.. math::

    \text{OC (other classes):}\quad z' = z_i + \gamma (z_j - z_i), \ j \ne i \text{ another anchor}.

The interpolations move *towards* a code of another class, but by a ratio
:math:`\gamma < 1/2` (the paper's :math:`\alpha`, which this book keeps for MAML's inner
step) that keeps :math:`z'` nearer its own anchor; they produce in-class
samples that differ along directions that matter, where noise moves in random ones.

**Anchors.** With a GAN the anchors are prior samples :math:`z \sim \mathcal N(0, I)`,
redrawn until every pair is farther apart than a threshold (squared distance; the
official Omniglot runner uses 246.1 with a 128-d latent). With a VAE the official code
encodes ``N`` random real images instead; this module does either: pass ``anchors``, the
codes of the unlabeled pool (the VAE's posterior means), or leave it ``None`` to sample
the prior with ``min_distance``.

Defaults here are the official code's ProtoNets-VAE runner for Omniglot (RO with
:math:`\gamma = 0.4`); its runners also use N with :math:`\sigma` from 0.5 to 2 and OC
with :math:`\gamma` 0.2 or 0.4. The generator here is chapter 4's VAE, trained for
minutes, whose samples are blurrier than the paper's GANs: the tasks are as good as the
generator, which is the method's strength and its limit.

**No labels are read**: the source sees latent codes and the generator only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from companion.checks import check_choice, check_int, check_positive
from companion.data.episodes import Episode, TaskBatch

VARIANTS = ("n", "ro", "oc")


class LASIUM:
    """``N``-way tasks generated from ``N`` anchors in a generator's latent space.

    Args:
        generate: latent codes ``(B, latent_dim)`` -> images ``(B, C, H, W)`` in ``[0, 1]``
            (e.g. :meth:`companion.ssl.vae.VAE.decode`); called without gradients.
        latent_dim: the codes' dimension.
        ways, shots, queries: the tasks' shape ``N``, ``K``, ``Q``.
        variant: ``"n"``, ``"ro"`` or ``"oc"`` (module docstring).
        ratio: ``gamma`` of RO and OC (the paper's ``alpha``), in ``(0, 0.5)``.
        noise: ``sigma`` of N.
        anchors: codes to draw the anchors from, ``(M, latent_dim)`` (e.g. the VAE's posterior
            means of the unlabeled images); ``None`` samples the prior.
        min_distance: with prior anchors, redraw the set until every pair's squared distance
            exceeds this (0: accept any).
        seed: seed of the source's generator (ignored if ``generator`` is given).
        generator: a CPU ``torch.Generator``.
    """

    def __init__(self, generate: Callable[[torch.Tensor], torch.Tensor], latent_dim: int,
                 ways: int, shots: int = 1, queries: int = 1, *, variant: str = "ro",
                 ratio: float = 0.4, noise: float = 1.0, anchors: torch.Tensor | None = None,
                 min_distance: float = 0.0, seed: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if not callable(generate):
            raise TypeError(f"generate must map codes to images; got {type(generate).__name__}")
        self.generate = generate
        self.latent_dim = check_int("latent_dim", latent_dim)
        self.ways, self.shots = check_int("ways", ways), check_int("shots", shots)
        self.queries = check_int("queries", queries)
        self.variant = check_choice("variant", variant, VARIANTS)
        if not 0 < ratio < 0.5:
            raise ValueError(f"ratio must be in (0, 0.5), so a sample stays nearer its own "
                             f"anchor; got {ratio}")
        self.ratio, self.noise = float(ratio), check_positive("noise", noise)
        if min_distance < 0:
            raise ValueError(f"min_distance must be >= 0; got {min_distance}")
        self.min_distance = float(min_distance)
        if anchors is not None and (anchors.ndim != 2 or anchors.shape[1] != latent_dim
                                    or len(anchors) < ways):
            raise ValueError(f"anchors must be (M, {latent_dim}) with M >= ways = {ways}; got "
                             f"{tuple(anchors.shape)}")
        self.anchors = None if anchors is None else anchors.detach().cpu().float()
        self.generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)

    def generators(self) -> dict[str, torch.Generator]:
        """The source's one random stream (:class:`companion.protocols.TaskSource`)."""
        return {"tasks": self.generator}

    def draw_anchors(self) -> torch.Tensor:
        """``N`` anchors: codes of random pool images, or prior samples far enough apart.

        Shape:
            - returns: ``(N, latent_dim)``
        """
        g, n = self.generator, self.ways
        if self.anchors is not None:
            return self.anchors[torch.randperm(len(self.anchors), generator=g)[:n]]
        for _ in range(1000):
            z = torch.randn(n, self.latent_dim, generator=g)
            gaps = torch.pdist(z).pow(2)
            if n < 2 or gaps.min() > self.min_distance:
                return z
        raise ValueError(f"1000 draws of {n} prior anchors never had every squared distance "
                         f"above min_distance = {self.min_distance}; lower it")

    def in_class_codes(self, z: torch.Tensor) -> torch.Tensor:
        """``K + Q`` codes near each anchor, by the source's variant.

        Shape:
            - z: ``(N, latent_dim)``; returns ``(N, K + Q, latent_dim)``
        """
        g, m = self.generator, self.shots + self.queries
        z = z[:, None].expand(-1, m, -1)  # (N, K+Q, d)
        if self.variant == "n":
            return z + self.noise * torch.randn(z.shape, generator=g)
        if self.variant == "ro":
            v = torch.randn(z.shape, generator=g)
        else:  # "oc": towards a random other anchor of the task
            n = z.shape[0]
            shift = torch.randint(1, max(n, 2), (n, m), generator=g)
            other = (torch.arange(n)[:, None] + shift) % n  # (N, K+Q), never the row itself
            v = z[:, 0][other]
        return z + self.ratio * (v - z)

    def sample(self) -> Episode:
        """One generated task."""
        n, k, q = self.ways, self.shots, self.queries
        codes = self.in_class_codes(self.draw_anchors())  # (N, K+Q, d)
        with torch.no_grad():
            images = self.generate(codes.flatten(0, 1)).detach().cpu()  # (N*(K+Q), C, H, W)
        images = images.unflatten(0, (n, k + q))
        labels = torch.arange(n)
        return Episode(support_x=images[:, :k].flatten(0, 1),
                       support_y=labels.repeat_interleave(k),
                       query_x=images[:, k:].flatten(0, 1),
                       query_y=labels.repeat_interleave(q))

    def sample_batch(self, tasks: int) -> TaskBatch:
        """``tasks`` generated tasks stacked into a :class:`TaskBatch`."""
        check_int("tasks", tasks)
        return TaskBatch.stack([self.sample() for _ in range(tasks)])
