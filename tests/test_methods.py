"""The registry: every entry is complete and consistent, every method satisfies the learner
protocol, and every method trains through ``fit`` and tests through ``evaluate_learner`` on
each device (the CUDA half is marked ``gpu`` and skips without CUDA; the CPU half runs in
every ``make test``)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from companion import methods
from companion.data import EpisodeSampler, load_dataset
from companion.data.batches import ImageBatchSampler
from companion.guided.maxl import HierarchyBatches, hierarchy_split
from companion.profiles import PROFILES
from companion.protocols import Learner, check_learner
from companion.train import TrainConfig, evaluate_learner, fit

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SMALL = {"ways": 5, "image_size": 28, "in_channels": 1, "width": 8}


def _episodes(split: str, seed: int, ways: int = 5) -> EpisodeSampler:
    alphabets = {"alphabets": 2} if split == "train" else {}
    return EpisodeSampler(load_dataset("glyphs", split, **alphabets), ways, 1, 3, seed=seed)


def _task_source(method: methods.Method
                 ) -> EpisodeSampler | ImageBatchSampler | HierarchyBatches:
    """What ``method`` trains on, as the registry says."""
    if method.trains_on == "images":
        return ImageBatchSampler(load_dataset("glyphs", "train", alphabets=2), seed=0)
    if method.trains_on == "hierarchy":  # SMALL's 5 ways: 5 alphabets of 5 characters
        glyphs = load_dataset("glyphs", "train", alphabets=SMALL["ways"], drawings=4)
        subset, train, _ = hierarchy_split(glyphs, per_group=5)
        return HierarchyBatches(subset, train, seed=0)
    return _episodes("train", 0)


@pytest.mark.parametrize("name", methods.METHODS)
def test_every_entry_is_complete(name: str) -> None:
    method = methods.get(name)
    assert method.name == name and method.summary
    assert method.trains_on in methods.TRAINS_ON
    TrainConfig(**method.training)  # the optimiser is made of loop fields
    loop_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for profile, preset in method.presets.items():
        assert profile in PROFILES, profile
        unknown = set(preset) - loop_fields - set(methods.PRESET_KEYS)
        assert not unknown, f"{name}/{profile}: unknown preset keys {unknown}"
        assert set(preset.get("set", {})) <= set(method.fields()), preset["set"]
        loop = {k: v for k, v in {**method.training, **preset}.items() if k in loop_fields}
        TrainConfig(**loop)
        shaped = method.arch_fields(methods.Arch(5, 28, 1, 8)) if method.arch_fields else {}
        method.config(**{**method.defaults, **shaped, **preset.get("set", {})})
    assert set(method.defaults) <= set(method.fields())


def test_the_cpu_presets_are_the_benchmark_recipes() -> None:
    # the tables train with what `train METHOD --profile cpu` does by default: every method
    # has a cpu preset that fixes its step count (the 5-minute budget)
    for method in methods.REGISTRY.values():
        assert "steps" in method.preset("cpu"), method.name


def test_the_gpu_presets_train_the_cpu_recipes_longer() -> None:
    # every method with a cpu recipe has a gpu one: the same recipe (episode shapes,
    # meta-batch, config fields) with GPU_STEPS times the steps, at the profile's width
    for method in methods.REGISTRY.values():
        cpu, gpu = method.preset("cpu"), method.preset("gpu")
        assert gpu["steps"] == methods.GPU_STEPS * cpu["steps"] > cpu["steps"], method.name
        assert "width" not in gpu, method.name
        same = {k: v for k, v in cpu.items() if k not in ("steps", "width")}
        assert {k: v for k, v in gpu.items() if k != "steps"} == same, method.name
    assert methods.get("maxl").preset("cpu")["width"] == 32  # the cpu recipe's narrower width
    assert methods.get("protomaml").preset("gpu")["set"]["inner_lr"] == 0.1


def test_unknown_names_and_fields_are_errors_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown method 'snail'; allowed: protonet, "):
        methods.get("snail")
    with pytest.raises(ValueError, match="protonet has no config field 'lr'; allowed: "
                                         "learn_scale, metric, scale"):
        methods.build_learner("protonet", lr=0.1, **SMALL)
    with pytest.raises(ValueError, match="ways must be a positive int; got 0"):
        methods.build_learner("maml", **{**SMALL, "ways": 0})


def test_entry_defaults_and_fields_reach_the_config() -> None:
    assert methods.build_learner("fomaml", **SMALL).config.first_order is True
    assert methods.build_learner("anil", **SMALL).config.adapt == "head"
    assert methods.build_learner("maml", **SMALL, inner_steps_test=7).config.inner_steps_test == 7
    simclr = methods.build_learner("simclr", **SMALL, temperature=0.3)
    assert simclr.method.config.temperature == 0.3
    assert simclr.method.config.out_dim == methods.SSL_HEADS["simclr"]["out_dim"]
    mae = methods.build_learner("mae", **{**SMALL, "image_size": 32})
    assert mae.method.config.image_size == 32  # the ViT follows the data unless set


def test_default_steps_and_batch_follow_the_profile() -> None:
    smoke, full = PROFILES["smoke"], PROFILES["full"]
    simclr, rotation = methods.get("simclr"), methods.get("rotation")
    assert simclr.default_steps(smoke, 1_000) == smoke.train_steps
    # full: `epochs` passes over Omniglot's 19,280 background images, in batches of 256, or
    # of 64 for rotation (each image becomes four)
    assert simclr.default_steps(full, 19_280) == math.ceil(full.epochs * 19_280 / 256)
    assert rotation.default_steps(full, 19_280) == math.ceil(full.epochs * 19_280 / 64)
    assert (rotation.batch(256), simclr.batch(256), rotation.batch(2)) == (64, 256, 1)
    assert methods.get("maml").default_steps(full, 19_280) == full.train_steps
    gpu = PROFILES["gpu"]  # outside full, the profile's train_steps (the presets set steps)
    assert simclr.default_steps(gpu, 19_280) == gpu.train_steps


def test_the_split_by_training_data() -> None:
    assert set(methods.names("episodes")) | set(methods.names("images")) | set(
        methods.names("hierarchy")) == set(methods.METHODS)
    with pytest.raises(ValueError, match="unknown trains_on 'labels'"):
        methods.names("labels")


@pytest.mark.parametrize("name", methods.METHODS)
def test_every_method_is_a_learner(name: str) -> None:
    learner = methods.build_learner(name, **SMALL)
    check_learner(learner)
    assert isinstance(learner, Learner)


RESNET = [name for name in methods.METHODS if not methods.get(name).own_backbone]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", RESNET)
def test_every_method_trains_on_resnet12(name: str, device: str, tmp_path) -> None:
    """``backbone="resnet12"`` puts a ResNet-12 (MetaOptNet's widths 1 : 2.5 : 5 : 10) where
    the Conv-4 was, and the method trains and classifies with it."""
    from companion.nets import ResNet12

    method = methods.get(name)
    torch.manual_seed(0)
    learner = methods.build_learner(name, **{**SMALL, "width": 2}, backbone="resnet12")
    encoder = learner.encoder if name == "maxl" else methods.encoder_of(learner)
    assert isinstance(encoder, ResNet12) and encoder.channels == (2, 5, 10, 20)
    config = TrainConfig(**method.training, steps=2, meta_batch=2 if method.trains_on ==
                         "episodes" else 8, device=device)
    result = fit(learner, _task_source(method), config, out_dir=tmp_path, progress=False)
    assert result.step == 2 and math.isfinite(result.history["train"][-1]["loss"])
    episode = _episodes("test", 2).sample().to(device)
    learner.eval()
    with torch.no_grad():
        assert torch.isfinite(learner.classify(episode)).all()


def test_resnet12_widths_and_the_mae_refusal() -> None:
    learner = methods.build_learner("protonet", **SMALL, backbone="resnet12")
    assert learner.encoder.channels == (8, 20, 40, 80)
    assert methods.build_learner("protonet", **{**SMALL, "width": 64},
                                 backbone="resnet12").encoder.channels == (64, 160, 320, 640)
    with pytest.raises(ValueError, match="mae builds its own network"):
        methods.build_learner("mae", **SMALL, backbone="resnet12")
    with pytest.raises(ValueError, match="unknown backbone 'vgg'; allowed: conv4, resnet12"):
        methods.build_learner("protonet", **SMALL, backbone="vgg")
    protonet = methods.get("protonet")
    assert methods.default_backbone(protonet, "full", "cifar_fs") == "resnet12"
    assert methods.default_backbone(protonet, "gpu", "cifar_fs") == "conv4"
    assert methods.default_backbone(protonet, "full", "omniglot") == "conv4"
    assert methods.default_backbone(methods.get("mae"), "full", "cifar_fs") == "conv4"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", methods.METHODS)
def test_fit_and_evaluate_every_method(name: str, device: str, tmp_path) -> None:
    method = methods.get(name)
    torch.manual_seed(0)
    learner = methods.build_learner(name, **SMALL)
    config = TrainConfig(**method.training, steps=3, meta_batch=2 if method.trains_on ==
                         "episodes" else 16, val_every=3, val_episodes=4, checkpoint_every=3,
                         device=device)
    before = {k: p.detach().clone() for k, p in learner.named_parameters()}
    result = fit(learner, _task_source(method), config, val_sampler=_episodes("val", 1),
                 out_dir=tmp_path, progress=False)
    assert result.step == 3 and all(p.device.type == device for p in learner.parameters())
    changed = [k for k, p in learner.named_parameters() if not torch.equal(p.cpu(), before[k])]
    assert changed, "three optimiser steps left every parameter as it was"
    assert {"loss"} <= set(result.history["train"][-1])
    test = _episodes("test", 2)
    evaluation = evaluate_learner(learner, test, 5, device=torch.device(device))
    assert evaluation.episodes == 5
    # evaluate_learner scores with learner.classify: recompute one episode by hand
    episode = _episodes("test", 2).sample().to(device)
    learner.eval()
    with torch.no_grad():
        scores = learner.classify(episode)
    assert scores.shape == (len(episode.query_y), 5) and torch.isfinite(scores).all()
