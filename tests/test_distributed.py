"""Data-parallel training: two gloo processes equal one process on the global batch.

Each job spawns two CPU processes (``torch.multiprocessing.spawn``) that join a ``gloo``
process group through a file in ``tmp_path``; each saves what it computed, and the test
compares that with a one-process reference built here on the concatenated batch.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from companion import distributed
from companion.data import EpisodeSampler, load_dataset
from companion.data.augment import AugmentConfig, two_views
from companion.data.batches import ImageBatchSampler
from companion.data.episodes import TaskBatch
from companion.meta.maml import MAML, MAMLConfig
from companion.meta.protonet import ProtoNet
from companion.nets import Conv4, linear_head
from companion.ssl.learner import SelfSupervised
from companion.ssl.moco import FeatureQueue, MoCo, MoCoConfig
from companion.ssl.simclr import (
    SimCLR,
    SimCLRConfig,
    nt_xent,
    nt_xent_logits,
    nt_xent_logits_global,
    projection_head,
)
from companion.tasks.psco import PsCo, PsCoConfig
from companion.train import CHECKPOINT, METRICS_FILE, TrainConfig, fit, load_checkpoint
from tests.conftest import REPO

WORLD = 2
SEED = 3


def _entry(rank: int, world: int, init: str, out: str, job: str) -> None:
    torch.set_num_threads(1)  # tiny models: threads would only wait on each other
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(JOBS[job](Path(out)), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(job: str, tmp_path: Path) -> list[Any]:
    """Run ``JOBS[job](tmp_path)`` on ``WORLD`` gloo ranks; what each returned, by rank."""
    mp.spawn(_entry, args=(WORLD, str(tmp_path / "init"), str(tmp_path), job), nprocs=WORLD)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


# NT-Xent across ranks -------------------------------------------------------------------

N, D = 6, 5  # global batch and input width


def xent_inputs() -> tuple[torch.Tensor, torch.Tensor, nn.Linear]:
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, N, D, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    return x1, x2, nn.Linear(D, 4, dtype=torch.float64)


def xent_job(out: Path) -> dict[str, torch.Tensor]:
    x1, x2, projector = xent_inputs()
    rows = slice(distributed.rank() * N // WORLD, (distributed.rank() + 1) * N // WORLD)
    z1, z2 = projector(x1[rows]), projector(x2[rows])  # this rank's n = N / W images
    z1.retain_grad()
    z2.retain_grad()
    logits, targets = nt_xent_logits_global(z1, z2, temperature=0.3)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    return {"loss": loss.detach(), "z1": z1.grad, "z2": z2.grad,
            **{k: p.grad for k, p in projector.named_parameters()}}


@pytest.mark.slow
def test_nt_xent_across_ranks_equals_the_global_batch(tmp_path: Path) -> None:
    ranks = run_ranks("xent", tmp_path)
    x1, x2, projector = xent_inputs()
    z1, z2 = projector(x1), projector(x2)
    z1.retain_grad()
    z2.retain_grad()
    loss = nt_xent(z1, z2, temperature=0.3)  # one process, all N images
    loss.backward()
    # the mean of the ranks' losses is the global loss ...
    assert torch.stack([r["loss"] for r in ranks]).mean().item() == pytest.approx(
        loss.item(), abs=1e-12)
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # each rank's own anchors
    # ... each rank's gradient of its rows, over W, is the global loss's (the gather's
    # backward summed every rank's contribution into them) ...
    for name, z in (("z1", z1), ("z2", z2)):
        torch.testing.assert_close(torch.cat([r[name] for r in ranks]) / WORLD, z.grad,
                                   atol=1e-6, rtol=0)
    # ... and DDP's average of the ranks' parameter gradients is the global gradient
    for name, p in projector.named_parameters():
        torch.testing.assert_close(torch.stack([r[name] for r in ranks]).mean(0), p.grad,
                                   atol=1e-6, rtol=0)


# fit on two ranks ------------------------------------------------------------------------

GLYPHS = {"alphabets": 2}
CONFIG = TrainConfig(steps=3, meta_batch=4, lr=0.5, optimizer="sgd", log_every=1, val_every=100,
                     checkpoint_every=2, device="cpu", seed=SEED)


def protonet() -> ProtoNet:
    torch.manual_seed(0)
    return ProtoNet(Conv4(1, hidden=8, norm=None))  # no BN: see test_fit_equals_one_process


def maml() -> MAML:
    torch.manual_seed(0)  # MAML runs its tasks one at a time, so its BN stays per task
    return MAML(nn.Sequential(Conv4(1, hidden=8), linear_head(8, 3)),
                MAMLConfig(inner_steps=1, inner_steps_test=1))


def _without_batch_statistics(method: nn.Module) -> SelfSupervised:
    """``method`` with norm-free heads (its Conv-4 has GroupNorm), in the glyph views' wrapper;
    the momentum copies of a queue method are remade from the new heads."""
    for name in ("projector", "predictor"):
        if hasattr(method, name):
            setattr(method, name, projection_head(8, 16, 8, norm=None))
    if hasattr(method, "key_projector"):
        method.key_projector = copy.deepcopy(method.projector).requires_grad_(False)
    return SelfSupervised(method, AugmentConfig.glyphs(), seed=SEED)


def simclr() -> SelfSupervised:
    torch.manual_seed(0)
    return _without_batch_statistics(
        SimCLR(Conv4(1, hidden=8, norm="group"), 8, SimCLRConfig(hidden_dim=16, out_dim=8)))


def moco() -> SelfSupervised:
    """A queue of 16 keys, filled by 3 steps of 4 images; momentum 0.9 so the key encoder
    visibly moves."""
    torch.manual_seed(0)
    config = MoCoConfig(queue_size=16, momentum=0.9, hidden_dim=16, out_dim=8)
    return _without_batch_statistics(MoCo(Conv4(1, hidden=8, norm="group"), 8, config))


def psco() -> SelfSupervised:
    torch.manual_seed(0)
    config = PsCoConfig(queue_size=16, momentum=0.9, hidden_dim=16, out_dim=8)
    return _without_batch_statistics(PsCo(Conv4(1, hidden=8, norm="group"), 8, config))


def episodes(seed: int) -> EpisodeSampler:
    return EpisodeSampler(load_dataset("glyphs", "train", **GLYPHS), 3, 1, 2, seed=seed)


def images(seed: int) -> ImageBatchSampler:
    return ImageBatchSampler(load_dataset("glyphs", "train", **GLYPHS), seed=seed)


METHODS = {"protonet": (protonet, episodes), "maml": (maml, episodes), "simclr": (simclr, images),
           "moco": (moco, images), "psco": (psco, images)}
SELF_SUPERVISED = ("simclr", "moco", "psco")


class Concatenated:
    """The global batch of one process: rank ``r``'s share from a sampler seeded as rank
    ``r`` of a distributed run seeds it (:func:`companion.distributed.rank_seed`)."""

    def __init__(self, make: Any) -> None:
        self.samplers = [make(distributed.rank_seed(SEED, r)) for r in range(WORLD)]

    def generators(self) -> dict[str, torch.Generator]:
        return {f"{r}": s.generator for r, s in enumerate(self.samplers)}

    def sample_batch(self, n: int) -> Any:
        shares = [s.sample_batch(n // WORLD) for s in self.samplers]
        if isinstance(shares[0], TaskBatch):
            return TaskBatch.stack([episode for share in shares for episode in share])
        return torch.cat(shares)


class ConcatenatedViews(nn.Module):
    """A self-supervised learner on the global batch in one process: the views of rank
    ``r``'s share drawn from the augmentation stream that rank ``r`` of a distributed run
    draws them from."""

    def __init__(self, build: Any) -> None:
        super().__init__()
        self.learner = build()
        self.streams = [torch.Generator().manual_seed(distributed.rank_seed(SEED, r))
                        for r in range(WORLD)]

    def meta_loss(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        views = [two_views(share, self.learner.augment_config, g)
                 for share, g in zip(batch.chunk(WORLD), self.streams, strict=True)]
        x1, x2 = (torch.cat(v) for v in zip(*views, strict=True))
        loss, logs = self.learner.method.loss(x1, x2)
        return loss, {k: float(v) for k, v in logs.items()}

    def after_step(self, step: int, total_steps: int) -> None:
        self.learner.after_step(step, total_steps)

    def classify(self, episode: Any) -> torch.Tensor:
        return self.learner.classify(episode)


def fit_job(out: Path) -> dict[str, Any]:
    """Every method's run, and the resumed run, in one pair of processes (starting them
    takes longer than the runs)."""
    found: dict[str, Any] = {"resume": resume_job(out)}
    for method, (build, sampler) in METHODS.items():
        learner = build()
        result = fit(learner, sampler(SEED), CONFIG, progress=False)
        found[method] = {"params": dict(learner.named_parameters()), "history": result.history,
                         "queues": {k: b for k, b in learner.named_buffers()
                                    if k.endswith("queue.features")}}
    return found


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], Path]:
    out = tmp_path_factory.mktemp("fits")
    return run_ranks("fit", out), out


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_fit_equals_one_process(method: str, fits: tuple[list[Any], Path], one_thread) -> None:
    """Two ranks with 2 tasks (images) each end where one process with the 4 of both does.

    The models have no batch statistics shared across a batch (see
    :mod:`companion.distributed`): ProtoNet's Conv-4 has no norm, the self-supervised
    methods' have GroupNorm and unnormalised heads; MAML keeps its BN, which sees one task
    at a time. For MoCo and PsCo the parameters include the key network (its EMA) and the
    buffers their queue, which must hold every rank's keys in rank order.
    """
    ranks = [r[method] for r in fits[0]]
    build, sampler = METHODS[method]
    learner = ConcatenatedViews(build) if method in SELF_SUPERVISED else build()
    result = fit(learner, Concatenated(sampler), CONFIG, progress=False)
    expected = {k.removeprefix("learner."): p for k, p in learner.named_parameters()}
    queues = {k.removeprefix("learner."): b for k, b in learner.named_buffers()
              if k.endswith("queue.features")}
    for r in ranks:
        assert r["params"].keys() == expected.keys()
        for name, p in expected.items():
            torch.testing.assert_close(r["params"][name], p.detach(), atol=1e-6, rtol=0)
        assert r["queues"].keys() == queues.keys()
        for name, q in queues.items():
            torch.testing.assert_close(r["queues"][name], q, atol=1e-6, rtol=0)
    if method in ("moco", "psco"):  # 3 steps of 4 keys written, in the one-process order
        written = CONFIG.steps * CONFIG.meta_batch
        assert int(learner.learner.method.queue.ptr) == written
        assert not torch.allclose(queues["method.queue.features"][:written],
                                  build().method.queue.features[:written])
    losses = [[h["loss"] for h in r["history"]["train"]] for r in ranks]
    assert losses[0] == losses[1] == pytest.approx([h["loss"] for h in result.history["train"]],
                                                   abs=1e-5)  # logs: means over the ranks
    moved = max((p - q).abs().max() for p, q in zip(build().parameters(), expected.values(),
                                                     strict=True))
    assert moved > 1e-4  # the test compares trained weights, not initial ones


def resume_job(out: Path) -> dict[str, Any]:
    straight = protonet()
    fit(straight, episodes(SEED), CONFIG, out_dir=out / "a", progress=False)
    fit(protonet(), episodes(SEED), CONFIG, out_dir=out / "b", progress=False, stop_after=2)
    torch.manual_seed(99)  # another init: the weights must come from the checkpoint
    resumed = ProtoNet(Conv4(1, hidden=8, norm=None))
    fit(resumed, episodes(SEED + 1), CONFIG, out_dir=out / "b", progress=False)
    return {"straight": dict(straight.named_parameters()),
            "resumed": dict(resumed.named_parameters())}


@pytest.mark.slow
def test_resumed_distributed_run_equals_uninterrupted(fits: tuple[list[Any], Path],
                                                      one_thread) -> None:
    ranks, tmp_path = [r["resume"] for r in fits[0]], fits[1]
    for r in ranks:
        for name, p in r["straight"].items():
            torch.testing.assert_close(r["resumed"][name], p, atol=0, rtol=0)
    state = load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert state["world_size"] == WORLD and len(state["rng_ranks"]) == WORLD
    assert not torch.equal(state["rng_ranks"][0]["sampler"]["episodes"],
                           state["rng_ranks"][1]["sampler"]["episodes"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [CHECKPOINT, METRICS_FILE]
    with pytest.raises(ValueError, match="2 rank"):  # one process cannot resume it
        fit(protonet(), episodes(SEED), CONFIG, out_dir=tmp_path / "b", progress=False)


JOBS = {"xent": xent_job, "fit": fit_job}


# the command line under torchrun ---------------------------------------------------------

def torchrun_train(out: Path, *extra: str) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={WORLD}", "-m", "companion", "train", "protonet",
               "--dataset", "glyphs", "--profile", "smoke", "--steps", "4", "--meta-batch", "2",
               "--width", "8", "--val-split", "none", "--no-eval", "--quiet", "--device", "cpu",
               "--out", str(out), *extra]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_torchrun_train_stops_and_resumes_like_an_uninterrupted_run(tmp_path: Path) -> None:
    """``torchrun -m companion train``: one checkpoint and one metrics.json, a single
    report, and a run stopped after step 2 then resumed equals one that never stopped."""
    printed = torchrun_train(tmp_path / "a")
    assert printed.count("trained protonet") == 1  # rank 0 reports
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [CHECKPOINT, METRICS_FILE]
    assert "stopped after step 2 of 4" in torchrun_train(tmp_path / "b", "--stop-after", "2")
    torchrun_train(tmp_path / "b")
    straight, resumed = (load_checkpoint(tmp_path / run / CHECKPOINT) for run in "ab")
    assert straight["world_size"] == resumed["world_size"] == WORLD
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, atol=0, rtol=0)
    assert resumed["history"] == straight["history"]


# errors, in one process --------------------------------------------------------------------

def test_local_batch_must_divide() -> None:
    assert distributed.local_batch(8, world=4) == 2
    with pytest.raises(ValueError, match="global batch of 6 does not split over 4 ranks.*4, 8"):
        distributed.local_batch(6, world=4)


def test_a_queue_refuses_more_keys_than_it_holds() -> None:
    queue = FeatureQueue(dim=2, size=3)
    with pytest.raises(ValueError, match=r"cannot enqueue 4 keys .* queue of 3 \(the queue size\)"):
        queue.enqueue(torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"keys must be \(n, 2\)"):
        queue.enqueue(torch.ones(2, 3))


def test_without_a_process_group_the_helpers_are_one_process() -> None:
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x and distributed.gather(x) is x
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.gather_objects("a") == ["a"]
    assert distributed.rank_seed(5, 0) == 5 and distributed.rank_seed(5, 1) != 5


def test_global_nt_xent_logits_in_one_process_are_nt_xent_logits() -> None:
    z1, z2 = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    for got, want in zip(nt_xent_logits_global(z1, z2, temperature=0.2),
                         nt_xent_logits(z1, z2, temperature=0.2), strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_look_ahead_learners_are_refused_with_the_reason() -> None:
    """MAXL's generated labels and a meta-learned auxiliary weight cannot split their
    look-ahead step; the same learners with human labels or a fixed weight can."""
    from companion import methods

    def build(method: str, **changes: Any) -> nn.Module:
        return methods.build_learner(method, ways=5, image_size=28, in_channels=1, width=8,
                                     **changes)

    with pytest.raises(ValueError, match="MAXL .*cannot train on several ranks: the label "
                                         "generator's gradient"):
        distributed.check_distributable(build("maxl"))
    with pytest.raises(ValueError, match="WithAuxiliary .*cannot train on several ranks: "
                                         "the weight's hypergradient"):
        distributed.check_distributable(build("protonet", aux="rotation", aux_weight="meta"))
    distributed.check_distributable(build("maxl", labels="human"))
    distributed.check_distributable(build("protonet", aux="rotation", aux_weight=0.5))
    distributed.check_distributable(moco())
