"""Reptile against hand-written references (Nichol, Achiam & Schulman, 2018).

The toy problem is linear regression, ``y = x w_tau + b_tau``, with ``nn.Linear(3, 1)`` in
float64: its loss is quadratic, so gradients and Hessians have closed forms and the Taylor
expansion of Sec. 5 is exact.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from companion.data import Episode, EpisodeSampler, TaskBatch, load_dataset
from companion.data.sinusoid import SinusoidTasks
from companion.meta.reptile import Reptile, ReptileConfig, minibatch_indices
from companion.nets import MLP, Conv4, linear_head

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs its tiny models on one thread (see tests/conftest.py)."""


def linear_tasks(tasks: int = 4, n: int = 8, seed: int = 0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for _ in range(tasks):
        w, b = torch.randn(3, generator=g, dtype=D), torch.randn((), generator=g, dtype=D)
        x = torch.randn(2 * n, 3, generator=g, dtype=D)
        y = x @ w + b + 0.1 * torch.randn(2 * n, generator=g, dtype=D)
        episodes.append(Episode(x[:n], y[:n], x[n:], y[n:]))
    return TaskBatch.stack(episodes)


def linear_net(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 1).to(D)


def augmented(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (n, 4): [x, 1]


def flat(theta: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([theta["weight"].reshape(-1), theta["bias"].reshape(-1)])  # (4,)


def mse_grad(t: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Analytic gradient of mean((x w + b - y)^2) in t = [w, b]."""
    xa = augmented(x)
    return 2 / len(y) * xa.T @ (xa @ t - y)


def reference_phi(t, x, y, alpha, k, rows) -> torch.Tensor:
    """k plain SGD steps on the minibatches ``rows``, from t = [w, b]."""
    for r in rows[:k]:
        t = t - alpha * mse_grad(t, x[r], y[r])
    return t


@pytest.mark.parametrize("inner_batch", [None, 3])
def test_one_meta_step_equals_handwritten_reptile(inner_batch: int | None) -> None:
    alpha, k, eps, seed = 0.05, 3, 0.3, 11
    cfg = ReptileConfig(inner_steps=k, inner_lr=alpha, inner_optimizer="sgd",
                        inner_batch=inner_batch, loss="mse")
    net = linear_net()
    learner = Reptile(net, cfg, seed=seed)
    batch = linear_tasks()
    theta = flat(dict(net.named_parameters())).detach().clone()

    g = torch.Generator().manual_seed(seed)  # the same draws as the learner's minibatches
    phis = []
    for e in batch:
        rows = minibatch_indices(len(e.support_y), inner_batch, k, g)
        phis.append(reference_phi(theta, e.support_x, e.support_y, alpha, k, rows))
    phi_bar = torch.stack(phis).mean(0)

    surrogate, logs = learner.meta_loss(batch)
    assert torch.equal(flat(dict(net.named_parameters())), theta)  # meta_loss moves nothing
    torch.testing.assert_close(surrogate, 0.5 * (theta - phi_bar).square().sum())
    assert set(logs) == {"loss"} and logs["loss"] > 0
    opt = torch.optim.SGD(learner.parameters(), lr=eps)
    opt.zero_grad()
    surrogate.backward()
    grads = flat({k: p.grad for k, p in net.named_parameters()})
    torch.testing.assert_close(grads, theta - phi_bar)  # (3): the gradient is theta - phi_bar
    opt.step()
    updated = flat(dict(net.named_parameters())).detach()
    torch.testing.assert_close(updated, theta + eps * (phi_bar - theta))  # Algorithm 2


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.99)])
def test_inner_adam_equals_torch_optim_adam(betas: tuple[float, float]) -> None:
    cfg = ReptileConfig(inner_steps=4, inner_lr=0.01, adam_betas=betas, inner_batch=None,
                        loss="mse")
    net = linear_net(1)
    learner = Reptile(net, cfg)
    episode = linear_tasks(1)[0]
    phi = learner.adapt(learner.params(), episode.support_x, episode.support_y)

    ref = copy.deepcopy(net)  # a fresh torch.optim.Adam per task, as in our inner loop
    opt = torch.optim.Adam(ref.parameters(), lr=0.01, betas=betas, eps=1e-8)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(ref(episode.support_x)[:, 0], episode.support_y).backward()
        opt.step()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(phi[name], p.detach())


def test_taylor_expansion_of_section_5() -> None:
    """k = 1: (theta - phi_bar) / alpha is the gradient of the mean task loss (joint
    training). k = 2 on one full batch: (theta - phi) / alpha = 2 g - alpha H g, exact for a
    quadratic loss (the AvgGrad and AvgGradInner terms of Sec. 5.1)."""
    alpha, batch = 0.02, linear_tasks(tasks=5)
    net = linear_net(2)
    theta = flat(dict(net.named_parameters())).detach().clone()
    g_bar = torch.stack([mse_grad(theta, e.support_x, e.support_y) for e in batch]).mean(0)

    one = ReptileConfig(inner_steps=1, inner_lr=alpha, inner_optimizer="sgd", inner_batch=None,
                        loss="mse")
    surrogate, _ = Reptile(net, one).meta_loss(batch)
    surrogate.backward()
    direction = flat({k: p.grad for k, p in net.named_parameters()})
    torch.testing.assert_close(direction / alpha, g_bar)

    learner = Reptile(net, ReptileConfig(inner_steps=2, inner_lr=alpha, inner_optimizer="sgd",
                                         inner_batch=None, loss="mse"))
    for e in batch:
        phi = flat(learner.adapt(learner.params(), e.support_x, e.support_y))
        g = mse_grad(theta, e.support_x, e.support_y)
        hessian = 2 / len(e.support_y) * augmented(e.support_x).T @ augmented(e.support_x)
        torch.testing.assert_close((theta - phi) / alpha, 2 * g - alpha * hessian @ g)


def test_minibatches_cycle_through_shuffled_epochs() -> None:
    g = torch.Generator().manual_seed(0)
    idx = minibatch_indices(10, 4, 7, g)  # 28 indices = 2.8 epochs of 10
    assert idx.shape == (7, 4)
    flat_idx = idx.reshape(-1)
    for start in (0, 10):  # every complete epoch is a permutation
        assert sorted(flat_idx[start:start + 10].tolist()) == list(range(10))
    assert len(set(flat_idx[20:].tolist())) == 8  # the last partial epoch has no repeats
    assert flat_idx[:10].tolist() != list(range(10))  # shuffled,
    assert not torch.equal(flat_idx[:10], flat_idx[10:20])  # and reshuffled every epoch
    again = minibatch_indices(10, 4, 7, torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    assert minibatch_indices(5, None, 3).tolist() == [list(range(5))] * 3
    assert minibatch_indices(5, 10, 2).shape == (2, 5)  # batch clipped to the data
    assert minibatch_indices(5, 2, 0).shape == (0, 2)


def test_reptile_learns_to_adapt_on_sinusoids() -> None:
    torch.manual_seed(0)
    cfg = ReptileConfig(inner_steps=5, inner_lr=0.02, inner_optimizer="sgd", inner_batch=None,
                        eval_inner_steps=10, eval_inner_batch=None, loss="mse")
    learner = Reptile(MLP(1, (40, 40), out_features=1), cfg, seed=0)
    untrained = copy.deepcopy(learner)
    train, held_out = SinusoidTasks(10, 10, seed=1), SinusoidTasks(10, 100, seed=2)
    steps, tasks = 200, 5  # Nichol et al.'s 5 tasks per meta-step
    opt = torch.optim.SGD(learner.parameters(), lr=1.0)
    for step in range(steps):
        for group in opt.param_groups:  # epsilon annealed linearly from 1 to 0, as their code
            group["lr"] = 1.0 - step / steps
        surrogate, _ = learner.meta_loss(train.sample_batch(tasks))
        opt.zero_grad()
        surrogate.backward()
        opt.step()

    def query_mse(model: Reptile, steps: int | None) -> float:
        errors = []
        for e in tasks:
            phi = model.adapt(model.params(), e.support_x, e.support_y, steps=steps, test=True)
            errors.append(nn.functional.mse_loss(model.predict(phi, e.query_x), e.query_y))
        return torch.stack(errors).mean().item()

    tasks = [held_out.sample() for _ in range(30)]
    adapted, unadapted = query_mse(learner, None), query_mse(learner, 0)
    assert adapted < 0.75 * unadapted
    assert adapted < 0.75 * query_mse(untrained, None)  # meta-training, not just fine-tuning
    assert learner.classify(tasks[0]).shape == (100,)  # predictions, not logits


def test_glyphs_classify_and_meta_loss() -> None:
    """Default config (inner Adam, batches of 10 = the whole 5-way 2-shot support set, so no
    shuffling): the logged query loss and accuracy equal torch.optim.Adam's adaptation."""
    sampler = EpisodeSampler(load_dataset("glyphs", "train", alphabets=3), ways=5, shots=2,
                             queries=3, seed=0)
    torch.manual_seed(0)
    net = nn.Sequential(Conv4(hidden=8), linear_head(8, 5))
    learner = Reptile(net, ReptileConfig(eval_inner_steps=10), seed=0)
    before = {k: p.detach().clone() for k, p in net.named_parameters()}
    with torch.no_grad():
        logits = learner.classify(sampler.sample())
    assert logits.shape == (15, 5) and not logits.requires_grad and logits.isfinite().all()
    for k, p in net.named_parameters():
        assert torch.equal(p, before[k]) and p.grad is None

    batch = sampler.sample_batch(2)
    surrogate, logs = learner.meta_loss(batch)
    losses, accuracies = [], []
    for e in batch:  # 5 steps of a fresh Adam(betas=(0, 0.999)) per task, from theta
        ref = copy.deepcopy(net)
        opt = torch.optim.Adam(ref.parameters(), lr=1e-3, betas=(0.0, 0.999), eps=1e-8)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.cross_entropy(ref(e.support_x), e.support_y).backward()
            opt.step()
        with torch.no_grad():
            out = ref(e.query_x)
        losses.append(nn.functional.cross_entropy(out, e.query_y).item())
        accuracies.append((out.argmax(-1) == e.query_y).float().mean().item())
    assert set(logs) == {"loss", "accuracy"}
    assert logs["loss"] == pytest.approx(sum(losses) / 2, rel=1e-4)
    assert logs["accuracy"] == pytest.approx(sum(accuracies) / 2, abs=1e-6)
    surrogate.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_generators_name_the_minibatch_stream() -> None:
    """``generators()`` returns the stream the inner minibatches draw from, so restoring
    its state (as a checkpoint does) repeats the same adaptation."""
    learner = Reptile(linear_net(), ReptileConfig(inner_batch=3, inner_optimizer="sgd",
                                                  loss="mse"), seed=5)
    assert learner.generators() == {"minibatches": learner.generator}
    episode = linear_tasks(1)[0]
    state = learner.generators()["minibatches"].get_state()
    first = flat(learner.adapt(learner.params(), episode.support_x, episode.support_y))
    second = flat(learner.adapt(learner.params(), episode.support_x, episode.support_y))
    assert not torch.equal(first, second)  # the stream moved on: other minibatches
    learner.generators()["minibatches"].set_state(state)
    again = flat(learner.adapt(learner.params(), episode.support_x, episode.support_y))
    assert torch.equal(first, again)
    own = torch.Generator().manual_seed(1)
    assert Reptile(linear_net(), generator=own).generators() == {"minibatches": own}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"inner_steps": 0}, {"inner_steps": True}, {"eval_inner_steps": 2.0},
        {"inner_lr": 0.0}, {"inner_lr": float("nan")}, {"inner_optimizer": "rmsprop"},
        {"adam_betas": (1.0, 0.999)}, {"adam_betas": (0.0,)}, {"adam_betas": "ab"},
        {"inner_batch": 0}, {"eval_inner_batch": -1}, {"adam_eps": 0.0}, {"loss": "hinge"},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ReptileConfig(**kwargs)


def test_removed_outer_settings() -> None:
    """The outer loop's settings belong to the training loop's config, not Reptile's."""
    for name in ("outer_lr", "outer_lr_final", "outer_steps", "meta_batch", "train_shots"):
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
            ReptileConfig(**{name: 1})
    assert not hasattr(ReptileConfig(), "outer_step_size")


def test_bad_learner_arguments() -> None:
    with pytest.raises(TypeError, match="config must be a ReptileConfig; got dict"):
        Reptile(linear_net(), {"loss": "mse"})
    with pytest.raises(TypeError, match="generator must be a torch.Generator; got int"):
        Reptile(linear_net(), generator=0)
    episode = linear_tasks(1)[0]
    with pytest.raises(TypeError, match="int64 class labels"):
        Reptile(linear_net()).adapt({}, episode.support_x, episode.support_y)
    learner = Reptile(linear_net(), ReptileConfig(loss="mse"))
    with pytest.raises(TypeError, match="float targets"):
        learner.adapt(learner.params(), episode.support_x, episode.support_y.long())
    with pytest.raises(ValueError, match="steps must be an int >= 0; got -1"):
        learner.adapt(learner.params(), episode.support_x, episode.support_y, steps=-1)
