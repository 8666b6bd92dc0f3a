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
from typing import Any

from torch import nn

from companion.nets import Conv4, linear_head

METHODS = ("protonet", "matchingnet", "maml", "fomaml", "anil", "protomaml", "reptile")

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
}
"""Training-loop settings (fields of :class:`companion.train.TrainConfig`) per method."""


def config_class(method: str) -> type:
    """The config dataclass whose fields ``build_learner(method, **kwargs)`` accepts.

    Raises:
        ValueError: unknown ``method``.
    """
    if method in ("protonet",):
        from companion.meta.protonet import ProtoNetConfig as config
    elif method == "matchingnet":
        from companion.meta.matching import MatchingConfig as config
    elif method in ("maml", "fomaml", "anil", "protomaml"):
        from companion.meta.maml import MAMLConfig as config
    elif method == "reptile":
        from companion.meta.reptile import ReptileConfig as config
    else:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    return config


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
    raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
