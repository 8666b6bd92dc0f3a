"""Generative SSL: autoencoders, VAE, MAE and rotation prediction against independent
references (torch.distributions, Monte Carlo, hand-written loops), and short training runs."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from companion.data import load_dataset
from companion.nets import Conv4
from companion.ssl.autoencoders import (
    Autoencoder,
    AutoencoderConfig,
    Decoder,
    DenoisingAutoencoder,
    DenoisingConfig,
    corrupt,
)
from companion.ssl.mae import MAE, MAEConfig, mae_loss, patchify, random_masking, unpatchify
from companion.ssl.pretext import RotationConfig, RotationPrediction, rotate_batch
from companion.ssl.vae import VAE, VAEConfig, elbo, gaussian_kl, reparameterise

TINY_MAE = MAEConfig(embed_dim=32, depth=1, heads=2, decoder_embed_dim=16, decoder_depth=1,
                     decoder_heads=2)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_gaussian(batch=3, latent=4, seed=0):
    g = seeded(seed)
    mu = torch.randn(batch, latent, generator=g, dtype=torch.float64)
    logvar = torch.randn(batch, latent, generator=g, dtype=torch.float64)
    return mu, logvar


class Spy(nn.Module):
    """Wraps an encoder and records every input it is given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def built(make, seed: int = 0):
    """``make()`` with its parameters initialised under ``seed``; the global RNG is restored."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return make()


def tiny_autoencoder_parts(size=4, code=3):
    encoder = built(lambda: nn.Sequential(nn.Flatten(), nn.Linear(size * size, code)).double())
    return encoder, built(lambda: Decoder(code, image_size=size, hidden=4).double())


# ---------------------------------------------------------------- VAE: KL, sampling, ELBO


def test_gaussian_kl_equals_torch_distributions_and_monte_carlo() -> None:
    mu, logvar = random_gaussian()
    sigma = (0.5 * logvar).exp()
    kl = gaussian_kl(mu, logvar)
    reference = kl_divergence(Normal(mu, sigma), Normal(0.0, 1.0)).sum(-1)  # (B,)
    torch.testing.assert_close(kl, reference)

    n = 100_000
    eps = torch.randn(n, *mu.shape, generator=seeded(1), dtype=torch.float64)
    z = mu + sigma * eps  # (n, B, J) samples of q(z | x)
    log_ratio = Normal(mu, sigma).log_prob(z).sum(-1) - Normal(0.0, 1.0).log_prob(z).sum(-1)
    estimate, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    assert torch.all((estimate - kl).abs() < 5 * se), (estimate, kl, se)


def test_reparameterised_sample_has_mean_mu_and_std_sigma() -> None:
    mu, logvar = random_gaussian(batch=1, latent=5)
    n = 100_000
    z = reparameterise(mu.expand(n, -1), logvar.expand(n, -1), seeded(2))  # (n, J)
    sigma = (0.5 * logvar[0]).exp()
    assert torch.all((z.mean(0) - mu[0]).abs() < 5 * sigma / math.sqrt(n))
    assert torch.all((z.std(0) - sigma).abs() < 5 * sigma / math.sqrt(2 * n))


def test_reparameterisation_gradient_reaches_mu_and_logvar() -> None:
    mu, logvar = random_gaussian()
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    reparameterise(mu, logvar, seeded(3)).sum().backward()
    eps = torch.randn(mu.shape, generator=seeded(3), dtype=torch.float64)  # the same draw
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))  # dz/dmu = 1
    torch.testing.assert_close(logvar.grad, 0.5 * (0.5 * logvar.detach()).exp() * eps)


def test_elbo_terms_are_minus_bce_by_hand_and_the_kl() -> None:
    g = seeded(4)
    logits = torch.randn(3, 1, 4, 5, generator=g, dtype=torch.float64)
    x = torch.rand(3, 1, 4, 5, generator=g, dtype=torch.float64)  # grey values, not just 0/1
    mu, logvar = random_gaussian()
    bound, log_px, kl = elbo(logits, x, mu, logvar, beta=2.5)
    p = 1 / (1 + (-logits).exp())
    bce = -(x * p.log() + (1 - x) * (1 - p).log())  # (B, C, H, W)
    torch.testing.assert_close(log_px, -bce.sum(dim=(1, 2, 3)))
    reference_kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl, reference_kl)
    torch.testing.assert_close(bound, -bce.sum(dim=(1, 2, 3)) - 2.5 * reference_kl)


def test_vae_loss_is_the_negative_elbo_of_one_seeded_sample() -> None:
    vae = built(
        lambda: VAE(
            Conv4(1, hidden=8),
            Decoder(4, hidden=4),
            feature_dim=8,
            config=VAEConfig(latent_dim=4),
            generator=seeded(5),
        ).double()
    )
    x = torch.rand(6, 1, 28, 28, generator=seeded(6), dtype=torch.float64)
    loss, logs = vae.loss(x)
    mu, logvar = vae.encode(x)
    z = mu + (0.5 * logvar).exp() * torch.randn(6, 4, generator=seeded(5), dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum") / 6
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    torch.testing.assert_close(loss, bce + kl)
    assert set(logs) == {"loss", "recon", "kl"}
    assert logs["recon"].item() == pytest.approx(bce.item())
    assert logs["kl"].item() == pytest.approx(kl.item())
    loss.backward()
    for head in (vae.mu, vae.logvar):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    images = vae.decode(torch.zeros(2, 4, dtype=torch.float64))
    assert images.shape == (2, 1, 28, 28) and images.min() >= 0 and images.max() <= 1


# ---------------------------------------------------------------- autoencoders


def test_autoencoder_loss_is_bce_or_squared_error_per_image() -> None:
    encoder, decoder = tiny_autoencoder_parts()
    x = torch.rand(5, 1, 4, 4, generator=seeded(7), dtype=torch.float64)
    logits = decoder(encoder(x))
    for kind, per_pixel in (
        ("bce", F.binary_cross_entropy_with_logits(logits, x, reduction="none")),
        ("mse", (torch.sigmoid(logits) - x) ** 2),
    ):
        loss, logs = Autoencoder(encoder, decoder, AutoencoderConfig(kind)).loss(x)
        torch.testing.assert_close(loss, per_pixel.sum() / 5)
        assert set(logs) == {"loss"} and logs["loss"].item() == pytest.approx(loss.item())


def test_masking_noise_corrupts_the_input_and_the_target_is_clean() -> None:
    encoder, decoder = tiny_autoencoder_parts()
    spy = Spy(encoder)
    dae = DenoisingAutoencoder(spy, decoder, DenoisingConfig(level=0.25), generator=seeded(8))
    x = torch.rand(6, 1, 4, 4, generator=seeded(9), dtype=torch.float64) + 0.1  # no zeros
    loss, _ = dae.loss(x)
    (x_tilde,) = spy.inputs
    zeroed = x_tilde == 0
    assert torch.all(zeroed.flatten(1).sum(1) == 4)  # round(0.25 * 16) pixels of each image
    torch.testing.assert_close(x_tilde[~zeroed], x[~zeroed])  # the others are untouched
    assert not torch.equal(zeroed[0], zeroed[1])  # a fresh choice per image
    logits = decoder(encoder(x_tilde))
    clean = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 6
    torch.testing.assert_close(loss, clean)
    noisy = F.binary_cross_entropy_with_logits(logits, x_tilde, reduction="sum") / 6
    assert not torch.isclose(loss, noisy)
    replay = Spy(encoder)  # the same seed corrupts the same way
    DenoisingAutoencoder(replay, decoder, DenoisingConfig(level=0.25), seeded(8)).loss(x)
    assert torch.equal(replay.inputs[0], x_tilde)


def test_gaussian_noise_has_the_configured_std() -> None:
    spy = Spy(Conv4(1, hidden=4))
    dae = DenoisingAutoencoder(
        spy, Decoder(4, hidden=4), DenoisingConfig(noise="gaussian", level=0.3), seeded(10)
    )
    x = torch.rand(8, 1, 28, 28, generator=seeded(11))
    dae.loss(x)
    noise = spy.inputs[0] - x
    assert abs(noise.mean().item()) < 0.02 and noise.std().item() == pytest.approx(0.3, rel=0.05)


# ---------------------------------------------------------------- MAE


def test_patchify_matches_a_loop_over_the_grid_and_unpatchify_inverts_it() -> None:
    x = torch.rand(2, 3, 8, 12, generator=seeded(12))
    tokens = patchify(x, 4)  # grid 2 x 3
    assert tokens.shape == (2, 6, 48)
    for r in range(2):
        for c in range(3):
            patch = x[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]  # (B, C, p, p)
            assert torch.equal(tokens[:, 3 * r + c], patch.permute(0, 2, 3, 1).flatten(1))
    assert torch.equal(unpatchify(tokens, 4, size=(8, 12)), x)
    square = torch.rand(2, 1, 28, 28, generator=seeded(13))
    assert torch.equal(unpatchify(patchify(square, 7), 7), square)


@pytest.mark.parametrize("ratio", [0.75, 0.6, 0.1])
def test_random_masking_keeps_round_l_times_one_minus_ratio(ratio: float) -> None:
    b, n, d = 8, 49, 3
    tokens = torch.arange(b * n * d, dtype=torch.float32).view(b, n, d)  # all distinct
    kept, mask, ids_restore = random_masking(tokens, ratio, seeded(14))
    keep = round(n * (1 - ratio))
    assert kept.shape == (b, keep, d) and mask.shape == (b, n)
    assert torch.all(mask.sum(1) == n - keep) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(ids_restore.sort(1).values, torch.arange(n).expand(b, n))  # permutations
    # append placeholders for the masked tokens and un-shuffle: every kept token is back in place
    full = torch.cat([kept, torch.full((b, n - keep, d), -1.0)], dim=1)
    restored = full.gather(1, ids_restore[..., None].expand(-1, -1, d))
    visible = mask == 0
    assert torch.equal(restored[visible], tokens[visible])
    assert torch.all(restored[~visible] == -1)
    assert len({tuple(row.tolist()) for row in mask}) == b  # a different mask per sample


def test_random_masking_is_reproducible_from_a_generator() -> None:
    tokens = torch.randn(4, 49, 8, generator=seeded(15))
    first, again, other = (random_masking(tokens, 0.75, seeded(s)) for s in (1, 1, 2))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], other[1])


def test_mae_loss_averages_masked_patches_only() -> None:
    g = seeded(16)
    pred = torch.randn(3, 10, 4, generator=g, dtype=torch.float64)
    target = torch.rand(3, 10, 4, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 10, generator=g) < 0.7).double()
    mask[0, 0], mask[0, 1] = 1, 0
    loss = mae_loss(pred, target, mask)
    errors = [
        ((pred[b, i] - target[b, i]) ** 2).mean().item()
        for b in range(3)
        for i in range(10)
        if mask[b, i] == 1
    ]
    assert loss.item() == pytest.approx(statistics.fmean(errors))
    visible_changed = pred + 100.0 * (1 - mask)[..., None]
    assert torch.equal(mae_loss(visible_changed, target, mask), loss)
    masked_changed = pred.clone()
    masked_changed[0, 0] += 1.0
    assert not torch.isclose(mae_loss(masked_changed, target, mask), loss)
    normalised = [
        [(v - statistics.fmean(p)) / math.sqrt(statistics.variance(p) + 1e-6) for v in p]
        for p in target.view(-1, 4).tolist()
    ]
    target_n = torch.tensor(normalised, dtype=torch.float64).view(3, 10, 4)
    torch.testing.assert_close(
        mae_loss(pred, target, mask, norm_pix_loss=True), mae_loss(pred, target_n, mask)
    )


def test_mae_encoder_is_an_unmasked_encoder_and_the_loss_trains_it() -> None:
    mae = built(lambda: MAE(TINY_MAE, generator=seeded(17)))
    x = torch.rand(3, 1, 28, 28, generator=seeded(18))
    z = mae.encoder(x)
    assert z.shape == (3, TINY_MAE.embed_dim) and torch.equal(mae.encoder(x), z)  # no random mask
    for r, c in ((0, 0), (3, 5), (6, 6)):  # every patch is seen
        changed = x.clone()
        changed[0, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
        assert not torch.allclose(mae.encoder(changed)[0], z[0])
    loss, logs = mae.loss(x)
    loss.backward()
    assert set(logs) == {"loss"} and mae.encoder.patch_embed.weight.grad.abs().sum() > 0
    assert mae.mask_token.grad.abs().sum() > 0
    rotation = RotationPrediction(mae.encoder, feature_dim=mae.encoder.out_features())
    assert rotation.loss(x)[0].ndim == 0  # composes like any encoder


# ---------------------------------------------------------------- rotation prediction


def test_rotate_batch_turns_counter_clockwise_in_rotation_major_blocks() -> None:
    x = torch.rand(2, 1, 5, 5, generator=seeded(19))
    rotated, labels = rotate_batch(x)
    assert rotated.shape == (8, 1, 5, 5) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    blocks = rotated.view(4, 2, 1, 5, 5)
    assert torch.equal(blocks[0], x)
    for k in range(3):  # 90 of the 90 is the 180, ... and four turns are the identity
        assert torch.equal(torch.rot90(blocks[k], 1, dims=(2, 3)), blocks[k + 1])
    assert torch.equal(torch.rot90(blocks[3], 1, dims=(2, 3)), x)
    image = x[0, 0].tolist()
    ccw = [[image[j][4 - i] for j in range(5)] for i in range(5)]  # row i = column 4 - i
    assert blocks[1, 0, 0].tolist() == ccw


def test_rotation_loss_is_cross_entropy_and_accuracy_a_fraction() -> None:
    encoder = built(lambda: nn.Sequential(nn.Flatten(), nn.Linear(36, 5)))
    model = built(lambda: RotationPrediction(encoder, feature_dim=5))
    x = torch.rand(3, 1, 6, 6, generator=seeded(20))
    loss, logs = model.loss(x)
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    logits = model.head(encoder(rotated))
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    by_hand = sum(row.argmax().item() == y for row, y in zip(logits, labels.tolist(), strict=True))
    assert logs["accuracy"].item() == pytest.approx(by_hand / 12)


# ---------------------------------------------------------------- training smoke


@pytest.fixture(scope="module")
def glyph_batch() -> torch.Tensor:
    images = load_dataset("glyphs", "train", alphabets=4).images
    return images[torch.randperm(len(images), generator=seeded(21))[:64]]  # (64, 1, 28, 28)


METHODS = {
    "autoencoder": lambda: Autoencoder(Conv4(1, hidden=8), Decoder(8, hidden=8)),
    "denoising": lambda: DenoisingAutoencoder(Conv4(1, hidden=8), Decoder(8, hidden=8)),
    "vae": lambda: VAE(
        Conv4(1, hidden=8), Decoder(4, hidden=8), feature_dim=8, config=VAEConfig(latent_dim=4)
    ),
    "mae": lambda: MAE(TINY_MAE),
    "rotation": lambda: RotationPrediction(Conv4(1, hidden=8), feature_dim=8),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_training_lowers_the_loss(name: str, glyph_batch: torch.Tensor, one_thread) -> None:
    model = built(METHODS[name])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(1, 41):
        loss, logs = model.loss(glyph_batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.after_step(step, 40)
        losses.append(logs["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert statistics.fmean(losses[-5:]) < 0.8 * statistics.fmean(losses[:3]), losses


@pytest.mark.parametrize("name", list(METHODS))
def test_after_step_changes_nothing_and_generators_name_the_random_streams(name: str) -> None:
    """No method here keeps state outside the gradient; the random ones own one stream."""
    model = built(METHODS[name])
    x = torch.rand(4, 1, 28, 28, generator=seeded(22))
    model.loss(x)[0].backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    streams = dict(model.generators()) if hasattr(model, "generators") else {}
    states = {key: g.get_state() for key, g in streams.items()}
    model.after_step(1, 3)
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(states[k], g.get_state()) for k, g in streams.items())
    expected = {"denoising": {"noise"}, "vae": {"eps"}, "mae": {"mask"}}.get(name, set())
    assert set(streams) == expected
    assert all(g is model.generator for g in streams.values())


# ---------------------------------------------------------------- argument errors


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.25])
def test_mask_ratio_outside_the_open_unit_interval_is_rejected(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\); got"):
        MAEConfig(mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.zeros(2, 49, 4), ratio, seeded())


def test_shape_and_argument_errors_say_what_was_given() -> None:
    with pytest.raises(ValueError, match="divisible by patch; got image_size=28 and patch=5"):
        MAEConfig(patch=5)
    with pytest.raises(ValueError, match=r"divisible by patch=5; got \(1, 1, 28, 28\)"):
        patchify(torch.zeros(1, 1, 28, 28), 5)
    with pytest.raises(ValueError, match="keeps 4 of 4 tokens"):
        random_masking(torch.zeros(1, 4, 2), 0.1, seeded())
    with pytest.raises(ValueError, match="multiple of 4"):
        MAEConfig(embed_dim=30, heads=3)
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 28, 28\); got \(2, 1, 32, 32\)"):
        MAE(TINY_MAE).loss(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"must match the images \(2, 1, 28, 28\)"):
        Autoencoder(Conv4(1, hidden=8), Decoder(8, image_size=32)).loss(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"Decoder expects codes \(B, 8\); got \(2, 5\)"):
        Decoder(8)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"square images .* got \(1, 1, 4, 6\)"):
        rotate_batch(torch.zeros(1, 1, 4, 6))
    with pytest.raises(ValueError, match="unknown reconstruction 'l1'; allowed: bce, mse"):
        AutoencoderConfig(reconstruction="l1")
    with pytest.raises(ValueError, match="unknown noise 'salt'; allowed: mask, gaussian"):
        DenoisingConfig(noise="salt")
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\) for masking noise; got 1.5"):
        DenoisingConfig(level=1.5)
    with pytest.raises(ValueError, match="level must be in \\[0, 1\\] for masking noise"):
        corrupt(torch.zeros(1, 1, 4, 4), "mask", 1.5, seeded())
    with pytest.raises(ValueError, match="latent_dim must be a positive int; got 0"):
        VAEConfig(latent_dim=0)
    with pytest.raises(ValueError, match="beta must be >= 0; got -1"):
        VAEConfig(beta=-1.0)
    with pytest.raises(ValueError, match="hidden must be a positive int or None; got 0"):
        RotationConfig(hidden=0)
    with pytest.raises(TypeError, match="config must be a VAEConfig; got MAEConfig"):
        VAE(Conv4(1, hidden=8), Decoder(20), 8, config=MAEConfig())


def test_mae_embed_dim_does_not_clash_with_the_conv4_width() -> None:
    """``width`` is the Conv-4 width of ``build_learner``; the ViT's is ``embed_dim``."""
    from companion.methods import build_learner

    learner = build_learner("mae", ways=5, image_size=28, in_channels=1, width=16,
                            embed_dim=32, depth=1, heads=2, decoder_embed_dim=16,
                            decoder_depth=1, decoder_heads=2)
    assert learner.encoder.out_features() == 32
    assert learner.encoder(torch.rand(2, 1, 28, 28)).shape == (2, 32)
