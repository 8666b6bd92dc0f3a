"""What every task source without labels must do: read no labels, be reproducible from its
seed, and resume exactly through ``fit``. Parametrized over the sources of
``companion.tasks``; method-specific behaviour is in the other files here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from companion import methods
from companion.data import load_dataset
from companion.data.base import ImageDataset
from companion.protocols import check_task_source
from companion.tasks import LASIUM, TASKS, UMTRA, CACTUs, RotatedClasses
from companion.tasks.mixture import Mixture
from companion.tasks.pool import unlabeled_images
from companion.train import TrainConfig, fit

WAYS, SHOTS, QUERIES = 4, 1, 2


@pytest.fixture(scope="module")
def pool() -> ImageDataset:
    return load_dataset("glyphs", "train", alphabets=2, image_size=16)


def _embeddings(images: torch.Tensor) -> torch.Tensor:
    """A fixed "encoder": 4x4 average pooling, flattened (any function of the images will do)."""
    return torch.nn.functional.avg_pool2d(images, 4).flatten(1)


def _decode(z: torch.Tensor) -> torch.Tensor:
    """A fixed "generator": codes (B, 4) -> images (B, 1, 16, 16)."""
    return torch.sigmoid(z).repeat(1, 64).view(-1, 1, 16, 16)


BUILDERS: dict[str, Callable[..., object]] = {
    "umtra": lambda data, seed: UMTRA(data, WAYS, SHOTS, QUERIES, seed=seed),
    "cactus": lambda data, seed: CACTUs(
        data, _embeddings(data.images if isinstance(data, ImageDataset) else data), WAYS, SHOTS,
        QUERIES, clusters=12, partitions=3, seed=seed),
    "lasium": lambda data, seed: LASIUM(
        _decode, 4, WAYS, SHOTS, QUERIES, anchors=_embeddings(unlabeled_images(data))[:, :4],
        seed=seed),
    "mixture": lambda data, seed: Mixture(
        {"umtra": UMTRA(data, WAYS, SHOTS, QUERIES, seed=seed),
         "flipped": UMTRA(unlabeled_images(data).flip(-1), WAYS, SHOTS, QUERIES, seed=seed + 1)},
        seed=seed),
    # one UMTRA image per task in four rotations: a WAYS = 4-way task (chapter 8)
    "rotated": lambda data, seed: RotatedClasses(UMTRA(data, WAYS // 4, SHOTS, QUERIES,
                                                       seed=seed)),
}


def test_every_source_of_the_command_line_is_tested_here():
    assert set(TASKS) <= set(BUILDERS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_gpu_recipe_is_the_cpu_recipe_trained_longer(name):
    from companion.profiles import GPU_STEPS

    for method in ("protonet", "maml"):
        cpu, gpu = TASKS[name].preset("cpu", method), TASKS[name].preset("gpu", method)
        assert {k: v for k, v in gpu.items() if k != "steps"} == {
            k: v for k, v in cpu.items() if k != "steps"}
        assert gpu.get("steps") == (GPU_STEPS * cpu["steps"] if "steps" in cpu else None)


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in
               ("support_x", "support_y", "query_x", "query_y"))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_source_reads_no_labels(name, pool):
    """Shuffled labels, constant labels and a bare image tensor give the very same tasks."""
    g = torch.Generator().manual_seed(1)
    shuffled = dataclasses.replace(pool, labels=pool.labels[torch.randperm(len(pool.labels),
                                                                           generator=g)])
    constant = dataclasses.replace(pool, labels=torch.zeros_like(pool.labels),
                                   groups=torch.zeros(1, dtype=torch.long), class_names=("all",))
    reference = BUILDERS[name](pool, 0).sample_batch(3)
    for data in (shuffled, constant, pool.images):
        assert _same(BUILDERS[name](data, 0).sample_batch(3), reference)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_source_is_a_task_source_reproducible_from_its_seed(name, pool):
    source = BUILDERS[name](pool, 0)
    check_task_source(source)
    batch = source.sample_batch(2)
    assert batch.support_x.shape == (2, WAYS * SHOTS, 1, 16, 16)
    assert batch.query_y[0].tolist() == torch.arange(WAYS).repeat_interleave(QUERIES).tolist()
    assert _same(BUILDERS[name](pool, 0).sample_batch(2), batch)
    assert not _same(BUILDERS[name](pool, 1).sample_batch(2), batch)
    assert not _same(source.sample_batch(2), batch)  # the stream moves on


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_a_source_resumes_exactly_through_fit(name, pool, tmp_path):
    """Stopped after 3 of 6 steps and resumed by a fresh process (new source, new learner, other
    global seed), the run ends bit for bit where the uninterrupted one does."""
    config = TrainConfig(steps=6, meta_batch=2, lr=1e-3, log_every=2, val_every=100,
                         checkpoint_every=2, seed=0, device="cpu")

    def learner(seed=0):
        torch.manual_seed(seed)
        return methods.build_learner("protonet", ways=WAYS, image_size=16, in_channels=1,
                                     width=4)

    straight = learner()
    fit(straight, BUILDERS[name](pool, 0), config, out_dir=tmp_path / "a", progress=False)
    fit(learner(), BUILDERS[name](pool, 0), config, out_dir=tmp_path / "b", progress=False,
        stop_after=3)
    resumed = learner(seed=99)  # other weights: all must come from the checkpoint
    fit(resumed, BUILDERS[name](pool, 0), config, out_dir=tmp_path / "b", progress=False)
    for (key, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(),
                           strict=True):
        assert torch.equal(p, q), key
