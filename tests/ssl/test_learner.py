"""Self-supervised methods in the shared training loop: the SelfSupervised wrapper, the
image-batch sampler, resume, and the few-shot / linear / kNN probes through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from companion import methods
from companion.__main__ import main
from companion.data import EpisodeSampler, ImageDataset, load_dataset
from companion.data.augment import AugmentConfig, two_views
from companion.data.batches import ImageBatchSampler
from companion.evaluate import prototype_probe
from companion.nets import Conv4
from companion.profiles import get_profile
from companion.ssl.autoencoders import Decoder, DenoisingAutoencoder
from companion.ssl.learner import SelfSupervised
from companion.ssl.mae import MAE
from companion.ssl.simclr import SimCLR, SimCLRConfig, nt_xent
from companion.train import CHECKPOINT, CHECKPOINT_FORMAT, TrainConfig, fit, load_checkpoint


def _digits() -> ImageBatchSampler:
    return ImageBatchSampler(load_dataset("digits", "train", image_size=16), seed=0)


def test_image_batches_are_distinct_reproducible_and_unlabeled() -> None:
    # Image i is the constant i, so a batch's values say which images it holds.
    count = 50
    images = torch.arange(count, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    dataset = ImageDataset("numbered", "train", images.clone(), torch.arange(count) % 5,
                           torch.zeros(5, dtype=torch.int64), tuple("abcde"))
    a, b = ImageBatchSampler(dataset, seed=0), ImageBatchSampler(dataset, seed=0)
    x = a.sample_batch(count)
    assert isinstance(x, torch.Tensor) and x.shape == (count, 1, 4, 4)
    assert sorted(x[:, 0, 0, 0].long().tolist()) == list(range(count))  # all distinct
    assert torch.equal(x, b.sample_batch(count))  # the seed fixes the batches
    assert not torch.equal(a.sample_batch(count), x)  # the next batch is shuffled anew
    with pytest.raises(ValueError, match=r"batch_size 51 exceeds the 50 images of numbered/"):
        a.sample_batch(51)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        a.sample_batch(0)
    with pytest.raises(TypeError, match="dataset must be an ImageDataset"):
        ImageBatchSampler(torch.zeros(3, 1, 4, 4))


def test_meta_loss_is_the_methods_loss_on_two_views_from_the_learners_generator() -> None:
    torch.manual_seed(0)
    method = SimCLR(Conv4(1, hidden=8), 8, SimCLRConfig(hidden_dim=16, out_dim=8))
    config = AugmentConfig.glyphs()
    learner = SelfSupervised(method, config, seed=3)
    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    loss, logs = learner.meta_loss(images)
    x1, x2 = two_views(images, config, torch.Generator().manual_seed(3))  # the same draws
    z1, z2 = method.projector(method.encoder(x1)), method.projector(method.encoder(x2))
    torch.testing.assert_close(loss, nt_xent(z1, z2, temperature=method.config.temperature))
    assert set(logs) == {"loss", "accuracy"} and learner.encoder is method.encoder
    assert all(type(value) is float for value in logs.values())  # the logging boundary
    assert logs["loss"] == loss.item()


def test_classify_is_the_cosine_prototype_probe_of_the_encoder() -> None:
    torch.manual_seed(0)
    learner = methods.build_learner("simclr", ways=5, image_size=28, in_channels=1, width=8)
    episode = EpisodeSampler(load_dataset("glyphs", "test"), 5, 2, 3, seed=0).sample()
    logits = learner.classify(episode)
    with torch.no_grad():  # one batch, as the probe embeds it (BatchNorm uses its stats)
        learner.eval()
        z = learner.encoder(torch.cat([episode.support_x, episode.query_x]))
    zs, zq = z[:10], z[10:]
    # Independent reference: each class's mean support feature, then 1 - the cosine.
    protos = torch.stack([zs_c.mean(0) for zs_c in zs.split(2)])
    normalize = torch.nn.functional.normalize
    reference = normalize(zq, dim=1) @ normalize(protos, dim=1).T - 1
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits, prototype_probe(learner.encoder, episode))


def test_wrapper_rejects_what_it_cannot_train() -> None:
    method = SimCLR(Conv4(1, hidden=8), 8, SimCLRConfig(hidden_dim=16, out_dim=8))
    with pytest.raises(ValueError, match="compares two augmented views; give an augment_config"):
        SelfSupervised(method, None)
    with pytest.raises(TypeError, match="self-supervised module with views 1 or 2"):
        SelfSupervised(Conv4(1, hidden=8), AugmentConfig.glyphs())
    with pytest.raises(ValueError, match=r"expected a batch of images \(B, C, H, W\)"):
        SelfSupervised(method, AugmentConfig.glyphs()).meta_loss(torch.rand(3, 28, 28))


@pytest.mark.parametrize("method", methods.names("images"))
def test_every_method_builds_and_takes_a_step(method) -> None:
    torch.manual_seed(0)
    learner = methods.build_learner(method, ways=5, image_size=28, in_channels=1, width=8)
    loss, logs = learner.meta_loss(torch.rand(8, 1, 28, 28))
    loss.backward()
    learner.after_step(1, 10)
    assert torch.isfinite(loss) and "loss" in logs
    assert any(p.grad is not None for p in learner.encoder.parameters())


def test_moco_resumed_run_equals_uninterrupted_run(tmp_path, one_thread) -> None:
    """MoCo has every kind of state: weights, a momentum encoder, a queue, augmentation
    draws; stopping and resuming must give the same end, bit for bit."""
    config = TrainConfig(steps=6, meta_batch=16, checkpoint_every=2, log_every=2,
                         val_every=100, schedule="cosine")
    spec = {"learner": {"method": "moco"}}

    def build():
        return methods.build_learner("moco", ways=5, image_size=16, in_channels=1, width=4,
                                     queue_size=32)

    torch.manual_seed(0)
    straight = build()
    fit(straight, _digits(), config, out_dir=tmp_path / "a", progress=False, spec=spec)
    torch.manual_seed(0)
    fit(build(), _digits(), config, out_dir=tmp_path / "b", progress=False, spec=spec,
        stop_after=3)
    torch.manual_seed(5)
    resumed = build()
    fit(resumed, _digits(), config, out_dir=tmp_path / "b", progress=False, spec=spec)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name
    torch.manual_seed(0)
    initial = build().state_dict()  # the same seed: the state before any step
    for key in ("method.queue.features", "method.key_encoder.blocks.0.0.weight"):
        assert not torch.equal(straight.state_dict()[key], initial[key]), key  # it moved
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 6


def test_fit_calls_after_step_once_per_step_with_the_step_and_the_run_length(
        monkeypatch) -> None:
    learner = methods.build_learner("byol", ways=5, image_size=16, in_channels=1, width=4)
    calls = []
    monkeypatch.setattr(learner.method, "after_step",
                        lambda step, total_steps: calls.append((step, total_steps)))
    config = TrainConfig(steps=3, meta_batch=8, val_every=100, checkpoint_every=100)
    fit(learner, _digits(), replace(config, log_every=1), progress=False)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_after_step_moves_the_byol_target_by_the_scheduled_momentum() -> None:
    """Through the wrapper: after step 2 of 3, tau = 1 - (1 - 0.9)(cos(pi/3) + 1)/2 = 0.925."""
    torch.manual_seed(0)
    learner = methods.build_learner("byol", ways=5, image_size=16, in_channels=1, width=4,
                                    momentum=0.9)
    byol = learner.method
    assert byol.config.momentum_schedule == "cosine"  # the paper's, by default
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    loss, _ = learner.meta_loss(images)
    loss.backward()
    torch.optim.SGD(learner.parameters(), lr=0.5).step()
    target = dict(byol.target_encoder.named_parameters())
    before = {name: p.clone() for name, p in target.items()}
    online = dict(byol.encoder.named_parameters())
    assert any(not torch.equal(before[name], p) for name, p in online.items())
    learner.after_step(2, 3)
    for name, p in online.items():
        torch.testing.assert_close(target[name], 0.925 * before[name] + 0.075 * p)


def test_generators_name_every_random_stream_once() -> None:
    method = SimCLR(Conv4(1, hidden=8), 8, SimCLRConfig(hidden_dim=16, out_dim=8))
    learner = SelfSupervised(method, AugmentConfig.glyphs(), seed=3)
    assert learner.generators() == {"views": learner.generator}
    noise = torch.Generator().manual_seed(4)
    dae = DenoisingAutoencoder(Conv4(1, hidden=8), Decoder(8, hidden=8), generator=noise)
    learner = SelfSupervised(dae, None, seed=3)
    assert learner.generators() == {"views": learner.generator, "method/noise": noise}
    shared = SelfSupervised(MAE(generator=noise), None, generator=noise)
    assert shared.generators() == {"views": noise}  # one stream, listed once
    built = methods.build_learner("vae", ways=5, image_size=28, in_channels=1, width=8)
    streams = built.generators()
    assert streams["views"] is built.generator
    assert built.method.generator in streams.values()


def test_train_then_every_probe_through_the_cli(tmp_path, capsys, one_thread) -> None:
    out = tmp_path / "simclr"
    assert main(["train", "simclr", "--dataset", "digits", "--profile", "smoke", "--steps",
                 "3", "--meta-batch", "32", "--width", "4", "--episodes", "5", "--ways",
                 "3", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained simclr on digits/train for 3 steps" in printed and "accuracy = " in printed
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["method"] == "simclr" and trained["ways"] == 3
    spec = load_checkpoint(out / CHECKPOINT)["spec"]
    assert spec["train_episodes"]["ways"] is None  # unlabeled batches, no episodes
    for probe in ("fewshot", "linear", "knn"):
        assert main(["eval", "--checkpoint", str(out / CHECKPOINT), "--probe", probe,
                     "--episodes", "5", "--quiet", "--out", str(tmp_path / probe)]) == 0
        metrics = json.loads((tmp_path / probe / "metrics.json").read_text())
        assert metrics["probe"] == probe
        assert metrics["ci95"] > 0
    assert "linear probe over 5 classes" in capsys.readouterr().out
    maml = tmp_path / "maml.pt"
    torch.save({"format": CHECKPOINT_FORMAT,
                "spec": {"learner": {"method": "maml", "ways": 5, "image_size": 16,
                                     "in_channels": 1, "width": 4},
                         "data": {"dataset": "digits", "test_split": "test", "ways": 5,
                                  "shots": 1, "queries": 1, "image_size": 16,
                                  "rotations": False, "glyph_alphabets": None, "seed": 0}},
                "model": methods.build_learner("maml", ways=5, image_size=16, in_channels=1,
                                               width=4).state_dict()}, maml)
    assert main(["eval", "--checkpoint", str(maml), "--probe", "linear", "--quiet"]) == 2
    assert "--probe linear tests the encoder of a self-supervised checkpoint" in \
        capsys.readouterr().err


def test_cli_rotation_default_batch_is_a_quarter_of_the_profiles(tmp_path, one_thread) -> None:
    out = tmp_path / "rotation"
    assert main(["train", "rotation", "--dataset", "digits", "--profile", "smoke", "--steps",
                 "1", "--width", "4", "--no-eval", "--quiet", "--out", str(out)]) == 0
    config = load_checkpoint(out / CHECKPOINT)["config"]
    assert config["meta_batch"] == get_profile("smoke").batch_size // 4
    assert config["steps"] == 1
