"""Task sources without labels: where the tasks of meta-learning come from when no human
has labelled the data (chapter 6).

A *task source* is anything with ``sample_batch(n) -> TaskBatch`` and ``generators()``
(:class:`companion.protocols.TaskSource`), so any meta-learner trains on it through
:func:`companion.train.fit` unchanged. Each source here is built from unlabeled images
(:func:`~companion.tasks.pool.unlabeled_images`) and never reads a label:

- :class:`~companion.tasks.umtra.UMTRA`: random images are the classes, their augmentations
  the queries (Khodadadeh et al., 2019);
- :class:`~companion.tasks.cactus.CACTUs`: k-means clusters of an encoder's embedding are the
  classes (Hsu et al., 2019);
- :class:`~companion.tasks.lasium.LASIUM`: classes are neighbourhoods of anchors in a
  generative model's latent space (Khodadadeh et al., 2021);
- :class:`~companion.tasks.mixture.Mixture`: tasks from several unlabeled sources.

:data:`TASKS` is the command line's table (``python -m companion train protonet --tasks
umtra``): one entry per source, read top to bottom, with its recipe per profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from companion.tasks.cactus import CACTUs, kmeans
from companion.tasks.lasium import LASIUM
from companion.tasks.pool import unlabeled_images
from companion.tasks.umtra import UMTRA

__all__ = ["CACTUs", "LASIUM", "TASKS", "TaskSourceEntry", "UMTRA", "kmeans",
           "unlabeled_images"]


@dataclass(frozen=True)
class TaskSourceEntry:
    """One way to make tasks without labels, as the command line knows it.

    ``build(images, ways, shots, queries, seed, embeddings=..., vae=..., **options)`` returns
    the source. ``needs`` says what else it takes: ``"encoder"`` (``embeddings``, the
    features of ``images`` under ``--encoder``) or ``"generator"`` (``vae``, the
    :class:`~companion.ssl.vae.VAE` of ``--generator``). ``presets`` per profile are recipe keys (as in
    :data:`companion.methods.REGISTRY`'s presets, applied over the method's) plus
    ``"options"``, the source's own keyword arguments.
    """

    name: str
    summary: str
    build: Callable[..., Any]
    needs: str | None = None  # None, "encoder" or "generator"
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def preset(self, profile: str) -> dict[str, Any]:
        """This source's recipe in ``profile`` (a copy; ``{}`` when it has none)."""
        return dict(self.presets.get(profile, {}))


def _umtra(images, ways, shots, queries, seed, **options) -> UMTRA:
    return UMTRA(images, ways, shots, queries, seed=seed, **options)


def _cactus(images, ways, shots, queries, seed, *, embeddings, **options) -> CACTUs:
    return CACTUs(images, embeddings, ways, shots, queries, seed=seed, **options)


def _lasium(images, ways, shots, queries, seed, *, vae, **options) -> LASIUM:
    """Anchors are the VAE's posterior means of the pool's images (the official VAE code)."""
    vae.eval()
    with torch.no_grad():
        codes = torch.cat([vae.encode(chunk)[0] for chunk in images.split(512)])
    return LASIUM(vae.decode, vae.config.latent_dim, ways, shots, queries, anchors=codes,
                  seed=seed, **options)


TASKS: dict[str, TaskSourceEntry] = {e.name: e for e in (
    TaskSourceEntry("umtra", "random images as classes, augmentations as queries "
                    "(Khodadadeh et al., 2019)", _umtra),
    TaskSourceEntry("cactus", "k-means clusters of an encoder's embedding as classes "
                    "(Hsu et al., 2019)", _cactus, needs="encoder"),
    TaskSourceEntry("lasium", "neighbourhoods of anchors in a VAE's latent space "
                    "(Khodadadeh et al., 2021)", _lasium, needs="generator"),
)}
"""Every task source of the command line, by name (``labels`` is the labelled default)."""
