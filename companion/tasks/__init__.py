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
- :class:`~companion.tasks.mixture.Mixture`: tasks from several unlabeled sources;
- :class:`~companion.tasks.rotations.RotatedClasses`: any source's tasks with every class in
  four rotations, as four classes (task augmentation, Ni et al., 2022; chapter 8).

:data:`TASKS` is the command line's table (``python -m companion train protonet --tasks
umtra``): one entry per source, read top to bottom, with its recipe per profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from companion.profiles import GPU_STEPS
from companion.tasks.cactus import CACTUs, kmeans
from companion.tasks.lasium import LASIUM
from companion.tasks.pool import unlabeled_images
from companion.tasks.rotations import RotatedClasses, rotate_classes
from companion.tasks.umtra import UMTRA

__all__ = ["CACTUs", "LASIUM", "RotatedClasses", "TASKS", "TaskSourceEntry", "UMTRA", "kmeans",
           "rotate_classes", "unlabeled_images"]


@dataclass(frozen=True)
class TaskSourceEntry:
    """One way to make tasks without labels, as the command line knows it.

    ``build(images, ways, shots, queries, seed, embeddings=..., vae=..., **options)`` returns
    the source. ``needs`` says what else it takes: ``"encoder"`` (``embeddings``, the
    features of ``images`` under ``--encoder``) or ``"generator"`` (``vae``, the
    :class:`~companion.ssl.vae.VAE` of ``--generator``).

    ``presets`` per profile are recipe keys (as in :data:`companion.methods.REGISTRY`'s
    presets, applied over the method's), ``"options"`` (the source's own keyword arguments)
    and ``"methods"``: per meta-learner, keys that hold for it alone (its steps, say, where
    a task costs more to make than a labelled one).
    """

    name: str
    summary: str
    build: Callable[..., Any]
    needs: str | None = None  # None, "encoder" or "generator"
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def preset(self, profile: str, method: str) -> dict[str, Any]:
        """This source's recipe in ``profile`` for ``method`` (a copy; ``{}`` if none)."""
        preset = dict(self.presets.get(profile, {}))
        per_method = preset.pop("methods", {})
        return {**preset, **per_method.get(method, {})}


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


UMTRA_CPU = {"train_shots": 1, "options": {"augment_support": True},
             "methods": {"protonet": {"steps": 2_400}, "maml": {"steps": 950}}}
"""UMTRA's 5-minute recipe: the method's own episodes (ProtoNet's 20 ways and 5 queries,
MAML's 5 ways and 1 query), one shot, and the support augmented too (measured in
``bench/unsupervised_table.py``: on Omniglot it beats the paper's unaugmented support, since
the query and support then differ in the same ways). ProtoNet takes 2,400 steps where
labelled episodes take 2,700, and MAML 950 where they take 1,300: making a task costs
about one augmentation per image."""

CACTUS_CPU = {"train_queries": 5, "rotations": False,
              "options": {"clusters": 500, "partitions": 10},
              "methods": {"protonet": {"steps": 2_100}}}
"""CACTUs' 5-minute recipe: the paper's 500 clusters for Omniglot, 10 partitions instead of
100 and no rotated copies (embedding and clustering are part of the stage's 5 minutes), and
2,100 ProtoNet steps to leave them that time (bench/unsupervised_table.py records the
whole stage's wall time)."""

LASIUM_CPU = {"rotations": False, "methods": {"protonet": {"steps": 1_700}}}
"""LASIUM's 5-minute recipe: the VAE decodes every image of every task, so a step costs
about 40% more than a labelled one (2,700 steps took 376 s in bench/unsupervised_table.py);
1,700 steps, and anchors from the 19,280 unrotated images."""



def _with_gpu(presets: dict[str, Any]) -> dict[str, Any]:
    """``presets`` plus a ``gpu`` one: the ``cpu`` recipe with each method's steps times
    :data:`~companion.profiles.GPU_STEPS`, as the methods' own ``gpu`` presets."""
    cpu = presets["cpu"]
    scaled = {name: {**recipe, "steps": GPU_STEPS * recipe["steps"]}
              for name, recipe in cpu["methods"].items()}
    return {**presets, "gpu": {**cpu, "methods": scaled}}


TASKS: dict[str, TaskSourceEntry] = {e.name: e for e in (
    TaskSourceEntry("umtra", "random images as classes, augmentations as queries "
                    "(Khodadadeh et al., 2019)", _umtra,
                    presets=_with_gpu({"smoke": {"train_queries": 5}, "cpu": UMTRA_CPU})),
    TaskSourceEntry("cactus", "k-means clusters of an encoder's embedding as classes "
                    "(Hsu et al., 2019)", _cactus, needs="encoder",
                    presets=_with_gpu({"smoke": {"train_queries": 5, "rotations": False,
                                                 "options": {"clusters": 50, "partitions": 2}},
                                       "cpu": CACTUS_CPU})),
    TaskSourceEntry("lasium", "neighbourhoods of anchors in a VAE's latent space "
                    "(Khodadadeh et al., 2021)", _lasium, needs="generator",
                    presets=_with_gpu({"smoke": {"train_queries": 5}, "cpu": LASIUM_CPU})),
)}
"""Every task source of the command line, by name (``labels`` is the labelled default)."""
