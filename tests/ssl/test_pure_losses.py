"""Every SSL method's ``forward`` is a pure function: ``torch.func.functional_call`` of it,
vmapped over a leading axis of independent batches, equals a Python loop over the batches
(loss, logs and gradients); and ``loss`` is ``forward`` with the random numbers drawn from
the method's generator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from companion.ssl.autoencoders import (
    Autoencoder,
    Decoder,
    DenoisingAutoencoder,
    DenoisingConfig,
    draw_corruption,
)
from companion.ssl.barlow import BarlowTwins, BarlowTwinsConfig
from companion.ssl.byol import BYOL, BYOLConfig, SimSiam, SimSiamConfig
from companion.ssl.mae import MAE, MAEConfig
from companion.ssl.moco import MoCo, MoCoConfig
from companion.ssl.pretext import RotationPrediction
from companion.ssl.simclr import SimCLR, SimCLRConfig
from companion.ssl.vae import VAE, VAEConfig
from companion.tasks.psco import PsCo, PsCoConfig

TASKS, BATCH = 3, 6  # the vmapped axis: 3 independent batches of 6 images
SMALL_MAE = MAEConfig(
    image_size=8,
    patch=4,
    embed_dim=8,
    depth=1,
    heads=2,
    decoder_embed_dim=8,
    decoder_depth=1,
    decoder_heads=2,
)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs its tiny models on one thread (see tests/conftest.py)."""


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_encoder() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU())  # (B, 1, 4, 4) -> (B, 6)


def linear_decoder(code: int) -> nn.Module:
    """Codes ``(B, code)`` to ``(B, 1, 4, 4)`` logits; no ReLU, so it never goes dead."""
    return nn.Sequential(nn.Linear(code, 16), nn.Unflatten(1, (1, 4, 4)))


def images(seed: int, size: int = 4) -> torch.Tensor:
    """``TASKS`` batches of ``BATCH`` images in ``[0, 1]``: ``(TASKS, BATCH, 1, size, size)``."""
    return torch.rand(TASKS, BATCH, 1, size, size, generator=seeded(seed), dtype=torch.float64)


def normal(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=seeded(seed), dtype=torch.float64)


# name: (build the method, the stacked arguments of its forward)
CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "simclr": (
        lambda: SimCLR(tiny_encoder(), 6, SimCLRConfig(hidden_dim=8, out_dim=4)),
        lambda: (images(1), images(2)),
    ),
    "moco": (
        lambda: MoCo(
            tiny_encoder(),
            6,
            MoCoConfig(queue_size=8, hidden_dim=8, out_dim=4, symmetric=True),
            generator=seeded(0),
        ),
        lambda: (images(1), images(2)),
    ),
    "psco": (
        lambda: PsCo(tiny_encoder(), 6, PsCoConfig(shots=2, queue_size=8, hidden_dim=8,
                                                   out_dim=4), generator=seeded(0)),
        lambda: (images(1), images(2)),
    ),
    "byol": (
        lambda: BYOL(tiny_encoder(), 6, BYOLConfig(hidden_dim=8, out_dim=4)),
        lambda: (images(1), images(2)),
    ),
    "simsiam": (
        lambda: SimSiam(tiny_encoder(), 6, SimSiamConfig(proj_dim=8, pred_hidden=4)),
        lambda: (images(1), images(2)),
    ),
    "barlow": (
        lambda: BarlowTwins(tiny_encoder(), 6, BarlowTwinsConfig(proj_dim=8)),
        lambda: (images(1), images(2)),
    ),
    "autoencoder": (
        lambda: Autoencoder(tiny_encoder(), Decoder(6, image_size=4, hidden=8)),
        lambda: (images(1),),
    ),
    "denoising": (
        lambda: DenoisingAutoencoder(
            tiny_encoder(), linear_decoder(6), DenoisingConfig(level=0.25)
        ),
        lambda: (
            images(1),
            torch.rand(TASKS, BATCH, 1, 4, 4, generator=seeded(3), dtype=torch.float64),
        ),
    ),
    "gaussian-denoising": (
        lambda: DenoisingAutoencoder(
            tiny_encoder(), linear_decoder(6), DenoisingConfig(noise="gaussian", level=0.3)
        ),
        lambda: (images(1), normal(TASKS, BATCH, 1, 4, 4, seed=3)),
    ),
    "vae": (
        lambda: VAE(tiny_encoder(), linear_decoder(3), 6, VAEConfig(latent_dim=3)),
        lambda: (images(1), normal(TASKS, BATCH, 3, seed=3)),
    ),
    "mae": (
        lambda: MAE(SMALL_MAE),
        lambda: (
            images(1, size=8),
            torch.rand(TASKS, BATCH, 4, generator=seeded(3), dtype=torch.float64),
        ),
    ),
    "rotation": (lambda: RotationPrediction(tiny_encoder(), 6), lambda: (images(1),)),
}


def build(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    make, inputs = CASES[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return make().double(), inputs()


def loss_and_logs(out: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, logs)`` of a forward (MoCo's returns its keys too: they go into the logs)."""
    if len(out) == 3:
        loss, logs, keys = out
        return loss, {**logs, "keys": keys}
    return out


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # MAE's attention
@pytest.mark.parametrize("name", CASES)
def test_vmap_of_the_functional_loss_equals_a_loop_over_batches(name: str) -> None:
    model, inputs = build(name)
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    state = {key: value.detach() for key, value in state.items()}

    def pure(*args: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return loss_and_logs(functional_call(model, state, args))

    batched_loss, batched_logs = vmap(pure)(*inputs)
    assert batched_loss.shape == (TASKS,)
    looped = [loss_and_logs(model(*(x[t] for x in inputs))) for t in range(TASKS)]
    torch.testing.assert_close(batched_loss, torch.stack([loss for loss, _ in looped]))
    for key in looped[0][1]:
        torch.testing.assert_close(
            batched_logs[key], torch.stack([logs[key] for _, logs in looped])
        )
    assert len({round(loss.item(), 12) for loss, _ in looped}) == TASKS  # distinct batches


@pytest.mark.parametrize(
    "name", ["simclr", "byol", "barlow", "autoencoder", "denoising", "vae", "rotation"]
)
def test_vmap_of_the_gradient_equals_a_loop_of_backward(name: str) -> None:
    """Per-batch gradients with ``torch.func.grad`` under ``vmap``, as meta-learning uses them."""
    model, inputs = build(name)
    trainable = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    fixed = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    fixed |= {k: b.detach() for k, b in model.named_buffers()}

    def loss_of(params: dict[str, torch.Tensor], *args: torch.Tensor):
        return functional_call(model, {**params, **fixed}, args)  # (loss, logs): has_aux

    grads, _ = vmap(grad(loss_of, has_aux=True), in_dims=(None, *[0] * len(inputs)))(
        trainable, *inputs
    )
    encoder = [key for key in trainable if key.startswith("encoder.")]
    assert encoder and all(grads[key].abs().sum() > 0 for key in encoder)  # not trivially 0
    for t in range(TASKS):
        model.zero_grad()
        model(*(x[t] for x in inputs))[0].backward()
        for key, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(grads[key][t], p.grad, msg=f"{key}, batch {t}")


def test_each_loss_is_forward_with_the_draws_of_its_generator() -> None:
    """``loss`` draws from the method's seeded generator; ``forward`` takes the same draws."""
    x4, x8 = images(1)[0], images(1, size=8)[0]
    dae = build("denoising")[0]
    dae.generator = seeded(7)
    u = torch.rand(BATCH, 1, 4, 4, generator=seeded(7), dtype=torch.float64)
    torch.testing.assert_close(dae.loss(x4)[0], dae(x4, u)[0])
    assert torch.equal(draw_corruption(x4, "mask", seeded(7)), u)
    vae = build("vae")[0]
    vae.generator = seeded(8)
    eps = torch.randn(BATCH, 3, generator=seeded(8), dtype=torch.float64)
    torch.testing.assert_close(vae.loss(x4)[0], vae(x4, eps)[0])
    mae = build("mae")[0]
    mae.generator = seeded(9)
    noise = torch.rand(BATCH, 4, generator=seeded(9))  # float32, as the masks always were
    torch.testing.assert_close(mae.loss(x8)[0], mae(x8, noise)[0])
    for model, x in ((dae, x4), (vae, x4), (mae, x8)):  # a fresh draw each call
        assert not torch.equal(model.loss(x)[0], model.loss(x)[0])


def test_moco_forward_mutates_nothing_and_loss_records_the_keys() -> None:
    model, (x1, x2) = build("moco")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    loss, logs, keys = model(x1[0], x2[0])
    assert model.last_keys is None and keys.shape == (2 * BATCH, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again, _ = model.loss(x1[0], x2[0])
    torch.testing.assert_close(again, loss)
    assert torch.equal(model.last_keys, keys)


def test_pure_paths_reject_draws_of_the_wrong_shape() -> None:
    x = images(1)[0]
    with pytest.raises(ValueError, match=r"u must have the shape of x \(6, 1, 4, 4\)"):
        build("denoising")[0](x, torch.rand(6, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"eps must be \(B, J\) = \(6, 3\); got \(6, 4\)"):
        build("vae")[0](x, torch.zeros(6, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"noise \(B, L\); got \(6, 4, 8\) and \(6, 5\)"):
        build("mae")[0](images(1, size=8)[0], torch.rand(6, 5))
