"""Contrastive and non-contrastive SSL (SimCLR, MoCo v2, BYOL, SimSiam, Barlow Twins):
each loss against a slow loop of the paper's equation and an analytic value, the state
contracts (queue, EMA target, stop-gradient), and SimSiam's collapse without stop-gradient."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.data import load_dataset
from companion.nets import Conv4
from companion.ssl.barlow import BarlowTwins, BarlowTwinsConfig, barlow_twins_loss
from companion.ssl.byol import (
    BYOL,
    BYOLConfig,
    SimSiam,
    SimSiamConfig,
    byol_loss,
    byol_momentum,
    output_std,
    simsiam_loss,
)
from companion.ssl.moco import FeatureQueue, MoCo, MoCoConfig, ema_update, infonce_with_queue
from companion.ssl.simclr import SimCLR, SimCLRConfig, nt_xent


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs its tiny models on one thread (see tests/conftest.py)."""


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def tiny_encoder() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU())  # (B, 1, 4, 4) -> (B, 6)


# --- SimCLR --------------------------------------------------------------------------------


def slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """Eq. 1 with Python loops: anchor i, positive j = the other view, mean over 2N anchors."""
    z = z1.tolist() + z2.tolist()
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        numerator = math.exp(cosine(z[i], z[j]) / tau)
        denominator = sum(math.exp(cosine(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_nt_xent_equals_a_double_loop_of_eq_1(tau: float) -> None:
    z1, z2 = randn(5, 3, seed=0), randn(5, 3, seed=1)
    assert nt_xent(z1, z2, temperature=tau).item() == pytest.approx(slow_nt_xent(z1, z2, tau))


@pytest.mark.parametrize("n", [1, 3, 8])
def test_nt_xent_of_identical_embeddings_is_log_2n_minus_1(n: int) -> None:
    z = torch.full((n, 4), 0.3, dtype=torch.float64)
    assert nt_xent(z, z).item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)


def test_nt_xent_is_symmetric_in_the_views_and_invariant_to_scale() -> None:
    z1, z2 = randn(6, 4, seed=0), randn(6, 4, seed=1)
    loss = nt_xent(z1, z2, temperature=0.3)
    assert torch.allclose(loss, nt_xent(z2, z1, temperature=0.3))
    scales = torch.rand(6, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(loss, nt_xent(z1 * (scales + 0.1), 7.0 * z2, temperature=0.3))


@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_nt_xent_rejects_a_non_positive_temperature(tau: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(randn(2, 3), randn(2, 3), temperature=tau)
    with pytest.raises(ValueError, match="temperature"):
        SimCLRConfig(temperature=tau)


def test_nt_xent_rejects_mismatched_or_non_matrix_views() -> None:
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(randn(4, 3), randn(5, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        nt_xent(randn(4), randn(4))


def test_simclr_loss_and_accuracy_match_the_projections() -> None:
    torch.manual_seed(0)
    model = SimCLR(tiny_encoder(), 6, SimCLRConfig(hidden_dim=8, out_dim=5)).double()
    x1, x2 = randn(7, 1, 4, 4, seed=1), randn(7, 1, 4, 4, seed=2)
    loss, logs = model.loss(x1, x2)
    with torch.no_grad():
        z = torch.cat([model.projector(model.encoder(x)) for x in (x1, x2)]).tolist()
    nearest = [
        max((k for k in range(14) if k != i), key=lambda k: cosine(z[i], z[k])) for i in range(14)
    ]
    accuracy = sum(nearest[i] == (i + 7) % 14 for i in range(14)) / 14
    assert logs["accuracy"].item() == pytest.approx(accuracy)
    assert logs["loss"].item() == pytest.approx(loss.item())
    z1, z2 = torch.tensor(z[:7]), torch.tensor(z[7:])
    assert loss.item() == pytest.approx(slow_nt_xent(z1, z2, 0.5))


# --- MoCo ----------------------------------------------------------------------------------


def slow_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> float:
    total = 0.0
    for q_n, k_n in zip(q.tolist(), k.tolist(), strict=True):
        positive = math.exp(cosine(q_n, k_n) / tau)
        negatives = sum(math.exp(cosine(q_n, k_i) / tau) for k_i in queue.tolist())
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def test_infonce_with_queue_equals_a_slow_loop_of_eq_1() -> None:
    q, k, queue = randn(4, 3, seed=0), randn(4, 3, seed=1), randn(6, 3, seed=2)
    loss = infonce_with_queue(q, k, queue, temperature=0.2)
    assert loss.item() == pytest.approx(slow_infonce(q, k, queue, 0.2))


def test_infonce_with_queue_sends_gradient_only_to_the_queries() -> None:
    q, k, queue = (randn(4, 3, seed=s).requires_grad_() for s in range(3))
    infonce_with_queue(q, k, queue).backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def test_feature_queue_is_a_fifo_ring_buffer() -> None:
    queue = FeatureQueue(dim=2, size=5, generator=torch.Generator().manual_seed(0))
    initial = queue.features.clone()
    assert torch.allclose(initial.norm(dim=1), torch.ones(5))  # random unit vectors
    a = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    queue.enqueue(a)
    assert torch.equal(queue.features, torch.cat([a, initial[3:]])) and int(queue.ptr) == 3
    b = torch.tensor([[4.0, 4.0], [5.0, 5.0], [6.0, 6.0]])
    queue.enqueue(b)  # slots 3, 4, then wraps to 0
    assert torch.equal(queue.features, torch.cat([b[2:], a[1:], b[:2]])) and int(queue.ptr) == 1
    queue.enqueue(torch.arange(10.0).view(5, 2))  # exactly one lap: slots 1, 2, 3, 4, 0
    assert torch.equal(queue.features, torch.arange(10.0).view(5, 2).roll(1, dims=0))
    assert int(queue.ptr) == 1
    assert set(queue.state_dict()) == {"features", "ptr"}
    with pytest.raises(ValueError, match="queue size"):
        queue.enqueue(torch.zeros(6, 2))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        queue.enqueue(torch.zeros(2, 3))


def _net_with_buffers() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_update_equals_eq_2_and_copies_buffers() -> None:
    torch.manual_seed(0)
    target, online = _net_with_buffers(), _net_with_buffers()
    online(torch.randn(8, 3))  # changes online's running statistics
    before = {name: p.clone() for name, p in target.named_parameters()}
    ema_update(target, online, 0.9)
    for name, p in online.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p
        assert torch.allclose(dict(target.named_parameters())[name], expected)
    for name, buffer in online.named_buffers():
        assert torch.equal(dict(target.named_buffers())[name], buffer)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema_update(target, online, 1.5)
    with pytest.raises(ValueError, match="same parameters"):
        ema_update(target, nn.Linear(3, 4), 0.9)


def test_moco_loss_leaves_the_state_alone_and_after_step_updates_it() -> None:
    torch.manual_seed(0)
    config = MoCoConfig(queue_size=8, hidden_dim=5, out_dim=3, momentum=0.9)
    model = MoCo(tiny_encoder(), 6, config, generator=torch.Generator().manual_seed(1))
    assert all(not p.requires_grad for p in model.key_encoder.parameters())
    x1, x2 = randn(3, 1, 4, 4, seed=1).float(), randn(3, 1, 4, 4, seed=2).float()
    queue_before = model.queue.features.clone()
    key_nets = (model.key_encoder, model.key_projector)
    query_nets = (model.encoder, model.projector)
    keys_before = [p.clone() for net in key_nets for p in net.parameters()]
    with torch.no_grad():  # eq. 1 from the parts, with the key encoder before the update
        q1 = model.projector(model.encoder(x1))
        k2 = F.normalize(model.key_projector(model.key_encoder(x2)), dim=1)
    loss, _ = model.loss(x1, x2)
    assert loss.item() == pytest.approx(slow_infonce(q1, k2, queue_before, 0.2), rel=1e-5)
    assert torch.equal(model.queue.features, queue_before) and int(model.queue.ptr) == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss.backward()
    optimizer.step()
    queries = [p.detach().clone() for net in query_nets for p in net.parameters()]
    assert not all(  # the step moved the query side, so eq. 2 below is not trivially met
        torch.equal(q, k) for q, k in zip(queries, keys_before, strict=True)
    )
    assert all(p.grad is None for net in key_nets for p in net.parameters())
    keys_now = [p for net in key_nets for p in net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(keys_now, keys_before, strict=True))
    model.after_step(1, 10)
    for k, k_old, q in zip(keys_now, keys_before, queries, strict=True):  # f_k and its head
        assert torch.allclose(k, 0.9 * k_old + 0.1 * q)  # eq. 2, m = 0.9, by hand
    assert torch.allclose(model.queue.features[:3], k2) and int(model.queue.ptr) == 3
    assert torch.equal(model.queue.features[3:], queue_before[3:])
    with pytest.raises(RuntimeError, match="loss"):
        model.after_step(2, 10)  # the keys were enqueued already


def test_moco_momentum_is_constant_whatever_the_step() -> None:
    """He et al. keep m fixed (sec. 3.2): the step and the run length change nothing."""
    x1, x2 = randn(3, 1, 4, 4, seed=1).float(), randn(3, 1, 4, 4, seed=2).float()
    states = []
    for step, total in ((1, 10), (10, 10), (1, 1000)):
        torch.manual_seed(0)
        config = MoCoConfig(queue_size=8, hidden_dim=5, out_dim=3, momentum=0.9)
        model = MoCo(tiny_encoder(), 6, config, generator=torch.Generator().manual_seed(1))
        loss, _ = model.loss(x1, x2)
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=0.5).step()
        model.after_step(step, total)
        states.append(model.state_dict())
    for other in states[1:]:
        assert all(torch.equal(states[0][name], other[name]) for name in states[0])


# --- BYOL and SimSiam ----------------------------------------------------------------------


def test_byol_loss_equals_the_normalised_squared_distance_of_eq_2() -> None:
    p, z = randn(5, 4, seed=0), randn(5, 4, seed=1)
    distances = []
    for p_n, z_n in zip(p.tolist(), z.tolist(), strict=True):
        p_norm, z_norm = math.hypot(*p_n), math.hypot(*z_n)
        unit_difference = [a / p_norm - b / z_norm for a, b in zip(p_n, z_n, strict=True)]
        distances.append(sum(d**2 for d in unit_difference))
    assert byol_loss(p, z).item() == pytest.approx(sum(distances) / 5)


def test_byol_and_simsiam_losses_pass_no_gradient_to_z() -> None:
    p1, p2, z1, z2 = (randn(4, 3, seed=s).requires_grad_() for s in range(4))
    byol_loss(p1, z1).backward()
    assert p1.grad is not None and z1.grad is None
    simsiam_loss(p1, p2, z1, z2).backward()
    assert p2.grad is not None and z1.grad is None and z2.grad is None
    simsiam_loss(p1, p2, z1, z2, stop_gradient=False).backward()  # the ablation
    assert z1.grad is not None and z2.grad is not None


def test_simsiam_loss_is_a_negative_cosine_in_minus_one_one() -> None:
    p1, p2, z1, z2 = (randn(6, 3, seed=s) for s in range(4))
    expected = -sum(cosine(a, b) for a, b in zip(p1.tolist(), z2.tolist(), strict=True)) / 12
    expected -= sum(cosine(a, b) for a, b in zip(p2.tolist(), z1.tolist(), strict=True)) / 12
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(expected)
    assert simsiam_loss(p1, p2, 3 * p2, 2 * p1).item() == pytest.approx(-1)
    assert simsiam_loss(p1, p2, -p2, -p1).item() == pytest.approx(1)


def test_output_std_equals_a_loop_is_zero_for_one_direction_and_inverse_sqrt_d_spread() -> None:
    p = randn(5, 3, seed=3)
    units = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in p.tolist()]
    expected = statistics.fmean(statistics.stdev(column) for column in zip(*units, strict=True))
    assert output_std(p).item() == pytest.approx(expected)
    lengths = torch.rand(10, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    collapsed = randn(1, 8, seed=5) * (lengths + 0.5)  # every row has the same direction
    assert output_std(collapsed).item() == pytest.approx(0, abs=1e-12)
    assert output_std(randn(4000, 16)).item() == pytest.approx(1 / math.sqrt(16), rel=0.05)
    with pytest.raises(ValueError, match=r"\(N, D\) with N >= 2; got \(1, 3\)"):
        output_std(randn(1, 3))


MONITORED = {
    "byol": lambda: BYOL(tiny_encoder(), 6, BYOLConfig(hidden_dim=16, out_dim=16)),
    "simsiam": lambda: SimSiam(tiny_encoder(), 6, SimSiamConfig(proj_dim=16, pred_hidden=8)),
}


@pytest.mark.parametrize("name", MONITORED)
def test_the_logged_monitor_reads_the_predictions_and_falls_to_zero_when_they_collapse(
    name: str,
) -> None:
    torch.manual_seed(0)
    model = MONITORED[name]()
    x1, x2 = randn(256, 1, 4, 4, seed=1).float(), randn(256, 1, 4, 4, seed=2).float()

    def parts() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z1 = model.projector(model.encoder(x1))
            return z1, model.predictor(z1)

    _, logs = model.loss(x1, x2)
    z1, p1 = parts()
    spread = 0.5 / math.sqrt(16)
    assert logs["output_std"].item() == pytest.approx(output_std(p1).item())
    assert logs["output_std"].item() > spread
    with torch.no_grad():  # collapse the predictor: p = its bias, the same for every image
        model.predictor[-1].weight.zero_()
    _, logs = model.loss(x1, x2)
    z1, p1 = parts()
    assert torch.allclose(p1, p1[:1].expand_as(p1))
    assert logs["output_std"].item() == pytest.approx(0, abs=1e-6)
    assert output_std(z1).item() > spread  # z is unchanged: a monitor on z would miss this


def test_byol_momentum_schedule_goes_from_base_to_one() -> None:
    assert byol_momentum(0, 100) == pytest.approx(0.996)
    assert byol_momentum(50, 100) == pytest.approx(0.998)
    assert byol_momentum(100, 100) == pytest.approx(1.0)
    assert byol_momentum(1, 4, base=0.6) == pytest.approx(1 - 0.4 * (math.sqrt(0.5) + 1) / 2)
    with pytest.raises(ValueError, match="step <= total_steps"):
        byol_momentum(5, 4)
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        byol_momentum(0, 0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        byol_momentum(0, 4, base=1.5)


def byol_and_its_halves(config: BYOLConfig) -> tuple[BYOL, list[nn.Parameter], list[nn.Parameter]]:
    torch.manual_seed(0)
    model = BYOL(tiny_encoder(), 6, config)
    target = list(model.target_encoder.parameters()) + list(model.target_projector.parameters())
    online = list(model.encoder.parameters()) + list(model.projector.parameters())
    return model, target, online


def byol_step(model: BYOL, seed: int) -> None:
    """One loss, backward and SGD step on the online network (the target gets no gradient)."""
    x1, x2 = randn(6, 1, 4, 4, seed=seed).float(), randn(6, 1, 4, 4, seed=seed + 50).float()
    model.zero_grad()
    model.loss(x1, x2)[0].backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()


def test_byol_target_gets_no_gradient() -> None:
    model, target, online = byol_and_its_halves(BYOLConfig(hidden_dim=8, out_dim=4))
    assert all(torch.equal(t, o) for t, o in zip(target, online, strict=True))
    assert not any(t.requires_grad for t in target)
    loss, logs = model.loss(randn(6, 1, 4, 4, seed=1).float(), randn(6, 1, 4, 4, seed=2).float())
    assert logs["loss"].item() == pytest.approx(loss.item())
    loss.backward()
    assert all(t.grad is None for t in target) and all(o.grad is not None for o in online)
    before = [t.clone() for t in target]
    torch.optim.SGD(model.parameters(), lr=1.0).step()  # the optimiser skips the target
    assert all(torch.equal(t, b) for t, b in zip(target, before, strict=True))


def test_byol_after_step_is_eq_1_with_the_cosine_momentum_of_that_step() -> None:
    """tau_k = 1 - (1 - 0.5)(cos(pi k / 4) + 1) / 2 after step k + 1 of K = 4, by hand."""
    config = BYOLConfig(hidden_dim=8, out_dim=4, momentum=0.5)
    model, target, online = byol_and_its_halves(config)
    root = math.sqrt(0.5)  # cos(pi/4) = -cos(3 pi/4)
    by_hand = {1: 0.5, 2: 1 - 0.25 * (1 + root), 3: 0.75, 4: 1 - 0.25 * (1 - root)}
    for step in range(1, 5):
        byol_step(model, seed=step)
        before = [t.clone() for t in target]
        assert not all(torch.equal(t, o) for t, o in zip(target, online, strict=True))
        assert model.momentum_at(step, 4) == pytest.approx(by_hand[step])
        model.after_step(step, 4)
        tau = by_hand[step]
        for t, b, o in zip(target, before, online, strict=True):
            assert torch.allclose(t, tau * b + (1 - tau) * o)
    with pytest.raises(ValueError, match="step must be a positive int"):
        model.after_step(0, 4)
    with pytest.raises(ValueError, match="step <= total_steps"):
        model.after_step(5, 4)


@pytest.mark.parametrize("tau", [0.0, 0.25])
def test_byol_constant_schedule_uses_the_base_momentum_at_every_step(tau: float) -> None:
    config = BYOLConfig(hidden_dim=8, out_dim=4, momentum=tau, momentum_schedule="constant")
    model, target, online = byol_and_its_halves(config)
    byol_step(model, seed=1)
    before = [t.clone() for t in target]
    model.after_step(3, 4)  # the cosine schedule would use 1 - (1 - tau) / 2 here
    for t, b, o in zip(target, before, online, strict=True):
        assert torch.allclose(t, tau * b + (1 - tau) * o)
    with pytest.raises(ValueError, match="unknown momentum_schedule 'linear'"):
        BYOLConfig(momentum_schedule="linear")


# --- Barlow Twins --------------------------------------------------------------------------


def slow_barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float) -> float:
    n, d = z1.shape

    def standardised(z: list[list[float]]) -> list[list[float]]:
        columns = []
        for col in zip(*z, strict=True):
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / n  # biased, as BatchNorm1d
            columns.append([(v - mean) / math.sqrt(var + eps) for v in col])
        return [list(row) for row in zip(*columns, strict=True)]

    a, b = standardised(z1.tolist()), standardised(z2.tolist())
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


def hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])  # Sylvester's construction
    return h


def test_barlow_twins_loss_is_zero_for_identical_decorrelated_views() -> None:
    z = hadamard(8)[:, 1:]  # 7 orthogonal +-1 columns with mean 0 and (biased) std 1: C = I
    z = z * torch.arange(1.0, 8.0, dtype=torch.float64) + 3.0  # standardisation undoes this
    assert barlow_twins_loss(z, z, eps=0.0).item() == pytest.approx(0, abs=1e-20)
    assert barlow_twins_loss(z, z).item() == pytest.approx(0, abs=1e-8)  # eps = 1e-5


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_barlow_twins_loss_equals_a_slow_loop_of_eq_1(eps: float) -> None:
    z1, z2 = randn(6, 4, seed=0), randn(6, 4, seed=1)
    expected = slow_barlow_twins(z1, z2, lambd=0.1, eps=eps)
    assert barlow_twins_loss(z1, z2, lambd=0.1, eps=eps).item() == pytest.approx(expected)
    assert expected > 0


def test_barlow_twins_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        barlow_twins_loss(randn(1, 3), randn(1, 3))
    with pytest.raises(ValueError, match="same shape"):
        barlow_twins_loss(randn(4, 3), randn(4, 2))
    with pytest.raises(ValueError, match="lambd"):
        barlow_twins_loss(randn(4, 3), randn(4, 3), lambd=-1.0)


# --- Every method --------------------------------------------------------------------------

MODELS = {
    "simclr": lambda: SimCLR(tiny_encoder(), 6, SimCLRConfig(hidden_dim=8, out_dim=4)),
    "moco": lambda: MoCo(
        tiny_encoder(), 6, MoCoConfig(queue_size=16, hidden_dim=8, out_dim=4, symmetric=True)
    ),
    "byol": lambda: BYOL(tiny_encoder(), 6, BYOLConfig(hidden_dim=8, out_dim=4)),
    "simsiam": lambda: SimSiam(tiny_encoder(), 6, SimSiamConfig(proj_dim=8, pred_hidden=4)),
    "barlow": lambda: BarlowTwins(tiny_encoder(), 6, BarlowTwinsConfig(proj_dim=8)),
}


@pytest.mark.parametrize("name", MODELS)
def test_every_method_trains_in_float64_with_the_same_loop(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in (1, 2):
        x1, x2 = randn(8, 1, 4, 4, seed=step), randn(8, 1, 4, 4, seed=step + 9)
        loss, logs = model.loss(x1, x2)
        assert loss.dtype == torch.float64 and torch.isfinite(loss)
        for value in logs.values():  # 0-dim tensors, detached: SelfSupervised logs floats
            assert isinstance(value, torch.Tensor) and value.ndim == 0
            assert not value.requires_grad
        assert logs["loss"].item() == pytest.approx(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step(step, 2)
    assert isinstance(model.encoder, nn.Module)
    with pytest.raises(ValueError, match="same shape"):
        model.loss(randn(8, 1, 4, 4), randn(7, 1, 4, 4))


@pytest.mark.parametrize("name", ["simclr", "simsiam", "barlow"])
def test_after_step_of_a_method_without_state_changes_nothing(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS[name]()
    loss, _ = model.loss(randn(8, 1, 4, 4, seed=1).float(), randn(8, 1, 4, 4, seed=2).float())
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.after_step(1, 3)
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_methods_reject_a_config_of_another_method() -> None:
    with pytest.raises(TypeError, match="SimSiamConfig"):
        SimSiam(tiny_encoder(), 6, BYOLConfig())  # type: ignore[arg-type]


# --- SimSiam's collapse without stop-gradient (Chen & He, sec. 4.1, Fig. 2) ----------------


def shift_and_noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A view: each image rolled by up to 3 pixels each way, plus Gaussian noise (std 0.1)."""
    shifts = torch.randint(-3, 4, (len(x), 2), generator=g).tolist()
    rolled = torch.stack(
        [torch.roll(img, (dy, dx), dims=(1, 2)) for img, (dy, dx) in zip(x, shifts, strict=True)]
    )
    return rolled + 0.1 * torch.randn(x.shape, generator=g)


def simsiam_output_std(images: torch.Tensor, stop_gradient: bool, steps: int = 200) -> float:
    """Train SimSiam (SGD, lr 0.05, momentum 0.9, wd 1e-4, as in the paper; batch 64) and
    return the collapse monitor averaged over the last 10 steps."""
    torch.manual_seed(0)
    # No batch norm on z (out_norm=False): with it, the paper's default, the run without
    # stop-gradient does not reach a constant output within these 200 steps.
    config = SimSiamConfig(proj_dim=16, pred_hidden=4, out_norm=False, stop_gradient=stop_gradient)
    model = SimSiam(Conv4(1, hidden=16), 16, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    stds = []
    for _ in range(steps):
        x = images[torch.randint(len(images), (64,), generator=g)]
        loss, logs = model.loss(shift_and_noise(x, g), shift_and_noise(x, g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stds.append(logs["output_std"].item())
    return sum(stds[-10:]) / 10


@pytest.mark.slow
def test_simsiam_collapses_without_stop_gradient() -> None:
    images = load_dataset("glyphs", "train", alphabets=4).images  # (2420, 1, 28, 28)
    healthy = simsiam_output_std(images, stop_gradient=True)
    collapsed = simsiam_output_std(images, stop_gradient=False)
    message = f"output std: with stop-gradient {healthy:.4f}, without {collapsed:.4f}"
    assert healthy > 0.5 / math.sqrt(16), message  # spread out: 1/sqrt(d) = 0.25 at best
    assert collapsed < 0.1 * healthy, message
