"""Method names -> learners: the one place where ``python -m companion train protonet``
becomes ``ProtoNet(Conv4(...), ProtoNetConfig(...))``.

:func:`build_learner` is a plain ``if``/``elif`` over the names in :data:`METHODS`. Each
branch imports its module when it runs, so a missing or broken method breaks only its own
name. Its keyword arguments are plain data, which is why a checkpoint can store them and
``python -m companion eval --checkpoint C`` can call it again to rebuild the learner.

Every method uses the Conv-4 backbone of the papers (:class:`companion.nets.Conv4` with the
package's :class:`~companion.nets.BatchNorm`, which normalises with each batch's statistics
and so is safe under ``torch.func``); gradient-based methods put a linear head with ``ways``
outputs on it.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any

import torch
from torch import nn

from companion.nets import Conv4, linear_head
from companion.profiles import Profile

META_METHODS = ("protonet", "matchingnet", "maml", "fomaml", "anil", "protomaml", "reptile")
SSL_METHODS = ("simclr", "moco", "byol", "simsiam", "barlow", "ae", "dae", "vae", "mae",
               "rotation")
"""Self-supervised methods: they train on unlabeled image batches and are tested with the
few-shot probe (:class:`companion.ssl.learner.SelfSupervised`)."""
METHODS = META_METHODS + SSL_METHODS

FIXED_WAYS = ("maml", "fomaml", "anil", "protomaml", "reptile")
"""Methods whose classifier has exactly ``ways`` outputs: they test on ``ways``-way episodes."""

TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    # Snell et al. 2017 (sec. 3.1): Adam at 1e-3, halved every 2,000 episodes; Vinyals et al.
    # give no optimiser, so Matching Networks use the same.
    "protonet": {"optimizer": "adam", "lr": 1e-3, "schedule": "step", "decay_every": 2_000},
    "matchingnet": {"optimizer": "adam", "lr": 1e-3, "schedule": "step", "decay_every": 2_000},
    # Finn et al. 2017: Adam with beta = 1e-3, constant.
    **{m: {"optimizer": "adam", "lr": 1e-3, "schedule": "none"}
       for m in ("maml", "fomaml", "anil", "protomaml")},
    # Nichol et al. 2018: plain SGD on the Reptile surrogate, epsilon annealed 1 -> 0.
    "reptile": {"optimizer": "sgd", "lr": 1.0, "schedule": "linear"},
    # Self-supervised methods: Adam with a cosine decay, a common choice for small encoders
    # (the papers use LARS or SGD with warm-up on ImageNet-sized batches).
    **{m: {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"} for m in SSL_METHODS},
}
"""Training-loop settings (fields of :class:`companion.train.TrainConfig`) per method."""

SSL_HEADS: dict[str, dict[str, Any]] = {
    "simclr": {"hidden_dim": 256, "out_dim": 128},
    "moco": {"hidden_dim": 256, "out_dim": 128},
    "byol": {"hidden_dim": 512, "out_dim": 128},
    "simsiam": {"proj_dim": 512, "pred_hidden": 128},
    "barlow": {"proj_dim": 512},
}
"""Projector widths for a Conv-4 encoder (64 features), in place of the papers' widths for a
ResNet-50 (2,048 features: SimCLR 2048 -> 128, BYOL 4096 -> 256, Barlow Twins 3 x 8192),
which would dwarf the encoder. ``--set`` overrides them."""


CPU_STEPS: dict[str, int] = {
    "simclr": 470, "moco": 470, "byol": 290, "simsiam": 460, "barlow": 380,
    "ae": 410, "dae": 460, "vae": 420, "mae": 1_800, "rotation": 560,
}
"""Training steps of each self-supervised method in the ``cpu`` profile: what fits in the
profile's 5 minutes on 2 cores with 28x28 images, a Conv-4 of width 64 (MAE: its small ViT)
and batches of :func:`ssl_batch_size` images (measured with ``bench/ssl_table.py``)."""


def ssl_batch_size(method: str, batch_size: int) -> int:
    """Images per step for a self-supervised ``method`` given the profile's ``batch_size``.

    Rotation prediction turns every image into four (Gidaris et al., 2018, sec. 2.2), so
    it takes a quarter of the images and a step costs about what the others' do.
    """
    return max(1, batch_size // 4) if method == "rotation" else batch_size


def ssl_default_steps(method: str, profile: Profile, images: int) -> int:
    """Training steps of a self-supervised ``method`` when none are asked for.

    ``smoke``: the profile's ``train_steps``; ``cpu``: :data:`CPU_STEPS` (a 5-minute
    budget); ``full``: ``profile.epochs`` passes over the ``images`` training images.
    """
    if method not in SSL_METHODS:
        raise ValueError(f"{method!r} is not a self-supervised method; allowed: "
                         f"{', '.join(SSL_METHODS)}")
    if profile.name == "cpu":
        return CPU_STEPS[method]
    if profile.name == "full":
        return math.ceil(profile.epochs * images / ssl_batch_size(method, profile.batch_size))
    return profile.train_steps


def config_class(method: str) -> type:
    """The config dataclass whose fields ``build_learner(method, **kwargs)`` accepts.

    Raises:
        ValueError: unknown ``method``.
    """
    if method == "protonet":
        from companion.meta.protonet import ProtoNetConfig

        return ProtoNetConfig
    if method == "matchingnet":
        from companion.meta.matching import MatchingConfig

        return MatchingConfig
    if method in ("maml", "fomaml", "anil", "protomaml"):
        from companion.meta.maml import MAMLConfig

        return MAMLConfig
    if method == "reptile":
        from companion.meta.reptile import ReptileConfig

        return ReptileConfig
    if method in SSL_METHODS:
        return _ssl_parts(method)[1]
    raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")


def check_config_fields(method: str, fields: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the allowed fields if ``fields`` has an unknown one."""
    allowed = sorted(f.name for f in dataclasses.fields(config_class(method)))
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(f"{method} has no config field {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(allowed)}")


def conv4(in_channels: int, width: int) -> Conv4:
    """The papers' four-block encoder with ``width`` filters and transductive batch norm."""
    return Conv4(in_channels, hidden=width, norm="batch")


def conv4_classifier(ways: int, image_size: int, in_channels: int, width: int) -> nn.Sequential:
    """``nn.Sequential(body, head)``: Conv-4, then a linear layer to ``ways`` logits."""
    body = conv4(in_channels, width)
    return nn.Sequential(body, linear_head(body.out_features(image_size), ways))


def build_learner(method: str, *, ways: int, image_size: int, in_channels: int, width: int,
                  **kwargs: Any) -> nn.Module:
    """A fresh learner for ``method`` on ``ways``-way episodes of ``image_size`` images.

    Args:
        method: one of :data:`METHODS`.
        ways: classes per episode (the size of the gradient-based methods' heads).
        image_size: side of the square input images.
        in_channels: channels of the input images.
        width: filters of every Conv-4 block (64 in the papers).
        **kwargs: fields of the method's config dataclass (``ProtoNetConfig``,
            ``MatchingConfig``, ``MAMLConfig``, ``ReptileConfig``); for ``reptile`` also
            ``seed``, the seed of its inner-minibatch generator.

    Raises:
        ValueError: unknown ``method``.

    Example:
        >>> learner = build_learner("protonet", ways=5, image_size=28, in_channels=1, width=8)
        >>> type(learner).__name__
        'ProtoNet'
    """
    if method == "protonet":
        from companion.meta.protonet import ProtoNet, ProtoNetConfig

        return ProtoNet(conv4(in_channels, width), ProtoNetConfig(**kwargs))
    if method == "matchingnet":
        from companion.meta.matching import MatchingConfig, MatchingNet

        encoder = conv4(in_channels, width)
        return MatchingNet(encoder, MatchingConfig(**kwargs),
                           feature_dim=encoder.out_features(image_size))
    if method in ("maml", "fomaml", "anil"):
        from companion.meta.maml import MAML, MAMLConfig

        variant = {"maml": {}, "fomaml": {"first_order": True}, "anil": {"adapt": "head"}}
        config = MAMLConfig(**{**variant[method], **kwargs})
        return MAML(conv4_classifier(ways, image_size, in_channels, width), config)
    if method == "protomaml":
        from companion.meta.maml import MAMLConfig, ProtoMAML

        return ProtoMAML(conv4(in_channels, width), ways, MAMLConfig(**kwargs))
    if method == "reptile":
        from companion.meta.reptile import Reptile, ReptileConfig

        seed = kwargs.pop("seed", 0)
        return Reptile(conv4_classifier(ways, image_size, in_channels, width),
                       ReptileConfig(**kwargs), seed=seed)
    if method in SSL_METHODS:
        return build_self_supervised(method, image_size=image_size, in_channels=in_channels,
                                     width=width, **kwargs)
    raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")


SSL_CLASSES: dict[str, tuple[str, str, str]] = {
    "simclr": ("simclr", "SimCLR", "SimCLRConfig"),
    "moco": ("moco", "MoCo", "MoCoConfig"),
    "byol": ("byol", "BYOL", "BYOLConfig"),
    "simsiam": ("byol", "SimSiam", "SimSiamConfig"),
    "barlow": ("barlow", "BarlowTwins", "BarlowTwinsConfig"),
    "ae": ("autoencoders", "Autoencoder", "AutoencoderConfig"),
    "dae": ("autoencoders", "DenoisingAutoencoder", "DenoisingConfig"),
    "vae": ("vae", "VAE", "VAEConfig"),
    "mae": ("mae", "MAE", "MAEConfig"),
    "rotation": ("pretext", "RotationPrediction", "RotationConfig"),
}
"""Where each self-supervised method lives: (module of ``companion.ssl``, class, config)."""


def _ssl_parts(method: str) -> tuple[type, type]:
    """(method class, config class) of a self-supervised method, imported on demand."""
    if method not in SSL_CLASSES:
        raise ValueError(f"unknown self-supervised method {method!r}; allowed: "
                         f"{', '.join(SSL_METHODS)}")
    module, cls, config = SSL_CLASSES[method]
    module = importlib.import_module(f"companion.ssl.{module}")
    return getattr(module, cls), getattr(module, config)


def build_self_supervised(method: str, *, image_size: int, in_channels: int, width: int,
                          seed: int = 0, **kwargs: Any) -> nn.Module:
    """A :class:`~companion.ssl.learner.SelfSupervised` learner around ``method``.

    The encoder is Conv-4 with ``width`` filters (MAE: its own small ViT, sized by its
    config); the augmentations are ``AugmentConfig.glyphs()`` for one-channel images and
    ``AugmentConfig.rgb()`` otherwise, for the two-view methods and rotation prediction
    (the autoencoders and MAE see the images as they are). One generator, seeded by
    ``seed``, draws every random number (augmentations, noise, masks, the MoCo queue's
    start), so a resumed run equals an uninterrupted one. ``kwargs`` are fields of the
    method's config; :data:`SSL_HEADS` gives the projector widths unless they are set.
    """
    from companion.data.augment import AugmentConfig
    from companion.ssl.learner import SelfSupervised

    cls, config_cls = _ssl_parts(method)
    generator = torch.Generator().manual_seed(seed)
    if method == "mae":  # the ViT's input size follows the data unless set
        kwargs = {"image_size": image_size, "channels": in_channels, **kwargs}
    config = config_cls(**{**SSL_HEADS.get(method, {}), **kwargs})
    if method == "mae":
        model = cls(config, generator=generator)
    else:
        encoder = conv4(in_channels, width)
        features = encoder.out_features(image_size)
        if method in ("ae", "dae"):
            from companion.ssl.autoencoders import Decoder

            decoder = Decoder(features, in_channels, image_size)
            extra = {"generator": generator} if method == "dae" else {}
            model = cls(encoder, decoder, config, **extra)
        elif method == "vae":
            from companion.ssl.autoencoders import Decoder

            decoder = Decoder(config.latent_dim, in_channels, image_size)
            model = cls(encoder, decoder, features, config, generator=generator)
        elif method == "moco":
            model = cls(encoder, features, config, generator=generator)
        else:
            model = cls(encoder, features, config)
    augment = None
    if model.views == 2 or method == "rotation":
        augment = AugmentConfig.glyphs() if in_channels == 1 else AugmentConfig.rgb()
    return SelfSupervised(model, augment, generator=generator)
