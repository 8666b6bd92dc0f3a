"""Every meta-learner on CUDA, unchanged: the device comes from the data (``gpu`` marker;
skipped without CUDA). The CPU runs of the same code are the reference."""

from __future__ import annotations

import pytest
import torch

from companion import methods
from companion.data import EpisodeSampler, load_dataset
from companion.meta.maml import MAML, MAMLConfig
from companion.train import TrainConfig, evaluate_learner, fit

pytestmark = pytest.mark.gpu


def _sampler(split: str, seed: int) -> EpisodeSampler:
    alphabets = {"alphabets": 2} if split == "train" else {}
    return EpisodeSampler(load_dataset("glyphs", split, **alphabets), 5, 1, 3, seed=seed)


@pytest.mark.parametrize("method", methods.METHODS)
def test_fit_and_evaluate_on_cuda(method, tmp_path):
    torch.manual_seed(0)
    learner = methods.build_learner(method, ways=5, image_size=28, in_channels=1, width=8)
    config = TrainConfig(**methods.TRAINING_DEFAULTS[method], steps=3, meta_batch=2,
                         val_every=3, val_episodes=4, checkpoint_every=3, device="cuda")
    result = fit(learner, _sampler("train", 0), config, val_sampler=_sampler("val", 1),
                 out_dir=tmp_path, progress=False)
    assert result.step == 3 and all(p.device.type == "cuda" for p in learner.parameters())
    evaluation = evaluate_learner(learner, _sampler("test", 2), 5, device=torch.device("cuda"))
    assert 0 <= evaluation.accuracy <= 1


def test_maml_vmap_on_cuda_equals_the_cpu_loop():
    # float64, so TF32 and kernel choice cannot hide a real difference.
    torch.manual_seed(0)
    model = methods.conv4_classifier(5, 28, 1, 8).double()
    batch = _sampler("train", 0).sample_batch(4)
    grads = {}
    for device, strategy in (("cpu", "loop"), ("cuda", "vmap")):
        maml = MAML(model.to(device), MAMLConfig(strategy=strategy))
        data = batch.to(device)
        data = type(data)(*(t.double() if t.is_floating_point() else t for t in (
            data.support_x, data.support_y, data.query_x, data.query_y)))
        loss, _ = maml.meta_loss(data)
        grads[device] = torch.autograd.grad(loss, list(maml.parameters()))
    for cpu, cuda in zip(grads["cpu"], grads["cuda"], strict=True):
        torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-10, rtol=1e-8)
