"""Tests for companion.meta.maml against independent references: classic autograd
(``torch.autograd.grad``, no ``torch.func`` transforms), finite differences
(``gradcheck``), the explicit SGD formula and ProtoNet's distances."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from companion.data import EpisodeSampler, TaskBatch, load_dataset
from companion.data.episodes import Episode
from companion.meta import maml as maml_module
from companion.meta.maml import MAML, MAMLConfig, ProtoMAML, subparams
from companion.nets import MLP, Conv4, linear_head

WAYS, SHOTS, QUERIES, TASKS = 3, 2, 2, 3


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs its tiny models on one thread (see tests/conftest.py)."""


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(shape: tuple[int, ...], dtype=torch.float64, tasks: int = TASKS, seed: int = 0):
    """``tasks`` class-first WAYS-way SHOTS-shot QUERIES-query tasks of random inputs."""
    g = _seeded(seed)
    ys = torch.arange(WAYS).repeat_interleave(SHOTS).expand(tasks, -1)
    yq = torch.arange(WAYS).repeat_interleave(QUERIES).expand(tasks, -1)
    sx = torch.randn(tasks, WAYS * SHOTS, *shape, generator=g, dtype=dtype)
    qx = torch.randn(tasks, WAYS * QUERIES, *shape, generator=g, dtype=dtype)
    return TaskBatch(sx, ys, qx, yq)


def _mlp(dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(0)  # only the modules' default init; data use a Generator
    return nn.Sequential(MLP(6, hidden=(5,), norm="batch"), linear_head(5, WAYS)).to(dtype)


def _conv(norm: str = "batch", dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(Conv4(1, hidden=4, norm=norm), linear_head(4, WAYS)).to(dtype)


def _leaves(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}


def _meta_grad(learner, batch) -> dict[str, torch.Tensor]:
    """The meta-gradient with respect to every entry of ``learner.params()`` (zeros for
    entries the loss does not depend on, such as an extra head under first order)."""
    params = {k: v.detach().clone().requires_grad_() for k, v in learner.params().items()}
    loss, _ = learner.meta_loss(batch, params)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True,
                                materialize_grads=True)
    return dict(zip(params, grads, strict=True))


def _sgd(params, loss_of, lr, steps, names=None, create_graph=True):
    """Reference inner loop with classic autograd: theta <- theta - lr * grad L(theta)."""
    names = list(params) if names is None else names
    for _ in range(steps):
        grads = torch.autograd.grad(
            loss_of(params), [params[k] for k in names], create_graph=create_graph
        )
        params = {**params, **{k: params[k] - lr * g for k, g in zip(names, grads, strict=True)}}
    return params


def _assert_dicts_close(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}", **tol)


# ---------------------------------------------------------------- the inner loop


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("adapt", ["all", "head"])
def test_inner_steps_are_sgd(adapt, steps):
    model = _mlp()
    maml = MAML(model, MAMLConfig(inner_lr=0.3, adapt=adapt))
    task = _batch((6,))[0]
    params = _leaves(model)
    fast = maml.adapt(params, task.support_x, task.support_y, steps=steps)
    names = [k for k in params if adapt == "all" or k.startswith("1.")]

    def loss_of(p):
        return F.cross_entropy(functional_call(model, p, (task.support_x,)), task.support_y)

    # theta - alpha * grad L(theta), written out for one step
    if steps == 1:
        g = torch.autograd.grad(loss_of(params), [params[k] for k in names])
        for k, gk in zip(names, g, strict=True):
            torch.testing.assert_close(fast[k], params[k] - 0.3 * gk)
    _assert_dicts_close(fast, _sgd(params, loss_of, 0.3, steps, names))
    if adapt == "head":  # ANIL: the body is passed through untouched
        assert all(fast[k] is params[k] for k in params if k not in names)
        assert all(not torch.equal(fast[k], params[k]) for k in names)


def test_sinusoid_regression_mse():
    # Finn et al. sec. 5.1: MLP 40-40, alpha = 0.01, K = 10, targets (K,) against outputs (K, 1).
    torch.manual_seed(0)
    model = MLP(1, hidden=(40, 40), out_features=1).double()
    g = _seeded(1)
    x = 10 * torch.rand(2, 20, 1, generator=g, dtype=torch.float64) - 5
    y = 3.0 * torch.sin(x[..., 0] - 0.5)  # (T, 20)
    batch = TaskBatch(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])
    maml = MAML(model, MAMLConfig(inner_lr=0.01, loss="mse", strategy="loop"))
    params = _leaves(model)
    fast = maml.adapt(params, batch.support_x[0], batch.support_y[0])

    def loss_of(p):
        return (
            (functional_call(model, p, (batch.support_x[0],))[:, 0] - batch.support_y[0])
            .square()
            .mean()
        )

    _assert_dicts_close(fast, _sgd(params, loss_of, 0.01, 1))
    loss, logs = maml.meta_loss(batch)
    loss_v, logs_v = MAML(model, MAMLConfig(inner_lr=0.01, loss="mse", strategy="vmap")).meta_loss(
        batch
    )
    assert set(logs) == {"loss"} and math.isclose(logs["loss"], logs_v["loss"], rel_tol=1e-9)
    assert maml.classify(batch[0]).shape == (10, 1)


def test_zero_inner_steps_is_joint_training():
    # inner_steps=0 in training: theta' = theta, so the meta-loss is plain regression on all
    # tasks, Finn et al.'s "pretrained" baseline (sec. 5.1, book chapter 3); test-time steps
    # still adapt with the same SGD.
    torch.manual_seed(0)
    model = MLP(1, hidden=(8,), out_features=1).double()
    g = _seeded(2)
    x = 10 * torch.rand(3, 10, 1, generator=g, dtype=torch.float64) - 5
    y = 2.0 * torch.sin(x[..., 0] - 1.0)  # (T, 10)
    batch = TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])
    config = MAMLConfig(inner_lr=0.01, inner_steps=0, inner_steps_test=2, loss="mse")
    loss, _ = MAML(model, config).meta_loss(batch)
    joint = F.mse_loss(model(batch.query_x.flatten(0, 1))[:, 0], batch.query_y.flatten())
    torch.testing.assert_close(loss, joint)
    task = batch[0]

    def loss_of(p):
        return (functional_call(model, p, (task.support_x,))[:, 0] - task.support_y).square().mean()

    fast = _sgd(_leaves(model), loss_of, 0.01, 2)
    torch.testing.assert_close(
        MAML(model, config).classify(task), functional_call(model, fast, (task.query_x,)).detach()
    )


# ---------------------------------------------------------------- meta-gradients


def test_second_order_matches_finite_differences_and_differs_from_first_order():
    model, batch = _mlp(), _batch((6,), tasks=2)
    second = MAML(model, MAMLConfig(inner_lr=0.5, inner_steps=2, strategy="loop"))
    first = MAML(model, MAMLConfig(inner_lr=0.5, inner_steps=2, strategy="loop", first_order=True))
    params = _leaves(model)

    def objective(learner):
        return lambda *p: learner.meta_loss(batch, dict(zip(params, p, strict=True)))[0]

    inputs = tuple(params.values())
    assert torch.autograd.gradcheck(objective(second), inputs)
    # First-order MAML is not the gradient of the meta-objective ...
    assert not torch.autograd.gradcheck(objective(first), inputs, raise_exception=False)
    # ... and differs from second order by more than rounding.
    g2, g1 = _meta_grad(second, batch), _meta_grad(first, batch)
    assert max((g2[k] - g1[k]).abs().max().item() for k in g2) > 1e-3


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_classic_autograd(first_order):
    """Conv-4, two inner steps, three tasks: the mean over tasks of the hand-built
    meta-gradients. First order: grad of the query loss at the adapted parameters, with the
    inner gradients taken as constants (no create_graph), applied to the init."""
    model, batch, lr = _conv(), _batch((1, 16, 16)), 0.4
    maml = MAML(model, MAMLConfig(inner_lr=lr, inner_steps=2, first_order=first_order))
    theta = _leaves(model)
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for task in batch:

        def support_loss(p, task=task):
            return F.cross_entropy(functional_call(model, p, (task.support_x,)), task.support_y)

        fast = _sgd(theta, support_loss, lr, 2, create_graph=not first_order)
        query = F.cross_entropy(functional_call(model, fast, (task.query_x,)), task.query_y)
        wrt = list(fast.values()) if first_order else list(theta.values())
        for k, g in zip(theta, torch.autograd.grad(query, wrt), strict=True):
            expected[k] += g / len(batch)
    _assert_dicts_close(_meta_grad(maml, batch), expected)


def test_anil_meta_gradient_and_body_unchanged():
    model, batch, lr = _conv(), _batch((1, 16, 16)), 0.4
    anil = MAML(model, MAMLConfig(inner_lr=lr, adapt="head"))
    theta = _leaves(model)
    body = model[0]
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for task in batch:
        body_p = {k[2:]: v for k, v in theta.items() if k.startswith("0.")}
        z = functional_call(body, body_p, (task.support_x,))
        w, b = theta["1.weight"], theta["1.bias"]
        gw, gb = torch.autograd.grad(
            F.cross_entropy(F.linear(z, w, b), task.support_y), (w, b), create_graph=True
        )
        zq = functional_call(body, body_p, (task.query_x,))
        query = F.cross_entropy(F.linear(zq, w - lr * gw, b - lr * gb), task.query_y)
        for k, g in zip(theta, torch.autograd.grad(query, list(theta.values())), strict=True):
            expected[k] += g / len(batch)
    got = _meta_grad(anil, batch)
    _assert_dicts_close(got, expected)
    assert got["0.blocks.0.0.weight"].abs().max() > 0  # the body is meta-learned
    fast = anil.adapt(theta, batch.support_x[0], batch.support_y[0])
    assert all(fast[k] is theta[k] for k in theta if k.startswith("0."))
    assert not torch.equal(fast["1.weight"], theta["1.weight"])


@pytest.mark.parametrize(
    ("norm", "adapt", "first_order"),
    [
        ("batch", "all", False),
        ("none", "all", False),
        ("batch", "head", False),
        ("batch", "all", True),
    ],
)
def test_vmap_equals_loop(norm, adapt, first_order):
    batch = _batch((1, 16, 16), dtype=torch.float32)
    grads, logs = {}, {}
    for strategy in ("loop", "vmap"):
        config = MAMLConfig(adapt=adapt, strategy=strategy, first_order=first_order)
        maml = MAML(_conv(norm, torch.float32), config)
        loss, logs[strategy] = maml.meta_loss(batch)
        loss.backward()
        grads[strategy] = {k: p.grad for k, p in maml.named_parameters()}
    _assert_dicts_close(grads["vmap"], grads["loop"], atol=1e-5, rtol=1e-5)
    assert logs["vmap"]["accuracy"] == logs["loop"]["accuracy"]
    assert math.isclose(logs["vmap"]["loss"], logs["loop"]["loss"], rel_tol=1e-5)


# ---------------------------------------------------------------- support loss, extra heads


def _mirror_maml(adapt="all", first_order=False, strategy="loop", steps=2, lr=0.4):
    """MAML on ``_mlp()`` whose support loss adds a self-supervised term: the body's features
    of the support inputs and of their mirror images, told apart by an extra head."""
    model = _mlp()
    torch.manual_seed(1)
    mirror = nn.Linear(5, 2).double()
    body = model[0]

    def support_loss(predict, params, x, y):
        both = torch.cat([x, x.flip(-1)])  # (2B, 6): the inputs, then their mirror images
        is_mirrored = torch.arange(2).repeat_interleave(len(x))  # (2B,)
        z = functional_call(body, subparams(params, "0."), (both,))  # (2B, 5)
        logits = functional_call(mirror, subparams(params, "heads.mirror."), (z,))  # (2B, 2)
        return F.cross_entropy(predict(params, x), y) + 0.5 * F.cross_entropy(logits, is_mirrored)

    config = MAMLConfig(inner_lr=lr, inner_steps=steps, adapt=adapt, first_order=first_order,
                        strategy=strategy)
    return MAML(model, config, heads={"mirror": mirror}, support_loss=support_loss)


@pytest.mark.parametrize(
    ("adapt", "first_order"), [("all", False), ("all", True), ("head", False), ("head", True)]
)
def test_support_loss_with_extra_head_matches_classic_autograd(adapt, first_order):
    """The meta-gradient, the extra head's included, when the inner loop descends the task
    loss plus a self-supervised term, built by hand with torch.autograd.grad."""
    maml, batch, lr = _mirror_maml(adapt, first_order), _batch((6,)), 0.4
    model, mirror = maml.model, maml.heads["mirror"]
    theta = {**_leaves(model), **{f"heads.mirror.{k}": v for k, v in _leaves(mirror).items()}}
    assert maml.params().keys() == theta.keys()
    names = [k for k in theta if adapt == "all" or k.startswith(("1.", "heads."))]
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for task in batch:
        x, y = task.support_x, task.support_y

        def support_loss(p, x=x, y=y):
            own = {k: v for k, v in p.items() if not k.startswith("heads.")}
            body = {k[2:]: v for k, v in own.items() if k.startswith("0.")}
            both = torch.cat([x, x.flip(-1)])
            labels = torch.cat([torch.zeros_like(y), torch.ones_like(y)])
            aux = F.linear(functional_call(model[0], body, (both,)),
                           p["heads.mirror.weight"], p["heads.mirror.bias"])
            task_term = F.cross_entropy(functional_call(model, own, (x,)), y)
            return task_term + 0.5 * F.cross_entropy(aux, labels)

        fast = _sgd(theta, support_loss, lr, 2, names, create_graph=not first_order)
        own = {k: v for k, v in fast.items() if not k.startswith("heads.")}
        query = F.cross_entropy(functional_call(model, own, (task.query_x,)), task.query_y)
        wrt = list(fast.values()) if first_order else list(theta.values())
        grads = torch.autograd.grad(query, wrt, allow_unused=True, materialize_grads=True)
        for k, g in zip(theta, grads, strict=True):
            expected[k] += g / len(batch)
    got = _meta_grad(maml, batch)
    _assert_dicts_close(got, expected)
    head_grad = max(got[k].abs().max().item() for k in got if k.startswith("heads."))
    g_plain = _meta_grad(MAML(model, maml.config), batch)  # the default support loss
    change = max((got[k] - g_plain[k]).abs().max().item() for k in g_plain)
    if adapt == "all" and not first_order:
        # second order: the extra term shapes the body's inner step, so it changes the
        # meta-gradient and the extra head is meta-learned
        assert head_grad > 1e-4 and change > 1e-4
    else:
        # first order: the query loss reads neither the extra head nor the inner gradients;
        # ANIL: the body is not adapted, and the term shares no adapted parameter with the
        # task's head, so the query loss cannot see it
        assert head_grad == 0
        assert change > 1e-4 if adapt == "all" else change == 0


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_default_support_loss_is_the_task_loss(adapt):
    """Bit for bit: the default equals the task loss written as a support loss."""
    model, batch = _mlp(), _batch((6,))

    def cross_entropy(predict, params, x, y):
        return F.cross_entropy(predict(params, x), y)

    config = MAMLConfig(adapt=adapt, inner_steps=2)
    default = _meta_grad(MAML(model, config), batch)
    written = _meta_grad(MAML(model, config, support_loss=cross_entropy), batch)
    assert default.keys() == written.keys()
    assert all(torch.equal(default[k], written[k]) for k in default)


def test_no_heads_changes_nothing():
    model = _mlp()
    for heads in (None, {}):
        maml = MAML(model, heads=heads)
        assert list(maml.params()) == [k for k, _ in model.named_parameters()]
        assert all(maml.params()[k] is p for k, p in model.named_parameters())
        assert list(maml.state_dict()) == [f"model.{k}" for k in model.state_dict()]
    maml = _mirror_maml()
    assert [k for k in maml.params() if k.startswith("heads.")] == [
        "heads.mirror.weight", "heads.mirror.bias"]
    assert {id(p) for p in maml.parameters()} == {id(p) for p in maml.params().values()}


@pytest.mark.parametrize(("adapt", "first_order"), [("all", False), ("head", False),
                                                    ("all", True), ("head", True)])
def test_support_loss_vmap_equals_loop(adapt, first_order):
    batch, grads, logs = _batch((6,)), {}, {}
    for strategy in ("loop", "vmap"):
        maml = _mirror_maml(adapt, first_order, strategy)
        loss, logs[strategy] = maml.meta_loss(batch)
        loss.backward()
        grads[strategy] = {k: p.grad for k, p in maml.named_parameters()}
    _assert_dicts_close(grads["vmap"], grads["loop"], atol=1e-10, rtol=1e-10)
    assert math.isclose(logs["vmap"]["loss"], logs["loop"]["loss"], rel_tol=1e-12)


@pytest.mark.parametrize("kind", ["maml", "anil", "protomaml", "protomaml-head"])
def test_first_order_inner_gradient_has_no_graph(monkeypatch, kind):
    """First order takes each inner gradient at detached parameters: torch.func.grad's
    outputs carry no graph to theta (second order: they do, which shows the probe works).
    Test-time adaptation (``test=True``, as ``classify``) builds none either."""
    seen = []
    real_grad = maml_module.grad

    def recording_grad(fn):
        def wrapped(*args):
            grads = real_grad(fn)(*args)
            seen.append(any(g.requires_grad for g in grads.values()))
            return grads

        return wrapped

    monkeypatch.setattr(maml_module, "grad", recording_grad)
    found = {}
    for first_order in (False, True):
        config = MAMLConfig(first_order=first_order, strategy="loop", inner_steps=2,
                            adapt="head" if kind in ("anil", "protomaml-head") else "all")
        if kind.startswith("protomaml"):
            learner, batch = ProtoMAML(_encoder(), WAYS, config), _batch((1, 16, 16), tasks=2)
        else:
            learner, batch = MAML(_mlp(), config), _batch((6,), tasks=2)
        seen.clear()
        learner.meta_loss(batch)[0].backward()
        found[first_order] = list(seen)
    assert len(found[False]) == len(found[True]) == 4  # 2 tasks x 2 inner steps
    assert all(found[False]) and not any(found[True])
    seen.clear()
    params = {k: v.detach().requires_grad_() for k, v in learner.params().items()}
    learner.adapt(params, batch.support_x[0], batch.support_y[0], test=True)
    assert len(seen) == 3 and not any(seen)  # inner_steps_test = 3


# ---------------------------------------------------------------- Proto-MAML


def _encoder() -> Conv4:
    torch.manual_seed(0)
    return Conv4(1, hidden=4).double()


def test_protomaml_initial_logits_are_protonet():
    encoder, task = _encoder(), _batch((1, 16, 16))[0]
    pm = ProtoMAML(encoder, WAYS)
    params = _leaves(encoder)
    logits = pm.predict(pm.adapt(params, task.support_x, task.support_y, steps=0), task.query_x)
    z_s, z_q = encoder(task.support_x), encoder(task.query_x)
    c = torch.stack([z_s[task.support_y == k].mean(0) for k in range(WAYS)])  # (N, D)
    protonet = -torch.cdist(z_q, c).square()  # (N*Q, N)
    offset = logits - protonet  # ||z||^2 in every column
    torch.testing.assert_close(offset, z_q.square().sum(1, keepdim=True).expand_as(offset))
    torch.testing.assert_close(logits.softmax(-1), protonet.softmax(-1))
    assert torch.equal(logits.argmax(-1), protonet.argmax(-1))


def _logit_penalty(predict, params, x, y):
    """A support loss with an extra term on other inputs than the support images: the task
    loss plus a penalty on the logits of the mirrored support images."""
    penalty = predict(params, x.flip(-1)).square().mean()
    return F.cross_entropy(predict(params, x), y) + 0.1 * penalty


@pytest.mark.parametrize(
    ("first_order", "adapt", "extra"),
    [(False, "all", False), (True, "all", False), (False, "all", True), (True, "all", True),
     (False, "head", True), (True, "head", True)],
)
def test_protomaml_meta_gradient_flows_through_the_init(first_order, adapt, extra):
    """Chain rule by hand: the task's query loss F(theta, W0, b0) with the head's init as
    independent leaves (as in the inner loop of Meta-Dataset's code), then the init's
    dependence on the encoder, W0 = 2c(theta), b0 = -||c(theta)||^2, added by a VJP.
    ``extra``: the support loss has a second term (:func:`_logit_penalty`)."""
    encoder, batch, lr = _encoder(), _batch((1, 16, 16), tasks=2), 0.4
    config = MAMLConfig(inner_lr=lr, first_order=first_order, adapt=adapt)
    pm = ProtoMAML(encoder, WAYS, config, support_loss=_logit_penalty if extra else None)
    theta = _leaves(encoder)
    expected = {k: torch.zeros_like(v) for k, v in theta.items()}
    for task in batch:
        z = functional_call(encoder, theta, (task.support_x,))
        c = torch.stack([z[task.support_y == k].mean(0) for k in range(WAYS)])
        w_of_theta, b_of_theta = 2 * c, -(c * c).sum(1)  # W_k = 2 c_k, b_k = -||c_k||^2
        w0, b0 = w_of_theta.detach().requires_grad_(), b_of_theta.detach().requires_grad_()

        def logits(p, x):
            enc = {k: v for k, v in p.items() if k not in ("w", "b")}
            return F.linear(functional_call(encoder, enc, (x,)), p["w"], p["b"])

        def support_loss(p, task=task):
            loss = F.cross_entropy(logits(p, task.support_x), task.support_y)
            if extra:
                loss = loss + 0.1 * logits(p, task.support_x.flip(-1)).square().mean()
            return loss

        names = None if adapt == "all" else ["w", "b"]
        fast = _sgd({**theta, "w": w0, "b": b0}, support_loss, lr, 1, names,
                    create_graph=not first_order)
        query = F.cross_entropy(logits(fast, task.query_x), task.query_y)
        *direct, g_w0, g_b0 = torch.autograd.grad(query, [*theta.values(), w0, b0])
        through_init = torch.autograd.grad(
            (w_of_theta, b_of_theta), list(theta.values()), grad_outputs=(g_w0, g_b0)
        )
        for k, g, h in zip(theta, direct, through_init, strict=True):
            expected[k] += (g + h) / len(batch)
    _assert_dicts_close(_meta_grad(pm, batch), expected)


@pytest.mark.parametrize("adapt", ["all", "head"])
def test_protomaml_vmap_equals_loop(adapt):
    # float64: the loop runs BatchNorm's fused kernel and vmap its tensor-op form, and the
    # prototype head (b = -|c|^2) turns their float32 rounding into ~2e-5 differences.
    # The support loss has an extra term on the mirrored images (not the cached features).
    batch = _batch((1, 16, 16))
    out = {}
    for strategy in ("loop", "vmap"):
        torch.manual_seed(0)
        config = MAMLConfig(strategy=strategy, adapt=adapt)
        pm = ProtoMAML(Conv4(1, hidden=4).double(), WAYS, config, support_loss=_logit_penalty)
        loss, _ = pm.meta_loss(batch)
        loss.backward()
        out[strategy] = {k: p.grad for k, p in pm.named_parameters()}
    _assert_dicts_close(out["vmap"], out["loop"], atol=1e-5, rtol=1e-5)
    params = {k: v.detach() for k, v in pm.encoder.named_parameters()}
    fast = pm.adapt(params, batch.support_x[0], batch.support_y[0])
    adapted = [k for k in params if fast[k] is not params[k]]
    assert adapted == ([] if adapt == "head" else list(params))  # head only: encoder as is


# ---------------------------------------------------------------- training and evaluation


def test_classify_under_no_grad_equals_three_sgd_steps():
    model, task = _mlp(), _batch((6,))[0]
    maml = MAML(model, MAMLConfig())  # inner_steps_test = 3
    with torch.no_grad():
        logits = maml.classify(task)
    assert not logits.requires_grad and logits.shape == (WAYS * QUERIES, WAYS)

    def loss_of(p):
        return F.cross_entropy(functional_call(model, p, (task.support_x,)), task.support_y)

    fast = _sgd(_leaves(model), loss_of, 0.4, 3)
    torch.testing.assert_close(logits, functional_call(model, fast, (task.query_x,)).detach())


def test_short_maml_run_on_glyphs_learns():
    sampler = EpisodeSampler(
        load_dataset("glyphs", "train", alphabets=6), ways=5, shots=1, queries=5, seed=0
    )
    torch.manual_seed(0)
    maml = MAML(nn.Sequential(Conv4(1, hidden=16), linear_head(16, 5)), MAMLConfig())
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)  # Finn et al.'s beta
    losses, accuracies = [], []
    for _ in range(60):
        loss, logs = maml.meta_loss(sampler.sample_batch(4))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["loss"])
        accuracies.append(logs["accuracy"])
    first, last = statistics.mean(losses[:15]), statistics.mean(losses[-15:])
    assert last < first - 0.1, f"meta-training loss did not decrease: {first:.3f} -> {last:.3f}"
    first, last = statistics.mean(accuracies[:15]), statistics.mean(accuracies[-15:])
    assert last > first + 0.1, f"training accuracy did not rise: {first:.2f} -> {last:.2f}"
    with torch.no_grad():
        episodes = list(sampler.episodes(10))
        accuracy = statistics.mean(
            (maml.classify(e).argmax(-1) == e.query_y).float().mean().item() for e in episodes
        )
        assert not torch.is_grad_enabled()
    assert accuracy > 0.4, f"5-way accuracy {accuracy:.2f} after training (chance 0.2)"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inner_lr": -0.1}, "inner_lr must be a positive number; got -0.1"),
        ({"inner_lr": 0}, "inner_lr must be a positive number; got 0"),
        ({"inner_lr": float("nan")}, "inner_lr must be a positive number; got nan"),
        ({"inner_steps": -1}, "inner_steps must be an int >= 0; got -1"),
        ({"inner_steps_test": 1.5}, "inner_steps_test must be an int >= 0; got 1.5"),
        ({"loss": "hinge"}, "unknown loss 'hinge'; allowed: cross_entropy, mse"),
        ({"adapt": "body"}, "unknown adapt 'body'; allowed: all, head"),
        ({"strategy": "threads"}, "unknown strategy 'threads'; allowed: auto, loop, vmap"),
        ({"first_order": "yes"}, "first_order must be a bool; got 'yes'"),
        # the outer loop's settings live in the training loop's config, not here
        ({"meta_batch": 32}, "unexpected keyword argument 'meta_batch'"),
        ({"outer_lr": 1e-3}, "unexpected keyword argument 'outer_lr'"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MAMLConfig(**kwargs)


def test_argument_and_label_errors():
    model, batch = _mlp(), _batch((6,))
    maml, task, params = MAML(model), batch[0], _leaves(model)
    with pytest.raises(
        ValueError,
        match=r"support: expected int64 labels of shape \(6,\).*"
        r"got support_y \(6, 1\)",
    ):
        maml.adapt(params, task.support_x, task.support_y[:, None])
    with pytest.raises(ValueError, match="support: expected int64 labels.*torch.float64"):
        maml.adapt(params, task.support_x, task.support_y.double())
    with pytest.raises(ValueError, match="steps must be an int >= 0; got -1"):
        maml.adapt(params, task.support_x, task.support_y, steps=-1)
    bad = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y[:, :-1])
    with pytest.raises(ValueError, match=r"query: expected int64 labels of shape \(3, 6\)"):
        maml.meta_loss(bad)
    with pytest.raises(ValueError, match="support: expected float targets"):
        MAML(model, MAMLConfig(loss="mse")).adapt(params, task.support_x, task.support_y)
    with pytest.raises(TypeError, match="meta_loss expects a TaskBatch; got Episode"):
        maml.meta_loss(task)
    with pytest.raises(TypeError, match="classify expects an Episode; got TaskBatch"):
        maml.classify(batch)
    with pytest.raises(TypeError, match="config must be a MAMLConfig; got dict"):
        MAML(model, {"inner_lr": 0.1})
    with pytest.raises(ValueError, match=r"adapt='head' \(ANIL\) needs an nn.Sequential"):
        MAML(model[0], MAMLConfig(adapt="head"))
    with pytest.raises(ValueError, match="the last module ReLU\\(\\) has no parameters"):
        MAML(nn.Sequential(model, nn.ReLU()), MAMLConfig(adapt="head"))
    pm, image_task = ProtoMAML(_encoder(), WAYS), _batch((1, 16, 16))[0]
    shuffled = Episode(
        image_task.support_x, image_task.support_y.flip(0), image_task.query_x, image_task.query_y
    )
    with pytest.raises(ValueError, match="ProtoMAML needs class-first 3-way support labels"):
        pm.classify(shuffled)
    with pytest.raises(ValueError, match="ProtoMAML classifies: loss must be 'cross_entropy'"):
        ProtoMAML(_encoder(), WAYS, MAMLConfig(loss="mse"))
    with pytest.raises(ValueError, match="ways must be a positive int; got 0"):
        ProtoMAML(_encoder(), 0)
    with pytest.raises(ValueError, match="steps must be an int >= 0; got 1.5"):
        maml.adapt(params, task.support_x, task.support_y, steps=1.5, test=True)
    with pytest.raises(TypeError, match="heads must map names to nn.Modules"):
        MAML(model, heads={"rotation": torch.zeros(3)})
    with pytest.raises(TypeError, match="support_loss must be callable; got str"):
        MAML(model, support_loss="mse")
    holder = nn.Module()
    holder.heads = nn.Linear(6, WAYS)  # a model whose own parameters are named heads.*
    with pytest.raises(ValueError, match=r"\['heads.weight', 'heads.bias'\] clash"):
        MAML(holder, heads={"mirror": nn.Linear(6, 2)})
