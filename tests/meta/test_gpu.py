"""MAML's vmap strategy on each device against the per-task loop on the CPU (float64, so
TF32 and kernel choice cannot hide a real difference). The CUDA half is marked ``gpu`` and
skips without CUDA; every method's ``fit`` and ``evaluate_learner`` on each device are in
``tests/test_methods.py``."""

from __future__ import annotations

import pytest
import torch

from companion import methods
from companion.data import EpisodeSampler, load_dataset
from companion.meta.maml import MAML, MAMLConfig

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
def test_maml_vmap_equals_the_cpu_loop(device: str) -> None:
    torch.manual_seed(0)
    model = methods.conv4_classifier(5, 28, 1, 8).double()
    sampler = EpisodeSampler(load_dataset("glyphs", "train", alphabets=2), 5, 1, 3, seed=0)
    batch = sampler.sample_batch(4)
    grads = {}
    for where, strategy in (("cpu", "loop"), (device, "vmap")):
        maml = MAML(model.to(where), MAMLConfig(strategy=strategy))
        data = batch.to(where)
        data = type(data)(*(t.double() if t.is_floating_point() else t for t in (
            data.support_x, data.support_y, data.query_x, data.query_y)))
        loss, _ = maml.meta_loss(data)
        grads[strategy] = torch.autograd.grad(loss, list(maml.parameters()))
    for loop, vmapped in zip(grads["loop"], grads["vmap"], strict=True):
        torch.testing.assert_close(vmapped.cpu(), loop.cpu(), atol=1e-10, rtol=1e-8)
