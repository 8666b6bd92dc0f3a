"""Augmentations against independent references: torch's flips, rot90 and interpolate,
zero-filled shifts, the forward formulas of the affine maps, ``colorsys`` for hue, SciPy's
Gaussian filter for blur, and the torchvision definitions of the colour operations."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from companion.data.augment import (
    AugmentConfig,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    affine_matrices,
    augment,
    elastic_field,
    gaussian_blur,
    random_affine_matrices,
    rgb_to_grayscale,
    sample_crop_boxes,
    two_views,
    warp,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(
    b: int = 4,
    c: int = 1,
    h: int = 28,
    w: int = 28,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed), dtype=dtype)


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Content moved ``dx`` px right and ``dy`` px down, zeros where it came from."""
    out = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if dy > 0:
        out[..., :dy, :] = 0
    elif dy < 0:
        out[..., dy:, :] = 0
    if dx > 0:
        out[..., :, :dx] = 0
    elif dx < 0:
        out[..., :, dx:] = 0
    return out


# --- identity, reproducibility, per-sample randomness --------------------------------


def test_identity_config_returns_x_exactly() -> None:
    x = images(c=3)
    assert torch.equal(augment(x, AugmentConfig(), gen()), x)
    off = AugmentConfig(brightness=0.5, hue=0.2, jitter_p=0.0, blur_sigma=(1.0, 1.0))
    assert torch.equal(augment(x, off, gen()), x)


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_identity_matrix_warp_is_identity(dtype: torch.dtype, atol: float) -> None:
    x = images(c=3, dtype=dtype)
    theta = random_affine_matrices(4, (28, 28), AugmentConfig(), gen(), dtype=dtype)
    assert torch.equal(theta, torch.eye(3, dtype=dtype)[:2].expand(4, 2, 3))
    torch.testing.assert_close(warp(x, theta), x, atol=atol, rtol=0)


@pytest.mark.parametrize("config", [AugmentConfig.glyphs(), AugmentConfig.rgb()])
def test_same_seed_same_views_other_seed_other_views(config: AugmentConfig) -> None:
    x = images(c=3)
    assert torch.equal(augment(x, config, gen(1)), augment(x, config, gen(1)))
    assert not torch.allclose(augment(x, config, gen(1)), augment(x, config, gen(2)))
    v1, v2 = two_views(x, config, gen(3))
    g = gen(3)
    assert torch.equal(v1, augment(x, config, g)) and torch.equal(v2, augment(x, config, g))
    assert not torch.allclose(v1, v2)


@pytest.mark.parametrize("config", [AugmentConfig.glyphs(), AugmentConfig.rgb()])
def test_identical_images_get_different_augmentations(config: AugmentConfig) -> None:
    x = images(b=1, c=3).expand(6, 3, 28, 28)
    out = augment(x, config, gen()).flatten(1)
    distances = torch.cdist(out, out) + torch.eye(6)
    assert bool((distances > 1e-3).all())


def test_random_matrices_do_not_depend_on_other_options() -> None:
    only_flip = random_affine_matrices(8, (28, 28), AugmentConfig(flip_p=0.5), gen())
    flip_and_more = AugmentConfig(flip_p=0.5, degrees=(-5.0, 5.0), crop_scale=(0.5, 1.0))
    more = random_affine_matrices(8, (28, 28), flip_and_more, gen())
    assert torch.equal(only_flip[:, 0, 0] < 0, more[:, 0, 0] < 0)  # the same images flip


# --- geometry against torch's own operations --------------------------------------------


def test_flip_equals_torch_flip() -> None:
    x = images(b=8, c=3, dtype=torch.float64)
    torch.testing.assert_close(
        augment(x, AugmentConfig(flip_p=1.0), gen()), x.flip(-1), atol=1e-12, rtol=0
    )
    out = augment(x, AugmentConfig(flip_p=0.5), gen(5))
    flipped = [torch.allclose(o, xi.flip(-1), atol=1e-12) for o, xi in zip(out, x, strict=True)]
    kept = [torch.allclose(o, xi, atol=1e-12) for o, xi in zip(out, x, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True)) and 0 < sum(flipped) < 8


@pytest.mark.parametrize(("degrees", "k"), [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_by_right_angles_equals_rot90(degrees: float, k: int) -> None:
    x = images(c=3, h=28, w=28)
    out = augment(x, AugmentConfig(degrees=(degrees, degrees)), gen())
    torch.testing.assert_close(out, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_crop_equals_slice_then_bilinear_resize() -> None:
    x = images(b=2, c=3)
    boxes = torch.tensor([[3.0, 5.0, 14.0, 14.0], [0.0, 7.0, 20.0, 15.0]])  # top, left, h, w
    out = warp(x, affine_matrices((28, 28), boxes=boxes))
    for i, (top, left, h, w) in enumerate(boxes.int().tolist()):
        ref = F.interpolate(
            x[i : i + 1, :, top : top + h, left : left + w],
            size=(28, 28),
            mode="bilinear",
            align_corners=False,
        )
        # interpolate clamps at the slice's edge; the warp reads the pixel beyond it.
        torch.testing.assert_close(out[i, :, 1:-1, 1:-1], ref[0, :, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_integer_translation_equals_zero_filled_shift() -> None:
    x = images(b=3, h=28, w=24)
    moves = torch.tensor([[3.0, -2.0], [-5.0, 4.0], [0.0, 1.0]])  # (dx, dy) in pixels
    out = warp(x, affine_matrices((28, 24), translate=moves))
    for i, (dx, dy) in enumerate(moves.int().tolist()):
        torch.testing.assert_close(out[i], shifted(x[i], dx, dy), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("params", "forward"),
    [
        ({"angle": 90.0}, lambda px, py: (py, -px)),  # counter-clockwise on screen (y down)
        ({"shear": 45.0}, lambda px, py: (px + py, py)),  # x' = x + y tan(45)
        ({"scale": 2.0}, lambda px, py: (2 * px, 2 * py)),
        (
            {"angle": 90.0, "scale": 2.0, "translate": (1.0, -2.0)},
            lambda px, py: (2 * py + 1, -2 * px - 2),
        ),
    ],
)
def test_a_lit_pixel_lands_where_the_forward_map_sends_it(params, forward) -> None:
    """On an odd-sized image the centre pixel is the origin, so integer maps stay exact."""
    size, c = 29, 14
    px, py = 3, 2  # offset of the lit pixel from the centre (right, down)
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    x[0, 0, c + py, c + px] = 1.0
    kwargs = {k: torch.tensor([v], dtype=torch.float64) for k, v in params.items()}
    out = warp(x, affine_matrices((size, size), **kwargs))
    qx, qy = forward(px, py)
    assert out[0, 0, c + qy, c + qx] == pytest.approx(1.0, abs=1e-9)


def test_crop_boxes_fit_and_follow_the_ranges() -> None:
    scale, ratio = (0.2, 0.7), (0.5, 2.0)
    top, left, h, w = sample_crop_boxes(2000, (28, 32), scale, ratio, gen()).unbind(1)
    assert bool((top >= 0).all() and (left >= 0).all())
    assert bool((top + h <= 28 + 1e-9).all() and (left + w <= 32 + 1e-9).all())
    area, r = h * w / (28 * 32), w / h
    assert bool(((area >= scale[0] - 1e-9) & (area <= scale[1] + 1e-9)).all())
    assert bool(((r >= ratio[0] - 1e-9) & (r <= ratio[1] + 1e-9)).all())
    assert abs(float(area.mean()) - sum(scale) / 2) < 0.02  # uniform in area
    full = sample_crop_boxes(5, (28, 32), (1.0, 1.0), (3 / 4, 4 / 3), gen())
    assert torch.equal(full, torch.tensor([[0.0, 0.0, 28.0, 32.0]]).expand(5, 4).double())


def test_elastic_field_is_smooth_and_scales_with_alpha() -> None:
    f1 = elastic_field(64, (28, 28), 1.0, 4.0, gen(), dtype=torch.float64)
    f34 = elastic_field(64, (28, 28), 34.0, 4.0, gen(), dtype=torch.float64)
    torch.testing.assert_close(f34, 34 * f1)
    neighbours = torch.corrcoef(torch.stack([f1[..., 1:].flatten(), f1[..., :-1].flatten()]))
    assert float(neighbours[0, 1]) > 0.9  # a smooth field, not per-pixel noise
    assert abs(float(f1.mean())) < 0.01  # no drift in any direction


@pytest.mark.parametrize(
    ("params", "reference"),
    [
        ({"flip": torch.tensor([True, True])}, lambda x: x.flip(-1)),
        ({"angle": torch.tensor([90.0, 90.0])}, lambda x: torch.rot90(x, 1, dims=(-2, -1))),
    ],
)
def test_field_is_in_output_pixels_after_the_affine_map(params, reference) -> None:
    """out(u) = x(theta(u + d)): a constant d shifts the *output* image by -d."""
    x = images(b=2, c=3, dtype=torch.float64)
    field = torch.zeros(2, 2, 28, 28, dtype=torch.float64)
    field[:, 0], field[:, 1] = 2.0, -3.0  # dx, dy
    theta = affine_matrices((28, 28), **params).double()
    torch.testing.assert_close(
        warp(x, theta, field), shifted(reference(x), -2, 3), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(
        warp(x, theta, torch.zeros_like(field)), reference(x), atol=1e-12, rtol=0
    )


# --- colour against the torchvision definitions, colorsys and SciPy -------------------


def luma(x: torch.Tensor) -> torch.Tensor:
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def test_brightness_multiplies_and_clips() -> None:
    x, f = images(b=3, c=3), torch.tensor([0.5, 1.0, 1.7])
    expected = (x * f[:, None, None, None]).clamp(0, 1)
    torch.testing.assert_close(adjust_brightness(x, f), expected)


def test_jitter_factors_are_uniform_on_torchvisions_interval() -> None:
    """Strength v draws factors from [max(0, 1 - v), 1 + v]: never negative."""
    x = torch.full((512, 1, 8, 8), 0.2, dtype=torch.float64)
    factors = augment(x, AugmentConfig(brightness=1.5), gen())[:, 0, 0, 0] / 0.2
    assert float(factors.min()) > 0.0 and float(factors.max()) <= 2.5
    assert abs(float(factors.mean()) - 1.25) < 0.1


def test_contrast_and_saturation_blend_with_luma() -> None:
    x, f = images(b=3, c=3), torch.tensor([0.0, 0.6, 1.4])
    f4 = f[:, None, None, None]
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(adjust_contrast(x, f), (f4 * x + (1 - f4) * mean).clamp(0, 1))
    torch.testing.assert_close(adjust_saturation(x, f), (f4 * x + (1 - f4) * luma(x)).clamp(0, 1))


def test_grayscale_uses_itu_r_601_weights() -> None:
    x = images(c=3)
    torch.testing.assert_close(rgb_to_grayscale(x), luma(x))
    out = augment(x, AugmentConfig(grayscale_p=1.0), gen())
    torch.testing.assert_close(out, luma(x).expand_as(x))


def test_hue_matches_colorsys() -> None:
    x = images(b=2, c=3, h=5, w=6, dtype=torch.float64)
    x[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)  # gray: no hue
    x[0, :, 0, 1] = torch.tensor([0.9, 0.2, 0.9], dtype=torch.float64)  # max in two channels
    shift = torch.tensor([0.1, -0.45], dtype=torch.float64)
    out = adjust_hue(x, shift)
    expected = torch.empty_like(x)
    for b in range(2):
        for i in range(5):
            for j in range(6):
                h, s, v = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
                rgb = colorsys.hsv_to_rgb((h + float(shift[b])) % 1.0, s, v)
                expected[b, :, i, j] = torch.tensor(rgb, dtype=torch.float64)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(adjust_hue(x, torch.zeros(2)), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("radius", [3, 6])
def test_blur_matches_scipy_gaussian_filter(radius: int) -> None:
    x, sigma = images(b=2, c=3, h=16, w=20, dtype=torch.float64), torch.tensor([0.7, 1.9])
    out = gaussian_blur(x, sigma, radius)
    for b in range(2):
        for c in range(3):
            # SciPy's "mirror" border is torch's "reflect" (the edge pixel is not repeated).
            ref = ndimage.gaussian_filter(
                x[b, c].numpy(), float(sigma[b]), mode="mirror", radius=radius
            )
            np.testing.assert_allclose(out[b, c].numpy(), ref, atol=1e-12)


def test_blur_keeps_a_constant_image_and_the_mean() -> None:
    flat = torch.full((2, 3, 32, 32), 0.37)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([0.1, 2.0]), 6), flat)
    x = images(c=3, h=32, w=32, dtype=torch.float64)
    out = augment(x, AugmentConfig(blur_p=1.0), gen())
    assert not torch.allclose(out, x)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-2, rtol=0)


def test_rgb_recipe_stays_in_unit_range_and_applies_per_image() -> None:
    x = images(b=64, c=3, h=32, w=32)
    out = augment(x, AugmentConfig.rgb(), gen())
    assert out.shape == x.shape and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0 < int(gray.sum()) < 64  # grayscale with p = 0.2: some images, not all


def test_one_channel_images_ignore_only_the_colour_operations() -> None:
    x = images(c=1)
    colour_only = AugmentConfig(saturation=0.9, hue=0.5, grayscale_p=1.0)
    assert torch.equal(augment(x, colour_only, gen()), x)  # no colour to change
    assert adjust_hue(x, torch.full((4,), 0.3)) is x and rgb_to_grayscale(x) is x
    brighter = augment(x, AugmentConfig(brightness=0.5), gen())
    factors = []
    for o, xi in zip(brighter, x, strict=True):  # out = clip(b x) with one b per image
        kept = (o < 1) & (xi > 0.05)
        ratio = o[kept] / xi[kept]
        assert float(ratio.std()) < 1e-5
        factors.append(float(ratio.mean()))
    assert all(0.5 <= f <= 1.5 for f in factors) and len(set(factors)) == len(factors)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment(images(c=2), AugmentConfig.rgb(), gen())


# --- dtype and device -----------------------------------------------------------------


@pytest.mark.parametrize("config", [AugmentConfig.glyphs(), AugmentConfig.rgb()])
def test_dtype_follows_input_and_randomness_does_not(config: AugmentConfig) -> None:
    x64 = images(c=3, dtype=torch.float64)
    out64 = augment(x64, config, gen())
    assert out64.dtype == torch.float64 and out64.device == x64.device
    out32 = augment(x64.float(), config, gen())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, atol=1e-4, rtol=0)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("config", [AugmentConfig.glyphs(), AugmentConfig.rgb()])
def test_cuda_images_with_a_cpu_or_a_cuda_generator(config: AugmentConfig) -> None:
    x = images(c=3, dtype=torch.float64)
    on_cpu = augment(x, config, gen(7))
    on_gpu = augment(x.cuda(), config, gen(7))
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float64
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-6, rtol=0)
    g = torch.Generator(device="cuda").manual_seed(7)
    out = augment(x.cuda(), config, g)
    assert out.device.type == "cuda"
    assert torch.equal(out, augment(x.cuda(), config, torch.Generator("cuda").manual_seed(7)))


# --- bad arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.2)}, "crop_scale"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_ratio": (4 / 3, 3 / 4)}, "crop_ratio"),
        ({"degrees": (10.0, -10.0)}, "degrees"),
        ({"degrees": (-270.0, 0.0)}, "degrees"),
        ({"translate": (0.1, 1.5)}, "translate"),
        ({"translate": (-0.1, 0.1)}, "translate"),
        ({"scale": (0.0, 1.0)}, "scale"),
        ({"shear": (-90.0, 0.0)}, "shear"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"jitter_p": -0.1}, "jitter_p"),
        ({"grayscale_p": math.nan}, "grayscale_p"),
        ({"blur_p": 2}, "blur_p"),
        ({"brightness": -0.4}, "brightness"),
        ({"hue": 0.6}, "hue"),
        ({"blur_sigma": (0.0, 2.0)}, "blur_sigma"),
        ({"elastic_alpha": -1.0}, "elastic_alpha"),
        ({"elastic_sigma": 0.0}, "elastic_sigma"),
    ],
)
def test_bad_config_raises_value_error_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must .*got"):
        AugmentConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"degrees": 10.0}, {"crop_scale": [0.5, 1.0]}, {"flip_p": True}, {"hue": "0.1"}]
)
def test_wrong_types_in_config_raise_type_error(kwargs: dict) -> None:
    with pytest.raises(TypeError, match="must be"):
        AugmentConfig(**kwargs)


def test_bad_inputs_raise() -> None:
    config = AugmentConfig.glyphs()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\); got \(28, 28\)"):
        augment(torch.rand(28, 28), config, gen())
    with pytest.raises(TypeError, match="floating point"):
        augment(torch.ones(2, 1, 28, 28, dtype=torch.uint8), config, gen())
    with pytest.raises(TypeError, match="torch.Generator; got int"):
        augment(images(), config, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AugmentConfig"):
        augment(images(), {"flip_p": 0.5}, gen())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"theta must have shape \(4, 2, 3\)"):
        warp(images(), torch.zeros(4, 3, 3))
    with pytest.raises(ValueError, match="radius must be in"):
        gaussian_blur(images(h=8, w=8), torch.ones(4), 8)
    with pytest.raises(ValueError, match="at least one"):
        affine_matrices((28, 28))
