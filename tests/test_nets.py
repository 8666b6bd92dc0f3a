"""Tests for companion.nets: shapes, parameter counts, BatchNorm against PyTorch's (with and
without running statistics), and MAML-style second-order meta-gradients under
``torch.func.vmap`` against a Python loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from companion.nets import (
    MLP,
    NORMS,
    BatchNorm,
    Conv4,
    ResNet12,
    batch_norm_ops,
    linear_head,
    make_norm,
)

# Tiny models: one intra-op thread (tests/conftest.py says why).
pytestmark = pytest.mark.usefixtures("one_thread")


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize(
    ("in_channels", "size", "expected"), [(1, 28, 64), (3, 84, 1600), (1, 16, 64), (3, 32, 256)]
)
def test_conv4_output_shape(in_channels, size, expected):
    net = Conv4(in_channels=in_channels)
    x = torch.randn(2, in_channels, size, size, generator=_seeded())
    assert net(x).shape == (2, expected)
    assert net.out_features(size) == expected
    assert net.out_features((size, size)) == expected


@pytest.mark.parametrize("size", [28, 84])
def test_resnet12_shape_forward_backward(size):
    net = ResNet12(in_channels=3, channels=(8, 16, 16, 32))
    x = torch.randn(2, 3, size, size, generator=_seeded())
    z = net(x)  # (B, channels[-1])
    assert z.shape == (2, 32) and net.out_features(size) == 32
    z.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert not any(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))


def _conv4_count(c: int, h: int, norm_params_per_channel: int) -> int:
    """Hand count: conv3x3 weights + conv bias + norm affine, first block then three more."""
    first = 9 * c * h + h + norm_params_per_channel * h
    rest = 9 * h * h + h + norm_params_per_channel * h
    return first + 3 * rest


@pytest.mark.parametrize(("norm", "per_channel"), [("batch", 2), ("group", 2), ("none", 0)])
@pytest.mark.parametrize(("c", "h"), [(1, 64), (3, 64), (3, 32)])
def test_conv4_parameter_count(norm, per_channel, c, h):
    net = Conv4(in_channels=c, hidden=h, norm=norm)
    assert sum(p.numel() for p in net.parameters()) == _conv4_count(c, h, per_channel)


def test_conv4_parameter_count_published():
    # The ProtoNet/MAML Conv-4 on 84x84 RGB has 113,088 parameters (convs with bias, BN).
    assert sum(p.numel() for p in Conv4(in_channels=3).parameters()) == 113_088


def test_defaults_use_plain_batchnorm_without_buffers():
    for net in (Conv4(), ResNet12(channels=(4, 4, 4, 4))):
        assert any(isinstance(m, BatchNorm) for m in net.modules())
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
        assert list(net.buffers()) == []


@pytest.mark.parametrize(
    ("build", "layers"),
    [
        (lambda: Conv4(3, hidden=8, norm="batch", track_running_stats=True), 4),  # SSL encoders
        (lambda: ResNet12(3, channels=(4, 4, 4, 8), track_running_stats=True), 16),  # 4 x 4
        (lambda: MLP(3 * 16 * 16, hidden=(8, 8), norm="batch", track_running_stats=True), 2),
    ],
    ids=["Conv4", "ResNet12", "MLP"],
)
def test_backbones_pass_track_running_stats_to_every_batchnorm(build, layers):
    net = build()
    norms = [m for m in net.modules() if isinstance(m, BatchNorm)]
    assert len(norms) == layers
    assert all(m.track_running_stats for m in norms)
    assert len(list(net.buffers())) == 3 * len(norms)  # running_mean, running_var, count
    x = torch.randn(6, 3, 16, 16, generator=_seeded(6))
    net(x)  # train mode: one update of every running average
    assert all(int(m.num_batches_tracked) == 1 for m in norms)
    assert not any(torch.equal(m.running_mean, torch.zeros(m.num_features)) for m in norms)
    net.eval()
    with torch.no_grad():
        alone = torch.cat([net(x[i:i + 1]) for i in range(6)])
        torch.testing.assert_close(net(x), alone, rtol=0, atol=1e-6)  # per image in eval mode
    assert all(int(m.num_batches_tracked) == 1 for m in norms)  # eval mode updates nothing


def test_norm_factory_and_names():
    net = Conv4(hidden=8, norm=lambda c: nn.GroupNorm(2, c))
    groups = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(groups) == 4 and all(g.num_groups == 2 for g in groups)
    assert make_norm("group", 160).num_groups == 32
    assert make_norm("group", 8).num_groups == 8
    assert make_norm("instance", 8).num_groups == 8
    assert isinstance(make_norm(None, 8), nn.Identity)
    assert {"batch", "group", "instance", "none", "identity"} <= set(NORMS)


def test_mlp_on_images():
    x = torch.randn(5, 1, 28, 28, generator=_seeded())
    encoder = MLP(28 * 28, hidden=(32, 16))
    assert encoder(x).shape == (5, 16) and encoder.out_features() == 16
    classifier = MLP(28 * 28, hidden=(32,), out_features=5, norm="batch")
    assert classifier(x).shape == (5, 5) and classifier.out_features(28) == 5
    assert isinstance(classifier.layers[2], BatchNorm)
    assert MLP(3, hidden=(), out_features=2)(torch.randn(4, 3)).shape == (4, 2)


def test_linear_head():
    head = linear_head(64, 5)
    assert head(torch.randn(3, 64)).shape == (3, 5)
    zero = linear_head(64, 5, zero_init=True)
    assert torch.count_nonzero(zero.weight) == 0 and torch.count_nonzero(zero.bias) == 0


def test_float64_forward():
    x = torch.randn(2, 3, 28, 28, generator=_seeded(), dtype=torch.float64)
    nets = [Conv4(3, 8).double(), ResNet12(3, (4, 4, 8, 8)).double(), MLP(3 * 28 * 28).double()]
    for net in nets:
        out = net(x)
        assert out.dtype == torch.float64 and torch.isfinite(out).all()


# ---------------------------------------------------------------- BatchNorm vs PyTorch


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 3), (2, 3, 7)])
def test_batchnorm_matches_torch(shape):
    g = _seeded(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1
    ours = BatchNorm(3).double()
    ref = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](
        3, track_running_stats=False
    ).double()
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
            m.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref.train()(x2)
    torch.testing.assert_close(y1, y2)
    upstream = torch.randn(shape, generator=g, dtype=torch.float64)
    (y1 * upstream).sum().backward()
    (y2 * upstream).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    # No running statistics: eval mode still normalises with the batch.
    torch.testing.assert_close(ours.eval()(x), y2.detach())


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 3), (2, 3, 7)])
def test_batchnorm_running_stats_match_torch(shape, momentum):
    """Several train steps and eval passes: outputs, gradients and all three buffers."""
    g = _seeded(7)
    ours = BatchNorm(3, momentum=momentum, track_running_stats=True).double()
    ref = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)](
        3, momentum=momentum, track_running_stats=True
    ).double()
    assert ours.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
            m.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    for step in range(4):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * (step + 1) + step
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours.train()(x1), ref.train()(x2)
        torch.testing.assert_close(y1, y2)
        upstream = torch.randn(shape, generator=g, dtype=torch.float64)
        (y1 * upstream).sum().backward()
        (y2 * upstream).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
        for name, buffer in ref.named_buffers():
            torch.testing.assert_close(getattr(ours, name), buffer, msg=f"step {step}: {name}")
        assert not ours.running_mean.requires_grad and not ours.running_var.requires_grad
        test = torch.randn(shape, generator=g, dtype=torch.float64)
        torch.testing.assert_close(ours.eval()(test), ref.eval()(test))
        torch.testing.assert_close(ours(test[:1]), ref(test[:1]))  # one example is fine
    assert int(ours.num_batches_tracked) == 4
    # The running estimate is not the batch's: it moved away from the initial (0, 1).
    assert not torch.equal(ours.running_var, torch.ones(3))
    fresh = BatchNorm(3, track_running_stats=True).double()
    fresh.load_state_dict(ref.state_dict())  # PyTorch's checkpoints load as they are
    torch.testing.assert_close(fresh.eval()(test), ref.eval()(test))


def test_batchnorm_running_stats_untouched_under_torch_func():
    g = _seeded(8)
    x = torch.randn(3, 4, 2, 5, 5, generator=g, dtype=torch.float64)  # 3 tasks of 4 images
    bn = BatchNorm(2, track_running_stats=True).double()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
        bn.running_var.copy_(torch.tensor([2.0, 0.25]))
    before = {k: v.clone() for k, v in bn.named_buffers()}
    params = dict(bn.named_parameters())

    def loss(p, xt):
        return functional_call(bn, p, (xt,)).square().sum()

    out = vmap(bn)(x)  # train mode: each task normalised with its own statistics
    torch.testing.assert_close(out[1], batch_norm_ops(x[1], bn.weight, bn.bias, bn.eps))
    grad(loss)(params, x[0])
    vmap(grad(loss), in_dims=(None, 0))(params, x)
    for name, buffer in bn.named_buffers():
        assert torch.equal(buffer, before[name]), name  # no update under a transform
    bn.eval()  # eval mode: the running statistics, under vmap as outside it
    ref = nn.BatchNorm2d(2).double().eval()
    ref.load_state_dict(bn.state_dict())
    torch.testing.assert_close(vmap(bn)(x), torch.stack([ref(xt) for xt in x]))
    torch.testing.assert_close(vmap(bn)(x[:, :1]), torch.stack([ref(xt[:1]) for xt in x]))
    bn.train()(x[0])  # outside a transform the buffers move again
    assert int(bn.num_batches_tracked) == 1
    assert not torch.equal(bn.running_mean, before["running_mean"])


@pytest.mark.parametrize("path", ["fused", "ops"])
def test_batchnorm_gradcheck(path):
    g = _seeded(2)
    x = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    bn = BatchNorm(2).double()

    def f(x, w, b):
        if path == "ops":
            return batch_norm_ops(x, w, b, bn.eps)
        return functional_call(bn, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_batchnorm_ops_match_fused_and_run_under_vmap(monkeypatch):
    g = _seeded(3)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    bn = BatchNorm(3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
    torch.testing.assert_close(batch_norm_ops(x, bn.weight, bn.bias, bn.eps), bn(x))
    torch.testing.assert_close(batch_norm_ops(x, None, None, 1e-5), BatchNorm(3, affine=False)(x))
    calls = []

    def spy(*args):
        calls.append(torch._C._functorch.get_interpreter_stack())
        return batch_norm_ops(*args)

    monkeypatch.setattr("companion.nets.batch_norm_ops", spy)
    bn(x)
    assert calls == []  # outside vmap: the fused kernel
    out = vmap(bn)(torch.stack([x, 2 * x]))
    assert len(calls) == 1  # under vmap: the tensor ops
    torch.testing.assert_close(out[1], bn(2 * x))


def test_relu_commutes_with_max_pool():
    # Conv-4 and ResNet-12 pool before the activation; the papers' order gives the same.
    x = torch.randn(2, 3, 8, 8, generator=_seeded(4), dtype=torch.float64, requires_grad=True)
    for act in (F.relu, lambda h: F.leaky_relu(h, 0.1)):
        a, b = act(F.max_pool2d(x, 2)), F.max_pool2d(act(x), 2)
        torch.testing.assert_close(a, b)
        upstream = torch.randn(a.shape, generator=_seeded(5), dtype=torch.float64)
        ga, gb = (torch.autograd.grad((y * upstream).sum(), x)[0] for y in (a, b))
        torch.testing.assert_close(ga, gb)


# ---------------------------------------------------------------- MAML under vmap

WAYS, SHOTS, TASKS, INNER_LR = 3, 2, 3, 0.4


def _maml_problem(norm, dtype=torch.float64):
    """A small Conv4 + linear head, and TASKS episodes of 28x28 noise images."""
    torch.manual_seed(0)  # only for the module's default init; data use a Generator
    net = nn.Sequential(Conv4(1, hidden=8, norm=norm), linear_head(8, WAYS)).to(dtype)
    g = _seeded(3)
    n = WAYS * SHOTS
    support_x = torch.randn(TASKS, n, 1, 28, 28, generator=g, dtype=dtype)
    query_x = torch.randn(TASKS, n, 1, 28, 28, generator=g, dtype=dtype)
    y = torch.arange(WAYS).repeat_interleave(SHOTS).expand(TASKS, n)  # class-first
    params = {k: v.detach() for k, v in net.named_parameters()}
    return net, params, (support_x, y, query_x, y)


def _meta_grads(net):
    """(second-order, first-order) meta-gradient functions of one task, via torch.func."""

    def loss(params, x, y):
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    def adapt(params, support_x, support_y):
        g = grad(loss)(params, support_x, support_y)
        return {k: p - INNER_LR * g[k] for k, p in params.items()}  # fast_params

    def query_loss(params, support_x, support_y, query_x, query_y):
        return loss(adapt(params, support_x, support_y), query_x, query_y)

    def first_order(params, support_x, support_y, query_x, query_y):
        fast_params = adapt(params, support_x, support_y)
        return grad(loss)(fast_params, query_x, query_y)  # d L_query / d fast_params

    return grad(query_loss), first_order, query_loss


def _loop(fn, params, data, shared):
    outs = []
    for t in range(TASKS):
        p = params if shared else {k: v[t] for k, v in params.items()}
        outs.append(fn(p, *(d[t] for d in data)))
    return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}


def _assert_dicts_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def _check_vmap_against_loop(net, params, data, mode):
    """vmap over TASKS tasks equals a Python loop, for both meta-gradients (float64)."""
    second, first, query_loss = _meta_grads(net)
    if mode == "per-task":  # each task gets its own (perturbed) parameters
        g = _seeded(4)
        params = {
            k: v + 0.1 * torch.randn((TASKS, *v.shape), generator=g, dtype=v.dtype)
            for k, v in params.items()
        }
    shared = mode != "per-task"
    in_dims = (None if shared else 0, 0, 0, 0, 0)
    if mode == "shared-outer-grad":
        # The MAML meta-batch: one set of meta-parameters, grad of the summed task losses.
        def meta_loss(p):
            return vmap(query_loss, in_dims=in_dims)(p, *data).sum()

        loop = _loop(second, params, data, shared)
        _assert_dicts_close(grad(meta_loss)(params), {k: v.sum(0) for k, v in loop.items()})
        return
    for fn in (second, first):
        expected = _loop(fn, params, data, shared)
        _assert_dicts_close(vmap(fn, in_dims=in_dims)(params, *data), expected)


MODES = ["per-task", "shared", "shared-outer-grad"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm", ["batch", "batch-running", "group", "none"])
def test_vmap_matches_loop_first_and_second_order(norm, mode):
    if norm == "batch-running":  # train mode: batch statistics; buffers left alone
        norm = lambda c: BatchNorm(c, track_running_stats=True)  # noqa: E731
    net, params, data = _maml_problem(norm)
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    _check_vmap_against_loop(net, params, data, mode)
    for k, v in net.named_buffers():
        assert torch.equal(v, buffers[k]), k


def test_second_order_matches_autograd_and_differs_from_first_order():
    net, params, data = _maml_problem("batch")
    second, first, _ = _meta_grads(net)
    loop2 = _loop(second, params, data, shared=True)
    loop1 = _loop(first, params, data, shared=True)
    # Independent reference: classic autograd with create_graph=True, no torch.func.
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    for t in range(TASKS):
        sx, sy, qx, qy = (d[t] for d in data)
        inner = F.cross_entropy(functional_call(net, leaves, (sx,)), sy)
        g = torch.autograd.grad(inner, list(leaves.values()), create_graph=True)
        fast = {k: p - INNER_LR * gk for (k, p), gk in zip(leaves.items(), g, strict=True)}
        outer = F.cross_entropy(functional_call(net, fast, (qx,)), qy)
        ref = torch.autograd.grad(outer, list(leaves.values()))
        for k, r in zip(leaves, ref, strict=True):
            torch.testing.assert_close(loop2[k][t], r)
    gap = max((loop2[k] - loop1[k]).abs().max().item() for k in loop2)
    assert gap > 1e-3, f"second-order meta-gradient equals first-order (gap {gap})"


@pytest.mark.xfail(strict=True,
                   reason="torch 2.13: nn.BatchNorm2d, grad of a vmap over shared params")
def test_torch_batchnorm2d_vmap_second_order():
    # Documents why BatchNorm exists. Strict: an XPASS fails the suite, which means PyTorch
    # fixed it and the module docstring's reason for BatchNorm needs revisiting.
    net, params, data = _maml_problem(lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    _, _, query_loss = _meta_grads(net)
    losses = vmap(query_loss, in_dims=(None, 0, 0, 0, 0))(params, *data)
    ref = torch.stack([query_loss(params, *(d[t] for d in data)) for t in range(TASKS)])
    torch.testing.assert_close(losses, ref)  # forward losses agree ...
    _check_vmap_against_loop(net, params, data, "shared-outer-grad")  # ... meta-grads do not


# ---------------------------------------------------------------- errors


def test_input_shape_errors():
    net = Conv4(in_channels=1, hidden=4)
    with pytest.raises(ValueError, match=r"Conv4 expects images \(B, 1, H, W\).*got \(1, 28, 28\)"):
        net(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*got \(2, 3, 28, 28\)"):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"H, W >= 16"):
        net(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"ResNet12 expects images \(B, 3, H, W\)"):
        ResNet12(channels=(4, 4, 4, 4))(torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"MLP expects \(B, \*\) with 784 features"):
        MLP(784)(torch.zeros(2, 1, 14, 14))
    with pytest.raises(ValueError, match=r"BatchNorm expects input \(B, 3, \*\)"):
        BatchNorm(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm(3)(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm(3, track_running_stats=True)(torch.zeros(1, 3))  # train mode: the batch's
    assert BatchNorm(3, track_running_stats=True).eval()(torch.zeros(1, 3)).shape == (1, 3)
    with pytest.raises(ValueError, match=r"Conv4 expects images \(B, 1, H, W\)"):  # under vmap
        vmap(net)(torch.zeros(3, 2, 3, 28, 28))
    with pytest.raises(ValueError, match="at least 16x16"):
        net.out_features(8)


def test_argument_errors():
    with pytest.raises(ValueError, match=r"unknown norm 'layer'; allowed: \['batch', 'group'"):
        Conv4(norm="layer")
    with pytest.raises(TypeError, match="norm must be a str, a callable or None; got int"):
        Conv4(norm=3)
    with pytest.raises(ValueError, match="hidden must be a positive int; got 0"):
        Conv4(hidden=0)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        Conv4(in_channels=1.5)
    with pytest.raises(ValueError, match="channels must be four block widths"):
        ResNet12(channels=(64, 160, 320))
    with pytest.raises(ValueError, match="every entry of channels must be a positive int; got -1"):
        ResNet12(channels=(64, -1, 320, 640))
    with pytest.raises(ValueError, match="every entry of hidden"):
        MLP(10, hidden=(8, 0))
    with pytest.raises(ValueError, match="at least one hidden width or an out_features"):
        MLP(10, hidden=())
    with pytest.raises(ValueError, match="ways must be a positive int"):
        linear_head(8, 0)
    with pytest.raises(ValueError, match="num_features must be a positive int; got 0"):
        BatchNorm(0)
    with pytest.raises(ValueError, match="eps must be a positive number; got 0"):
        BatchNorm(3, eps=0)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\] or None; got 1.5"):
        BatchNorm(3, momentum=1.5)
    with pytest.raises(TypeError, match="track_running_stats must be a bool; got 'yes'"):
        BatchNorm(3, track_running_stats="yes")
    with pytest.raises(TypeError, match="track_running_stats must be a bool; got 1"):
        Conv4(track_running_stats=1)
    with pytest.raises(ValueError, match="track_running_stats=True needs norm='batch'.*'group'"):
        Conv4(norm="group", track_running_stats=True)
    with pytest.raises(ValueError, match="track_running_stats=True needs norm='batch'.*None"):
        MLP(10, norm=None, track_running_stats=True)
    with pytest.raises(ValueError, match="track_running_stats=True needs norm='batch'"):
        ResNet12(channels=(4, 4, 4, 4), norm=BatchNorm, track_running_stats=True)
    with pytest.raises(TypeError):  # keyword only: a fourth positional is an error
        Conv4(1, 8, "batch", True)
    with pytest.raises(ValueError, match="both mean and var"):
        batch_norm_ops(torch.zeros(2, 3), None, None, 1e-5, mean=torch.zeros(3))
