"""A self-supervised method as a learner of the shared training loop.

:func:`companion.train.fit` trains anything with ``meta_loss(batch) -> (loss, logs)`` and
evaluates anything with ``classify(episode) -> logits``. :class:`SelfSupervised` gives a
self-supervised method (SimCLR, MoCo, BYOL, SimSiam, Barlow Twins, the autoencoders, MAE,
rotation prediction) those two methods, by composition:

- ``meta_loss(images)``: augment the unlabeled batch (two views for the methods whose
  ``views`` is 2, one augmented batch, or none, for the others) with the learner's own
  ``torch.Generator``, then return the method's ``loss``, its logs turned into Python
  floats here (the methods return 0-dim tensors, so that their losses stay pure functions
  that ``torch.func.vmap`` can batch; this is the logging boundary);
- ``after_step(step, total_steps)``: the method's (the MoCo queue and the BYOL target move
  there; BYOL's cosine momentum schedule reads the step and the run's length);
- ``generators()``: every random stream, by name: the augmentations' (``"views"``) and the
  method's own (a denoising autoencoder's noise, a VAE's ``eps``, an MAE's masks) under
  ``"method/..."``, so that :func:`~companion.train.fit` checkpoints all of them;
- ``classify(episode)``: the few-shot probe, a prototype classifier on the frozen encoder
  (:func:`companion.evaluate.prototype_probe`), so validation during training, ``python -m
  companion eval`` and the meta-learners' tables all measure it the same way.

Labels never reach ``meta_loss``: the batches come from an
:class:`~companion.data.batches.ImageBatchSampler`.

Example:
    >>> from companion.nets import Conv4
    >>> from companion.ssl.simclr import SimCLR, SimCLRConfig
    >>> from companion.data.augment import AugmentConfig
    >>> method = SimCLR(Conv4(1, hidden=8), 8, SimCLRConfig(hidden_dim=16, out_dim=8))
    >>> learner = SelfSupervised(method, AugmentConfig.glyphs(), seed=0)
    >>> loss, logs = learner.meta_loss(torch.rand(4, 1, 28, 28))
    >>> sorted(logs)
    ['accuracy', 'loss']
"""

from __future__ import annotations

import torch
from torch import nn

from companion.checks import check_choice
from companion.data.augment import AugmentConfig, augment, two_views
from companion.data.episodes import Episode
from companion.evaluate import prototype_probe
from companion.meta.protonet import METRICS
from companion.protocols import generators_of, prefixed


class SelfSupervised(nn.Module):
    """A self-supervised ``method`` with augmentations, trainable by ``fit``.

    Args:
        method: a module with ``views`` (1 or 2), ``encoder``, ``loss(x)`` or
            ``loss(x1, x2)`` returning ``(loss, logs)``, ``after_step(step, total_steps)``
            and, if it draws random numbers, ``generators()``.
        augment_config: the augmentations (``None``: the images as they are; two-view
            methods need augmentations, or both views would be identical).
        seed: seed of the learner's generator, which draws every augmentation (ignored if
            ``generator`` is given); :func:`~companion.train.fit` checkpoints its state.
        generator: a CPU ``torch.Generator``.
        metric: distance of the few-shot probe, ``"cosine"`` or ``"sqeuclidean"``.

    Shape:
        - meta_loss: images ``(B, C, H, W)``; classify: logits ``(N*Q, N)``
    """

    def __init__(self, method: nn.Module, augment_config: AugmentConfig | None = None, *,
                 seed: int = 0, generator: torch.Generator | None = None,
                 metric: str = "cosine") -> None:
        super().__init__()
        views = getattr(method, "views", None)
        if views not in (1, 2) or not isinstance(getattr(method, "encoder", None), nn.Module):
            raise TypeError(f"method must be a self-supervised module with views 1 or 2 and "
                            f"an encoder; got {type(method).__name__}")
        if views == 2 and augment_config is None:
            raise ValueError(f"{type(method).__name__} compares two augmented views; "
                             "give an augment_config")
        if augment_config is not None and not isinstance(augment_config, AugmentConfig):
            raise TypeError(f"augment_config must be an AugmentConfig or None; "
                            f"got {type(augment_config).__name__}")
        check_choice("metric", metric, METRICS)
        self.method = method
        self.augment_config = augment_config
        self.metric = metric
        self.generator = generator or torch.Generator().manual_seed(seed)

    @property
    def encoder(self) -> nn.Module:
        """The encoder the method trains: images ``(B, C, H, W)`` -> features ``(B, D)``."""
        return self.method.encoder

    def meta_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on augmented views of an unlabeled batch, and its logs as floats.

        Shape:
            - images: ``(B, C, H, W)``; returns: a scalar and ``{name: float}``
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W); got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        if self.method.views == 2:
            x1, x2 = two_views(images, self.augment_config, self.generator)
            loss, logs = self.method.loss(x1, x2)
        else:
            if self.augment_config is not None:
                images = augment(images, self.augment_config, self.generator)
            loss, logs = self.method.loss(images)
        return loss, {name: float(value) for name, value in logs.items()}  # the logging boundary

    def after_step(self, step: int, total_steps: int) -> None:
        """The method's update after optimiser step ``step`` of ``total_steps`` (EMA targets,
        queues); see :mod:`companion.protocols`."""
        self.method.after_step(step, total_steps)

    def generators(self) -> dict[str, torch.Generator]:
        """``{"views": augmentations, "method/<name>": the method's own streams}``.

        A method's stream that is the learner's own generator (one seed for everything, as
        :mod:`companion.methods` builds them) is listed once, as ``"views"``.
        """
        own = {name: g for name, g in generators_of(self.method).items() if g is not self.generator}
        return {"views": self.generator, **prefixed("method", own)}

    def classify(self, episode: Episode) -> torch.Tensor:
        """The few-shot probe: prototypes of the frozen encoder's features."""
        return prototype_probe(self.encoder, episode, self.metric)
