"""The registry: every method the command line and the benchmark tables know, one entry each.

An entry (:class:`Method`) says everything the rest of the package needs to know about a
method, in one place:

- ``config``: its frozen config dataclass (only what the method reads; ``--set FIELD=VALUE``
  sets exactly these fields) and ``defaults``, the fields this entry sets differently from
  the dataclass (``fomaml`` is MAML with ``first_order=True``);
- ``build``: how to make a fresh learner from a config and the data's shape (:class:`Arch`);
- ``trains_on``: ``"episodes"`` (labelled N-way K-shot tasks from an
  :class:`~companion.data.episodes.EpisodeSampler`), ``"images"`` (unlabeled batches from
  an :class:`~companion.data.batches.ImageBatchSampler`) or ``"hierarchy"`` (images with a
  coarse and a fine label, :class:`~companion.guided.maxl.HierarchyBatches`: MAXL);
- ``training``: the paper's optimiser, as fields of :class:`companion.train.TrainConfig`;
- ``presets``: per compute profile, the training recipe that ``python -m companion train``
  uses when no flag says otherwise. The ``cpu`` presets are the tuned 5-minute recipes of
  ``bench/omniglot_table.py`` and ``bench/ssl_table.py`` (which read them from here), so the
  README's command reproduces the tables' numbers in the profile's budget; the ``gpu``
  presets are the same recipes with :data:`GPU_STEPS` times the steps at the profile's width
  (:func:`_with_gpu`: every method with a ``cpu`` preset has one); the ``full`` presets are
  the papers' episode shapes and meta-batches. A method without a preset for a profile (every
  method in ``smoke``, the self-supervised ones in ``full``) takes the profile's sizes.

Adding a method is its module, its tests and one entry in :data:`REGISTRY`, read top to
bottom. The command line takes its choices, help text and errors from here.

A preset is a plain dict. Its keys are fields of :class:`~companion.train.TrainConfig`
(``steps``, ``meta_batch``, ``lr``, ``schedule``, ...), plus the training episodes' shape
(``train_ways``, ``train_shots``, ``train_queries``: by default the test episodes' ``--ways``
/ ``--shots`` / ``--queries``), ``rotations`` (Omniglot only: 90/180/270-degree rotations as
new training classes), ``set`` (config fields) and ``width`` (the Conv-4's filters, where a
recipe needs fewer than the profile's to fit its budget). What a preset leaves out comes from the
profile (:class:`companion.profiles.Profile`: ``train_steps``, ``meta_batch``,
``batch_size``, and for a self-supervised method in ``full``, ``epochs`` passes over the
training images).

Every Conv-4 is the papers' four-block encoder. The meta-learners use the package's
transductive :class:`~companion.nets.BatchNorm` (batch statistics in training and at test
time, as in the authors' code; safe under ``torch.func``); the self-supervised encoders keep
running statistics, so that a probe's features of an image do not depend on the other
images in its batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from companion.checks import check_choice, check_int
from companion.data.augment import AugmentConfig
from companion.guided.maxl import MAXL, MAXLConfig
from companion.guided.ssl_aux import WithAuxiliary
from companion.meta.maml import MAML, MAMLConfig, ProtoMAML
from companion.meta.matching import MatchingConfig, MatchingNet
from companion.meta.protonet import ProtoNet, ProtoNetConfig
from companion.meta.reptile import Reptile, ReptileConfig
from companion.nets import Conv4, ResNet12, linear_head
from companion.profiles import GPU_STEPS, Profile
from companion.ssl.autoencoders import (
    Autoencoder,
    AutoencoderConfig,
    Decoder,
    DenoisingAutoencoder,
    DenoisingConfig,
)
from companion.ssl.barlow import BarlowTwins, BarlowTwinsConfig
from companion.ssl.byol import BYOL, BYOLConfig, SimSiam, SimSiamConfig
from companion.ssl.learner import SelfSupervised
from companion.ssl.mae import MAE, MAEConfig
from companion.ssl.moco import MoCo, MoCoConfig
from companion.ssl.pretext import RotationConfig, RotationPrediction
from companion.ssl.simclr import SimCLR, SimCLRConfig
from companion.ssl.vae import VAE, VAEConfig
from companion.tasks.psco import PsCo, PsCoConfig

TRAINS_ON = ("episodes", "images", "hierarchy")
EPISODE_KEYS = ("train_ways", "train_shots", "train_queries")
PRESET_KEYS = (*EPISODE_KEYS, "rotations", "set", "width")
"""Preset keys besides the fields of :class:`companion.train.TrainConfig`."""


@dataclass(frozen=True)
class Arch:
    """The data's shape and the backbone's size, the same for every method."""

    ways: int  # classes per training episode: the size of a gradient-based method's head
    image_size: int  # side of the square input images
    in_channels: int  # 1 for Omniglot and glyphs, 3 for colour images
    width: int  # filters of every Conv-4 block (64 in the papers); ResNet-12's first block
    seed: int = 0  # seed of the learner's own generator (augmentations, minibatches)
    backbone: str = "conv4"  # a name in BACKBONES


@dataclass(frozen=True)
class Method:
    """One registry entry (see the module docstring)."""

    name: str
    summary: str  # one line for ``--help``
    config: type  # the method's config dataclass
    build: Callable[[Any, Arch], nn.Module]  # (config, arch) -> a fresh learner
    trains_on: str  # "episodes", "images" or "hierarchy"
    training: Mapping[str, Any]  # TrainConfig fields: the paper's optimiser
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # config fields set by this entry
    arch_fields: Callable[[Arch], dict[str, Any]] | None = None  # config fields from the data
    fixed_ways: bool = False  # its head has exactly `ways` outputs: tests on `ways`-way only
    images_per_example: int = 1  # images each training example becomes (rotation: 4)
    own_backbone: bool = False  # its network is its own (the MAE's ViT), not one of BACKBONES

    def fields(self) -> tuple[str, ...]:
        """The config fields ``--set`` accepts, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(self.config))

    def preset(self, profile: str) -> dict[str, Any]:
        """This method's recipe in ``profile`` (a copy; ``{}`` when it has none)."""
        return dict(self.presets.get(profile, {}))

    def batch(self, batch_size: int) -> int:
        """Images per step for a profile's ``batch_size`` (a self-supervised method).

        Rotation prediction turns every image into four (Gidaris et al., 2018, sec. 2.2), so
        it takes a quarter of the images and a step costs about what the others' do.
        """
        return max(1, batch_size // self.images_per_example)

    def default_steps(self, profile: Profile, images: int) -> int:
        """Training steps when neither a flag nor the preset's ``steps`` gives them: the
        profile's ``train_steps``, or for a self-supervised method in the ``full`` profile,
        ``profile.epochs`` passes over its ``images`` training images."""
        if self.trains_on == "images" and profile.name == "full":
            batch = self.preset(profile.name).get("meta_batch", self.batch(profile.batch_size))
            return math.ceil(profile.epochs * images / batch)
        return profile.train_steps


# ---- builders: (config, arch) -> learner -------------------------------------------------

def conv4(in_channels: int, width: int, *, running_stats: bool = False) -> Conv4:
    """The papers' four-block encoder with ``width`` filters.

    ``running_stats=False``: transductive batch norm (the meta-learners); ``True``: running
    statistics in ``eval()`` (the self-supervised encoders, so probe features are per image).
    """
    return Conv4(in_channels, hidden=width, norm="batch", track_running_stats=running_stats)


def conv4_classifier(ways: int, image_size: int, in_channels: int, width: int) -> nn.Sequential:
    """``nn.Sequential(body, head)``: Conv-4, then a linear layer to ``ways`` logits."""
    return image_classifier(Arch(ways, image_size, in_channels, width))


BACKBONES = ("conv4", "resnet12")
"""The image encoders every method but the MAE (its own ViT) is built on: the papers' Conv-4,
the default, and ResNet-12 (TADAM, Oreshkin et al., 2018; MetaOptNet, Lee et al., 2019), the
usual backbone on CIFAR-FS and miniImageNet. ``width`` is ResNet-12's first block; the
blocks widen as 1 : 2.5 : 5 : 10, so width 64 gives MetaOptNet's 64-160-320-640."""
FULL_BACKBONE = {"cifar_fs": "resnet12"}
"""The ``full`` profile's backbone on a dataset whose papers train one other than Conv-4:
ResNet-12 on CIFAR-FS, as MetaOptNet (Lee et al., 2019, sec. 4) does there."""


def default_backbone(method: Method, profile: str, dataset: str) -> str:
    """The backbone ``train`` builds ``method`` on when ``--backbone`` is not given:
    :data:`FULL_BACKBONE`'s for ``dataset`` in the ``full`` profile, else Conv-4 (and always
    Conv-4 for a method with its own network, which ignores it)."""
    if profile == "full" and not method.own_backbone:
        return FULL_BACKBONE.get(dataset, "conv4")
    return "conv4"


def image_encoder(arch: Arch, *, running_stats: bool = False) -> nn.Module:
    """``arch.backbone`` with ``arch.width``: a :class:`~companion.nets.Conv4` (see
    :func:`conv4`) or a :class:`~companion.nets.ResNet12` with the same batch norm."""
    if arch.backbone == "conv4":
        return conv4(arch.in_channels, arch.width, running_stats=running_stats)
    check_choice("backbone", arch.backbone, BACKBONES)
    widths = [round(arch.width * scale) for scale in (1, 2.5, 5, 10)]
    return ResNet12(arch.in_channels, widths, norm="batch", track_running_stats=running_stats)


def image_classifier(arch: Arch) -> nn.Sequential:
    """``nn.Sequential(body, head)``: :func:`image_encoder`, then a linear layer to ``arch.ways``
    logits (MAML's and Reptile's network)."""
    body = image_encoder(arch)
    return nn.Sequential(body, linear_head(body.out_features(arch.image_size), arch.ways))


def _protonet(config: ProtoNetConfig, arch: Arch) -> ProtoNet:
    return ProtoNet(image_encoder(arch), config)


def _matchingnet(config: MatchingConfig, arch: Arch) -> MatchingNet:
    body = image_encoder(arch)
    return MatchingNet(body, config, feature_dim=body.out_features(arch.image_size))


def _maml(config: MAMLConfig, arch: Arch) -> MAML:
    return MAML(image_classifier(arch), config)


def _protomaml(config: MAMLConfig, arch: Arch) -> ProtoMAML:
    return ProtoMAML(image_encoder(arch), arch.ways, config)


def _reptile(config: ReptileConfig, arch: Arch) -> Reptile:
    return Reptile(image_classifier(arch), config, seed=arch.seed)


def _self_supervised(make: Callable[[Any, Arch, nn.Module, int, torch.Generator], nn.Module],
                     *, augmented: bool) -> Callable[[Any, Arch], SelfSupervised]:
    """A builder that wraps ``make(config, arch, encoder, features, generator)`` in
    :class:`SelfSupervised`, with the glyph (one channel) or colour augmentations when
    ``augmented``. One generator, seeded by ``arch.seed``, draws every random number of the
    method (views, noise, masks, the MoCo queue's start), so a resumed run equals an
    uninterrupted one."""

    def build(config: Any, arch: Arch) -> SelfSupervised:
        generator = torch.Generator().manual_seed(arch.seed)
        body = image_encoder(arch, running_stats=True)
        model = make(config, arch, body, body.out_features(arch.image_size), generator)
        augment = None
        if augmented:
            augment = AugmentConfig.glyphs() if arch.in_channels == 1 else AugmentConfig.rgb()
        return SelfSupervised(model, augment, generator=generator)

    return build


def _maxl(config: MAXLConfig, arch: Arch) -> MAXL:
    """MAXL's two encoders (the label generator only for ``labels="maxl"``); ``arch.ways`` is the
    number of primary classes, and both auxiliary heads have ``psi`` classes per primary
    class (the human labels are numbered that way by
    :func:`~companion.guided.maxl.hierarchy_split`)."""
    body = image_encoder(arch, running_stats=True)
    label_encoder = image_encoder(arch, running_stats=True) if config.labels == "maxl" else None
    return MAXL(body, label_encoder, body.out_features(arch.image_size), arch.ways,
                arch.ways * config.psi, config)


def _mae(config: MAEConfig, arch: Arch) -> SelfSupervised:
    """MAE sees the images as they are; its one generator draws the masks."""
    generator = torch.Generator().manual_seed(arch.seed)
    return SelfSupervised(MAE(config, generator=generator), None, generator=generator)


def _decoder(arch: Arch, features: int) -> Decoder:
    return Decoder(features, arch.in_channels, arch.image_size)


# ---- shared recipes ------------------------------------------------------------------------

SNELL_OPTIMISER = {"optimizer": "adam", "lr": 1e-3, "schedule": "step", "decay_every": 2_000}
"""Snell et al. 2017 (sec. 3.1): Adam at 1e-3, halved every 2,000 episodes. Vinyals et al.
give no optimiser, so Matching Networks use the same."""
FINN_OPTIMISER = {"optimizer": "adam", "lr": 1e-3, "schedule": "none"}
"""Finn et al. 2017 (sec. 5 and their code): Adam with beta = 1e-3, constant."""
SSL_OPTIMISER = {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"}
"""Self-supervised methods: Adam with a cosine decay, a common choice for small encoders (the
papers use LARS or SGD with warm-up on ImageNet-sized batches)."""

METRIC_CPU = {"train_ways": 20, "train_queries": 5, "meta_batch": 1, "schedule": "cosine",
              "rotations": True}
"""The 5-minute recipe of the metric learners (``bench/omniglot_table.py``): 20-way training
(Snell et al., sec. 3.1, "higher way in training than at test"; their 60-way costs several
times more per step, too much for 5 minutes), 5 queries per class, one episode per step, a cosine
decay to 0 and the rotated characters as new classes (Santoro et al., 2016; Vinyals et al.,
2016)."""
GRADIENT_CPU = {"train_queries": 1, "meta_batch": 8, "rotations": True,
                "set": {"inner_steps_test": 10}}
"""The 5-minute recipe of the gradient-based learners: 1 query per class in training, as
MAML's code does (``num_samples_per_class = 2 * update_batch_size``); 8 tasks per step
instead of 32 (more, noisier steps in the same time); Adam at the paper's 1e-3; 10 inner
steps at test instead of 3."""
GRADIENT_FULL = {"train_queries": 1, "meta_batch": 32, "steps": 60_000}
"""Finn et al.'s Omniglot protocol (sec. 5.2 and their code's README): 32 tasks per step,
60,000 meta-steps, one query per class."""
SSL_HEADS = {
    "simclr": {"hidden_dim": 256, "out_dim": 128},
    "moco": {"hidden_dim": 256, "out_dim": 128},
    "byol": {"hidden_dim": 512, "out_dim": 128},
    "simsiam": {"proj_dim": 512, "pred_hidden": 128},
    "barlow": {"proj_dim": 512},
}
"""Projector widths for a Conv-4 encoder (64 features), in place of the papers' widths for a
ResNet-50 (2,048 features: SimCLR 2048 -> 128, BYOL 4096 -> 256, Barlow Twins 3 x 8192),
which would dwarf the encoder."""


def _with_gpu(presets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``presets`` plus a ``gpu`` one: the ``cpu`` recipe with :data:`GPU_STEPS` times its
    steps, at the profile's width (a ``cpu`` recipe's narrower ``width`` is dropped)."""
    cpu = presets["cpu"]
    gpu = {k: v for k, v in cpu.items() if k != "width"}
    return {**presets, "gpu": {**gpu, "steps": GPU_STEPS * cpu["steps"]}}


def _ssl_cpu(steps: int, **fields: Any) -> dict[str, Any]:
    """A self-supervised method's 5-minute recipe: ``steps`` steps of the profile's batch
    (what fits in 5 minutes on 2 cores with 28x28 images and a Conv-4 of width 64, measured
    with ``bench/ssl_table.py``) and the config ``fields`` that recipe sets."""
    return {"steps": steps, **({"set": fields} if fields else {})}


# ---- the registry ----------------------------------------------------------------------------

REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("protonet", "Prototypical Networks (Snell et al., 2017)", ProtoNetConfig,
           _protonet, "episodes", SNELL_OPTIMISER,
           presets=_with_gpu({"cpu": {**METRIC_CPU, "steps": 2_700},
                              # Snell et al. sec. 3.1: 60-way episodes with 5 queries per class
                              "full": {"train_ways": 60, "train_queries": 5, "meta_batch": 1}})),
    Method("matchingnet", "Matching Networks (Vinyals et al., 2016)", MatchingConfig,
           _matchingnet, "episodes", SNELL_OPTIMISER,
           # scale 10: Conv-4 features are non-negative, so cosines lie in [0, 1] and with
           # the paper's scale 1 the attention of eq. 2 stays nearly uniform
           presets=_with_gpu({"cpu": {**METRIC_CPU, "steps": 2_900, "set": {"scale": 10.0}},
                              "full": {"meta_batch": 1}})),
    # 1,300 steps: 1,400 ran past the 5-minute budget on a slower day (bench/omniglot_table.py
    # records each run's training time).
    Method("maml", "MAML, second order (Finn et al., 2017)", MAMLConfig, _maml, "episodes",
           FINN_OPTIMISER, presets=_with_gpu({"cpu": {**GRADIENT_CPU, "steps": 1_300},
                                              "full": GRADIENT_FULL}), fixed_ways=True),
    Method("fomaml", "first-order MAML (Finn et al., 2017, sec. 5.2)", MAMLConfig, _maml,
           "episodes", FINN_OPTIMISER, defaults={"first_order": True},
           presets=_with_gpu({"cpu": {**GRADIENT_CPU, "steps": 2_700}, "full": GRADIENT_FULL}),
           fixed_ways=True),
    Method("anil", "ANIL: MAML adapting the head only (Raghu et al., 2020)", MAMLConfig,
           _maml, "episodes", FINN_OPTIMISER, defaults={"adapt": "head"},
           presets=_with_gpu({"cpu": {**GRADIENT_CPU, "steps": 2_900}, "full": GRADIENT_FULL}),
           fixed_ways=True),
    # Proto-MAML's inner step at 0.1, not MAML's 0.4: its head starts at the prototypes, so
    # a large first step throws away what the initialisation knows (chapter 3 uses 0.1 too).
    Method("protomaml", "Proto-MAML (Triantafillou et al., 2020)", MAMLConfig, _protomaml,
           "episodes", FINN_OPTIMISER,
           presets=_with_gpu({"cpu": {**GRADIENT_CPU, "steps": 1_900,
                                      "set": {**GRADIENT_CPU["set"], "first_order": True,
                                              "inner_lr": 0.1}},
                              "full": GRADIENT_FULL}), fixed_ways=True),
    # Nichol et al. 2018 and openai/supervised-reptile's README: plain SGD on the surrogate
    # with epsilon annealed linearly 1 -> 0, 10 shots per class in the inner loop, 5 tasks
    # per meta-step, 100,000 meta-steps.
    Method("reptile", "Reptile (Nichol et al., 2018)", ReptileConfig, _reptile, "episodes",
           {"optimizer": "sgd", "lr": 1.0, "schedule": "linear"},
           presets=_with_gpu({"cpu": {"train_shots": 10, "train_queries": 1, "meta_batch": 5,
                                      "steps": 650, "rotations": True},
                              "full": {"train_shots": 10, "train_queries": 1, "meta_batch": 5,
                                       "steps": 100_000}}), fixed_ways=True),
    # SimCLR at temperature 0.2 (0.5, the paper's CIFAR value, learns slower in 5 minutes;
    # MoCo v2 uses 0.2 too).
    Method("simclr", "SimCLR (Chen et al., 2020)", SimCLRConfig,
           _self_supervised(lambda c, a, e, f, g: SimCLR(e, f, c), augmented=True),
           "images", SSL_OPTIMISER, defaults=SSL_HEADS["simclr"],
           presets=_with_gpu({"cpu": _ssl_cpu(470, temperature=0.2)})),
    # MoCo's key encoder and BYOL's target at momentum 0.99 instead of 0.999 / 0.996: with a
    # few hundred steps, a target averaging the last 1,000 would barely leave its start.
    # (BYOL's recipe keeps it constant, as measured in bench/ssl_table.py; the config's
    # default is the paper's cosine schedule to 1.)
    Method("moco", "MoCo v2 (He et al., 2020; Chen et al., 2020)", MoCoConfig,
           _self_supervised(lambda c, a, e, f, g: MoCo(e, f, c, generator=g), augmented=True),
           "images", SSL_OPTIMISER, defaults=SSL_HEADS["moco"],
           presets=_with_gpu({"cpu": _ssl_cpu(470, momentum=0.99)})),
    Method("byol", "BYOL (Grill et al., 2020)", BYOLConfig,
           _self_supervised(lambda c, a, e, f, g: BYOL(e, f, c), augmented=True),
           "images", SSL_OPTIMISER, defaults=SSL_HEADS["byol"],
           presets=_with_gpu({"cpu": _ssl_cpu(290, momentum=0.99,
                                              momentum_schedule="constant")})),
    Method("simsiam", "SimSiam (Chen & He, 2021)", SimSiamConfig,
           _self_supervised(lambda c, a, e, f, g: SimSiam(e, f, c), augmented=True),
           "images", SSL_OPTIMISER, defaults=SSL_HEADS["simsiam"],
           presets=_with_gpu({"cpu": _ssl_cpu(460)})),
    Method("barlow", "Barlow Twins (Zbontar et al., 2021)", BarlowTwinsConfig,
           _self_supervised(lambda c, a, e, f, g: BarlowTwins(e, f, c), augmented=True),
           "images", SSL_OPTIMISER, defaults=SSL_HEADS["barlow"],
           presets=_with_gpu({"cpu": _ssl_cpu(380)})),
    Method("ae", "autoencoder", AutoencoderConfig,
           _self_supervised(lambda c, a, e, f, g: Autoencoder(e, _decoder(a, f), c),
                            augmented=False),
           "images", SSL_OPTIMISER, presets=_with_gpu({"cpu": _ssl_cpu(410)})),
    Method("dae", "denoising autoencoder (Vincent et al., 2008)", DenoisingConfig,
           _self_supervised(lambda c, a, e, f, g: DenoisingAutoencoder(
               e, _decoder(a, f), c, generator=g), augmented=False),
           "images", SSL_OPTIMISER, presets=_with_gpu({"cpu": _ssl_cpu(460)})),
    Method("vae", "variational autoencoder (Kingma & Welling, 2014)", VAEConfig,
           _self_supervised(lambda c, a, e, f, g: VAE(
               e, _decoder(a, c.latent_dim), f, c, generator=g), augmented=False),
           "images", SSL_OPTIMISER, presets=_with_gpu({"cpu": _ssl_cpu(420)})),
    # MAE with per-patch normalised targets in the cpu recipe (He et al., 2022, sec. 3, the
    # setting of their pre-training runs; the config's default is off, as in their code).
    Method("mae", "masked autoencoder, its own small ViT (He et al., 2022)", MAEConfig,
           _mae, "images", SSL_OPTIMISER, own_backbone=True,
           arch_fields=lambda a: {"image_size": a.image_size, "channels": a.in_channels},
           presets=_with_gpu({"cpu": _ssl_cpu(1_800, norm_pix_loss=True)})),
    # PsCo: chapter 6's meta-learning without labels that makes its own N-way K-shot task
    # from a MoCo queue at every step; it trains on unlabeled images like chapter 5's methods.
    Method("psco", "PsCo: pseudo-labelled few-shot tasks from a queue (Jang et al., 2023)",
           PsCoConfig, _self_supervised(lambda c, a, e, f, g: PsCo(e, f, c, generator=g),
                                        augmented=True),
           "images", SSL_OPTIMISER, presets=_with_gpu({"cpu": _ssl_cpu(440)})),
    Method("rotation", "rotation prediction (Gidaris et al., 2018)", RotationConfig,
           _self_supervised(lambda c, a, e, f, g: RotationPrediction(e, f, c), augmented=True),
           "images", SSL_OPTIMISER, images_per_example=4,
           presets=_with_gpu({"cpu": _ssl_cpu(560)})),
    # MAXL: chapter 7's auxiliary labels invented by a meta-learner. Trains on the
    # hierarchy of guided.maxl.hierarchy_split (20 alphabets of 5 characters) and is tested
    # on the primary task, the alphabet of held-out drawings. Plain SGD with the virtual
    # step at the same rate, as in the paper (their 0.01 for a VGG-16; 0.1 for this Conv-4,
    # with a cosine decay), which beat Adam at 1e-3 for every variant (bench/maxl_table.py,
    # chapter 7). Width 32 because the virtual step costs two more passes.
    Method("maxl", "MAXL: auxiliary labels generated by a meta-learner (Liu et al., 2019)",
           MAXLConfig, _maxl, "hierarchy", {"optimizer": "sgd", "lr": 0.1, "schedule": "cosine"},
           presets=_with_gpu({"cpu": {"steps": 1_000, "meta_batch": 64, "width": 32,
                                      "set": {"inner_lr": 0.1}},
                              "full": {"steps": 10_000, "meta_batch": 64,
                                       "set": {"inner_lr": 0.1}}})),
)}
"""Every method, by the name the command line uses."""

METHODS = tuple(REGISTRY)


def get(name: str) -> Method:
    """The registry entry of ``name``; a ``ValueError`` listing the methods otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def names(trains_on: str) -> tuple[str, ...]:
    """The methods that train on ``"episodes"`` or on ``"images"``."""
    check_choice("trains_on", trains_on, TRAINS_ON)
    return tuple(m.name for m in REGISTRY.values() if m.trains_on == trains_on)


def check_config_fields(method: str, fields: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` naming the allowed fields if ``fields`` has an unknown one."""
    allowed = sorted(get(method).fields())
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(f"{method} has no config field {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(allowed)} (training-loop settings such as the "
                         "learning rate and steps are flags: --lr, --steps, --meta-batch, ...)")


AUXILIARIES = ("rotation",)
"""Self-supervised losses that can join an episodic learner (``build_learner(aux=...)``)."""


def build_learner(method: str, *, ways: int, image_size: int, in_channels: int, width: int,
                  seed: int = 0, backbone: str = "conv4", aux: str | None = None,
                  aux_weight: float | str = 1.0, **fields: Any) -> nn.Module:
    """A fresh learner for ``method`` on ``ways``-way episodes of ``image_size`` images.

    Its keyword arguments are plain data, which is why a checkpoint can store them and
    ``python -m companion eval --checkpoint C`` can call this again to rebuild the learner.

    Args:
        method: a name in :data:`REGISTRY`.
        ways: classes per episode (the size of the gradient-based methods' heads).
        image_size: side of the square input images.
        in_channels: channels of the input images.
        width: filters of every Conv-4 block (64 in the papers), or of ResNet-12's first.
        seed: seed of the learner's own generator (Reptile's minibatches, the
            self-supervised methods' augmentations, noise and masks).
        backbone: the image encoder, a name in :data:`BACKBONES`.
        aux: a self-supervised loss to add on the learner's encoder (chapter 8,
            :class:`~companion.guided.ssl_aux.WithAuxiliary`): ``"rotation"``; episodic
            methods only.
        aux_weight: its weight, a positive number or ``"meta"`` (meta-learned, chapter 7).
        **fields: fields of the method's config dataclass, over the entry's defaults.

    Raises:
        ValueError: unknown ``method``, config field or ``backbone``, a ``backbone`` for the
            MAE (its own ViT), or an ``aux`` that cannot join it.

    Example:
        >>> learner = build_learner("protonet", ways=5, image_size=28, in_channels=1, width=8)
        >>> type(learner).__name__
        'ProtoNet'
        >>> fomaml = build_learner("fomaml", ways=5, image_size=28, in_channels=1, width=8)
        >>> fomaml.config.first_order
        True
    """
    entry = get(method)
    check_config_fields(method, fields)
    check_choice("backbone", backbone, BACKBONES)
    if entry.own_backbone and backbone != "conv4":
        raise ValueError(f"{method} builds its own network; --backbone {backbone} applies to "
                         f"every other method")
    arch = Arch(check_int("ways", ways), check_int("image_size", image_size),
                check_int("in_channels", in_channels), check_int("width", width), seed,
                backbone)
    shaped = entry.arch_fields(arch) if entry.arch_fields else {}
    learner = entry.build(entry.config(**{**entry.defaults, **shaped, **fields}), arch)
    if aux is None:
        return learner
    check_choice("aux", aux, AUXILIARIES)
    if entry.trains_on != "episodes":
        raise ValueError(f"an auxiliary loss joins an episodic learner; {method} trains on "
                         "unlabeled images already")
    encoder = encoder_of(learner)
    rotation = RotationPrediction(encoder, encoder.out_features(image_size))
    return WithAuxiliary(learner, rotation, aux_weight, seed=seed)


# ---- encoders: what one method trained, another starts from -----------------------------------

def encoder_of(learner: nn.Module) -> nn.Module:
    """The image encoder (images ``(B, C, H, W)`` -> features ``(B, D)``) of a learner that
    :func:`build_learner` made: a metric learner's or a self-supervised method's
    ``encoder``, or the body before the head of MAML's and Reptile's classifier.

    Raises:
        ValueError: the learner has no separable encoder.
    """
    if isinstance(learner, WithAuxiliary):
        return learner.encoder
    classifier = getattr(learner, "model", None) or getattr(learner, "net", None)
    if isinstance(classifier, nn.Sequential) and len(classifier) == 2:
        return classifier[0]  # conv4_classifier: (body, head)
    encoder = getattr(learner, "encoder", None)
    if isinstance(encoder, nn.Module):
        return encoder
    raise ValueError(f"{type(learner).__name__} has no image encoder to take")


def learner_from_checkpoint(state: Mapping[str, Any]) -> nn.Module:
    """The learner a checkpoint of ``python -m companion train`` holds, rebuilt from its spec
    with the trained weights (``state`` from :func:`companion.train.load_checkpoint`)."""
    learner = build_learner(**state["spec"]["learner"])
    learner.load_state_dict(state["model"])
    return learner


def load_encoder(target: nn.Module, source: nn.Module) -> None:
    """Copy the weights of encoder ``source`` into encoder ``target`` (same architecture).

    Parameters must match one to one, by name and shape. Batch-norm running statistics are
    copied where both keep them and skipped where only one does (a self-supervised encoder
    keeps them, a meta-learner's transductive batch norm does not).

    Raises:
        ValueError: a parameter is missing on either side or has another shape (say, another
            ``--width``).
    """
    mine, theirs = dict(target.named_parameters()), dict(source.named_parameters())
    if mine.keys() != theirs.keys():
        raise ValueError(f"the encoders differ: parameters only here "
                         f"{sorted(mine.keys() - theirs.keys())}, only in the checkpoint "
                         f"{sorted(theirs.keys() - mine.keys())}")
    for name, p in mine.items():
        if p.shape != theirs[name].shape:
            raise ValueError(f"the encoders differ in {name}: {tuple(p.shape)} here, "
                             f"{tuple(theirs[name].shape)} in the checkpoint (same --width "
                             "and image channels?)")
    buffers = dict(source.named_buffers())
    with torch.no_grad():
        for name, p in mine.items():
            p.copy_(theirs[name])
        for name, b in target.named_buffers():
            if name in buffers and buffers[name].shape == b.shape:
                b.copy_(buffers[name])
