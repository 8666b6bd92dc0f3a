"""The training loop: learning, exact resume, safe checkpoints, metrics."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.data import EpisodeSampler, load_dataset
from companion.evaluate import EvalResult
from companion.train import (
    CHECKPOINT,
    METRICS_FILE,
    TrainConfig,
    TrainResult,
    evaluate_learner,
    fit,
    load_checkpoint,
    write_metrics,
)


class ToyProtoNet(nn.Module):
    """A small ProtoNet written out here, so these tests need no method module.

    Dropout draws from PyTorch's global generator, and two generators of its own (as a
    composed learner would have) perturb the support and the query inputs, so an exact
    resume needs every random state restored.
    """

    def __init__(self, in_features: int = 64, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 32), nn.ReLU(),
                                     nn.Dropout(0.2), nn.Linear(32, dim))
        self.generator = torch.Generator().manual_seed(seed)
        self.query_generator = torch.Generator().manual_seed(seed + 1)

    def generators(self) -> dict[str, torch.Generator]:
        return {"support/noise": self.generator, "query/noise": self.query_generator}

    def logits(self, support_x, support_y, query_x) -> torch.Tensor:
        z = self.encoder(support_x)  # (N*K, D)
        ways = int(support_y.max()) + 1
        prototypes = z.view(ways, -1, z.shape[-1]).mean(1)  # class-first: (N, D)
        d = self.encoder(query_x)[:, None, :] - prototypes[None]  # (N*Q, N, D)
        return -d.square().sum(-1)  # (N*Q, N)

    def meta_loss(self, batch):
        noise = 0.01 * torch.randn(batch.support_x.shape, generator=self.generator)
        query_noise = 0.01 * torch.randn(batch.query_x.shape, generator=self.query_generator)
        losses, accuracies = [], []
        for t, episode in enumerate(batch):
            logits = self.logits(episode.support_x + noise[t], episode.support_y,
                                 episode.query_x + query_noise[t])
            losses.append(F.cross_entropy(logits, episode.query_y))
            accuracies.append((logits.argmax(-1) == episode.query_y).float().mean())
        return torch.stack(losses).mean(), {"accuracy": float(torch.stack(accuracies).mean())}

    def classify(self, episode):
        return self.logits(episode.support_x, episode.support_y, episode.query_x)


def samplers(seed: int = 0) -> tuple[EpisodeSampler, EpisodeSampler]:
    train = EpisodeSampler(load_dataset("digits", "train"), 5, 1, 5, seed=seed)
    val = EpisodeSampler(load_dataset("digits", "val"), 5, 1, 5, seed=seed)
    return train, val


def toy(seed: int) -> ToyProtoNet:
    torch.manual_seed(seed)  # the caller's init; fit never reseeds it
    return ToyProtoNet(seed=seed)


SPEC = {"learner": {"method": "toy", "ways": 5}}
CONFIG = TrainConfig(steps=12, meta_batch=2, lr=3e-3, schedule="step", decay_every=4,
                     grad_clip=1.0, weight_decay=1e-4, log_every=3, val_every=4,
                     val_episodes=5, checkpoint_every=5, device="cpu")


def test_loss_decreases_and_new_classes_get_easier() -> None:
    glyphs = load_dataset("glyphs", "train", alphabets=3)
    val = load_dataset("glyphs", "val", alphabets=2)  # alphabets never trained on
    train_sampler = EpisodeSampler(glyphs, 5, 1, 5, seed=0)
    torch.manual_seed(0)
    learner = ToyProtoNet(in_features=28 * 28)
    untrained = evaluate_learner(learner, EpisodeSampler(val, 5, 1, 5, seed=1), 30)
    config = replace(CONFIG, steps=40, schedule="none", log_every=10, val_every=40,
                     val_episodes=30)
    result = fit(learner, train_sampler, config, progress=False,
                 val_sampler=EpisodeSampler(val, 5, 1, 5, seed=1))
    first, last = result.history["train"][0], result.history["train"][-1]
    assert last["loss"] < 0.85 * first["loss"] and last["accuracy"] > first["accuracy"]
    assert result.history["val"][-1]["accuracy"] > untrained.accuracy + 0.1  # ~0.32 -> ~0.55
    assert result.finished and result.step == 40 and result.train_seconds > 0


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    """Stop after step 7 (between checkpoints 5 and 10, inside a log window), start a new
    process-like call with a different init and fresh samplers: the end is bit-identical."""
    train, val = samplers()
    straight = toy(0)
    expected = fit(straight, train, CONFIG, val_sampler=val, out_dir=tmp_path / "a",
                   progress=False, spec=SPEC)

    train, val = samplers()
    first = fit(toy(0), train, CONFIG, val_sampler=val, out_dir=tmp_path / "b",
                progress=False, spec=SPEC, stop_after=7)
    assert not first.finished and first.step == 7
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == 7

    train, val = samplers()
    resumed = toy(123)  # different weights and generator: all must come from the checkpoint
    torch.manual_seed(999)  # and the global stream too
    result = fit(resumed, train, CONFIG, val_sampler=val, out_dir=tmp_path / "b",
                 progress=False, spec=SPEC)

    assert result.finished and result.step == CONFIG.steps
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(p, q), name
    assert result.history == expected.history
    assert [v["step"] for v in result.history["val"]] == [4, 8, 12]


def test_fit_leaves_the_callers_random_state_alone() -> None:
    train, _ = samplers()
    learner = toy(0)
    before = torch.get_rng_state()
    fit(learner, train, replace(CONFIG, steps=2), progress=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    train, val = samplers()
    fit(toy(0), train, replace(CONFIG, steps=3), val_sampler=val, out_dir=tmp_path,
        progress=False, spec=SPEC)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["step"] == 3 and state["config"]["steps"] == 3
    assert state["spec"]["learner"] == SPEC["learner"]
    assert state["spec"]["train_episodes"] == {"dataset": "digits", "split": "train",
                                               "ways": 5, "shots": 1, "queries": 5}
    assert set(state["model"]) == set(toy(0).state_dict())
    assert set(state["rng"]["learner"]) == {"support/noise", "query/noise"}
    assert set(state["rng"]["sampler"]) == {"episodes"}
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4


def test_crash_while_saving_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch) -> None:
    train, _ = samplers()
    fit(toy(0), train, CONFIG, out_dir=tmp_path, progress=False, stop_after=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, METRICS_FILE]
    good = (tmp_path / CHECKPOINT).read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        fit(toy(0), train, CONFIG, out_dir=tmp_path, progress=False, stop_after=4)
    assert (tmp_path / CHECKPOINT).read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, METRICS_FILE]  # no temp files
    assert load_checkpoint(tmp_path / CHECKPOINT)["step"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": replace(CONFIG, lr=1e-4)}, "lr: 0.003 -> 0.0001"),
        ({"spec": {"learner": {"method": "other", "ways": 5}}}, "spec['learner']"),
    ],
)
def test_resuming_a_different_run_is_an_error(tmp_path: Path, change, message) -> None:
    train, _ = samplers()
    fit(toy(0), train, CONFIG, out_dir=tmp_path, progress=False, spec=SPEC, stop_after=1)
    args = {"config": CONFIG, "spec": SPEC, **change}
    with pytest.raises(ValueError, match="different run") as error:
        fit(toy(0), train, args["config"], out_dir=tmp_path, progress=False, spec=args["spec"])
    assert message in str(error.value)
    fit(toy(0), train, replace(CONFIG, steps=2), out_dir=tmp_path, progress=False,
        resume=False)  # starting over is allowed


def test_amp_is_ignored_on_cpu() -> None:
    a, b = toy(0), toy(0)
    fit(a, samplers()[0], replace(CONFIG, steps=3), progress=False)
    fit(b, samplers()[0], replace(CONFIG, steps=3, amp=True, amp_dtype="float16"),
        progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_metrics_json_holds_fractions(tmp_path: Path) -> None:
    train, val = samplers()
    result = fit(toy(0), train, replace(CONFIG, steps=4), val_sampler=val, out_dir=tmp_path,
                 progress=False, spec=SPEC)
    before = json.loads((tmp_path / METRICS_FILE).read_text())
    assert before["accuracy"] is None and before["episodes"] == 0  # not evaluated yet

    evaluation = EvalResult(0.75, 0.05, 40, (0.75,) * 40)
    test = EpisodeSampler(load_dataset("digits", "test"), 3, 2, 4, seed=0)
    write_metrics(tmp_path, result, evaluation, test)
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert {"accuracy", "ci95", "ways", "shots", "episodes", "train_seconds", "method",
            "dataset", "history"} <= set(metrics)
    assert metrics["accuracy"] == 0.75 and metrics["ci95"] == 0.05
    assert (metrics["method"], metrics["dataset"], metrics["split"]) == ("toy", "digits", "test")
    assert (metrics["ways"], metrics["shots"], metrics["episodes"]) == (3, 2, 40)
    assert metrics["history"]["val"][-1]["step"] == 4
    assert all(0 <= v["accuracy"] <= 1 for v in metrics["history"]["val"])
    assert metrics["best_val"] == max(metrics["history"]["val"], key=lambda v: v["accuracy"])
    assert math.isfinite(metrics["train_seconds"])
    assert TrainResult.from_checkpoint(load_checkpoint(tmp_path / CHECKPOINT)).step == 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "steps must be a positive int"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"schedule": "exp"}, "unknown schedule"),
        ({"lr": 0.0}, "lr > 0"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"channels_last": 1}, "channels_last must be a bool"),
        ({"compile": "yes"}, "compile must be a bool"),
    ],
)
def test_config_rejects_bad_values(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_spec_must_be_plain_data() -> None:
    with pytest.raises(ValueError, match="plain data"):
        fit(toy(0), samplers()[0], replace(CONFIG, steps=1), progress=False,
            spec={"learner": {"encoder": nn.Identity()}})


class NoMetaLoss(nn.Module):
    def classify(self, episode):
        return episode.query_x


def test_fit_names_what_a_learner_lacks() -> None:
    train, _ = samplers()
    with pytest.raises(TypeError, match="NoMetaLoss is not a learner: it has no meta_loss"):
        fit(NoMetaLoss(), train, CONFIG, progress=False)


def test_fit_names_what_a_task_source_lacks() -> None:
    class Episodes:  # sample_batch, but no generators() for the checkpoint
        def sample_batch(self, n):
            return samplers()[0].sample_batch(n)

    with pytest.raises(TypeError, match="Episodes is not a task source: it has no generators"):
        fit(toy(0), Episodes(), CONFIG, progress=False)


def test_after_step_gets_the_step_and_the_run_length() -> None:
    calls = []

    class Counting(ToyProtoNet):
        def after_step(self, step, total_steps):
            calls.append((step, total_steps))

    torch.manual_seed(0)
    fit(Counting(), samplers()[0], replace(CONFIG, steps=3), progress=False)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_a_checkpoint_of_another_format_is_refused(tmp_path: Path) -> None:
    train, _ = samplers()
    fit(toy(0), train, replace(CONFIG, steps=2), out_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    torch.save({**state, "format": 1}, tmp_path / CHECKPOINT)
    with pytest.raises(ValueError, match="format 1; this version reads format 2"):
        fit(toy(0), train, replace(CONFIG, steps=4), out_dir=tmp_path, progress=False)


# ---- fast paths: channels-last, pinned copies, mixed-precision policy, torch.compile ----------

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def glyph_learner(method: str, device: str, **fields):
    """A small real learner and its sampler: episodes for meta-learners, images for SSL."""
    from companion import methods
    from companion.data.batches import ImageBatchSampler

    torch.manual_seed(0)
    learner = methods.build_learner(method, ways=5, image_size=28, in_channels=1, width=8,
                                    **fields)
    data = load_dataset("glyphs", "train", alphabets=2)
    if methods.get(method).trains_on == "images":
        return learner, ImageBatchSampler(data, seed=0)
    return learner, EpisodeSampler(data, 5, 1, 2, seed=0)


# SGD, not Adam: Adam's first step is lr * sign(g), which turns rounding noise in a gradient
# that should be 0 (a conv bias before batch norm) into a full step.
FAST = replace(CONFIG, steps=3, meta_batch=2, optimizer="sgd", lr=0.1, log_every=1,
               val_every=100, checkpoint_every=100)


def test_to_device_leaves_a_cpu_batch_as_it_is() -> None:
    from companion.train import to_device

    batch = samplers()[0].sample_batch(2)
    moved = to_device(batch, torch.device("cpu"))
    assert all(getattr(moved, f) is getattr(batch, f) for f in
               ("support_x", "support_y", "query_x", "query_y"))  # not even copied
    images = torch.rand(4, 1, 8, 8)
    assert to_device(images, torch.device("cpu")) is images


def test_channels_last_changes_the_layout_not_the_values() -> None:
    from companion.data.episodes import TaskBatch
    from companion.train import to_device

    x = torch.rand(2, 6, 3, 5, 7)  # (T, N*K, C, H, W): three channels, so layouts differ
    y = torch.arange(6).repeat(2, 1)
    moved = to_device(TaskBatch(x, y, x, y), torch.device("cpu"), channels_last=True)
    assert torch.equal(moved.support_x, x) and moved.support_y is y  # labels untouched
    for t in range(2):  # each task's images are a channels_last (B, C, H, W) tensor
        assert moved.support_x[t].is_contiguous(memory_format=torch.channels_last)
        assert not x[t].is_contiguous(memory_format=torch.channels_last)
    images = to_device(x[0], torch.device("cpu"), channels_last=True)
    assert torch.equal(images, x[0])
    assert images.stride() == x[0].contiguous(memory_format=torch.channels_last).stride()
    with pytest.raises(TypeError, match="channels_last needs a batch"):
        to_device([x], torch.device("cpu"), channels_last=True)


class Float64Batches:
    """A sampler's batches in float64 (its generators are the sampler's own)."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def generators(self):
        return self.sampler.generators()

    def sample_batch(self, n):
        batch = self.sampler.sample_batch(n)
        return batch.double() if isinstance(batch, torch.Tensor) else batch.to(dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["protonet", "simclr", "maml"])
def test_channels_last_trains_to_the_same_parameters(method, device, one_thread) -> None:
    """A few steps with channels-last weights and images end where NCHW ones do. In float64:
    in float32 the two layouts' convolution kernels round differently, and batch norm's
    backward (a difference of means) lifts that to ~1e-3 of a gradient. MAML runs through
    functional_call and torch.func.grad."""
    ends = []
    for channels_last in (False, True):
        learner, sampler = glyph_learner(method, device)
        fit(learner.double(), Float64Batches(sampler),
            replace(FAST, device=device, channels_last=channels_last), progress=False)
        ends.append([p.detach().cpu() for p in learner.parameters()])
        weights = [p for p in learner.parameters() if p.ndim == 4]
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last)
                               for w in weights) == channels_last
    if device == "cpu":  # other kernels ran (on CUDA, float64 may fall back to the same one)
        assert not all(torch.equal(a, b) for a, b in zip(*ends, strict=True))
    for plain, last in zip(*ends, strict=True):
        torch.testing.assert_close(last, plain, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_maml_vmap_meta_gradient_is_the_same_channels_last(device) -> None:
    """MAML's vmap over tasks (functional_call inside torch.func.grad and vmap) with
    channels-last weights and images gives the NCHW meta-gradient (float64)."""
    from companion.train import to_device

    learner, sampler = glyph_learner("maml", device, strategy="vmap")
    learner = learner.double().to(device)
    batch = sampler.sample_batch(3).to(device, torch.float64)
    grads = []
    for channels_last in (False, True):
        if channels_last:
            learner.to(memory_format=torch.channels_last)
        loss, _ = learner.meta_loss(to_device(batch, torch.device(device),
                                              channels_last=channels_last))
        grads.append(torch.autograd.grad(loss, list(learner.parameters())))
    for plain, last in zip(*grads, strict=True):
        torch.testing.assert_close(last, plain, atol=1e-10, rtol=1e-8)


class AutocastProbe(nn.Module):
    """A linear classifier of digits that records whether ``meta_loss`` ran under autocast."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(64, 5)
        self.seen: list[bool] = []

    def meta_loss(self, batch):
        self.seen.append(torch.is_autocast_enabled(batch.query_x.device.type))
        logits = self.net(batch.query_x.flatten(2))  # (T, N*Q, N)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch.query_y.flatten()), {}

    def classify(self, episode):
        return self.net(episode.query_x.flatten(1))


class Float32Probe(AutocastProbe):
    amp_safe = False


@pytest.mark.parametrize("device", DEVICES)
def test_amp_autocasts_only_the_learners_that_allow_it(device) -> None:
    """amp=True autocasts meta_loss on CUDA, never on a CPU, and never for a learner with
    ``amp_safe = False`` (Reptile)."""
    from companion.train import amp_enabled

    for probe_class in (AutocastProbe, Float32Probe):
        probe = probe_class()
        fit(probe, samplers()[0], replace(FAST, device=device, amp=True), progress=False)
        assert probe.seen == [device == "cuda" and probe_class is AutocastProbe] * FAST.steps
    learners = {name: glyph_learner(name, "cpu")[0]
                for name in ("protonet", "maml", "fomaml", "anil", "simclr", "reptile")}
    assert {name: amp_enabled(learner) for name, learner in learners.items()} == {
        "protonet": True, "maml": True, "fomaml": True, "anil": True, "simclr": True,
        "reptile": False}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_meta_loss_trains_as_eager(device, one_thread) -> None:
    """compile=True (torch.compile of meta_loss, inductor) gives eager's losses and
    parameters to float32 rounding. Slow: compiling takes 10-80 s on 2 CPU cores."""
    import shutil

    from torch._dynamo.utils import counters
    from torch.utils._triton import has_triton

    if device == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile's inductor needs a C++ compiler on the CPU; none found")
    if device == "cuda" and not has_triton():
        pytest.skip("torch.compile's inductor needs triton on CUDA; it is not installed")
    torch._dynamo.reset()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    runs = []
    try:  # float32 without TF32, whose 10-bit mantissa differs between kernels
        for compile_ in (False, True):
            learner, sampler = glyph_learner("protonet", device)
            result = fit(learner, sampler, replace(FAST, device=device, compile=compile_),
                         progress=False)
            runs.append(([h["loss"] for h in result.history["train"]],
                         [p.detach().cpu() for p in learner.parameters()]))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    (eager_losses, eager), (compiled_losses, compiled) = runs
    assert counters["stats"]["unique_graphs"] > 0  # it did compile
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
