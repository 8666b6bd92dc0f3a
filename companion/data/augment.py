r"""Batched image augmentations for self-supervised learning, run on the images' device.

Contrastive methods learn by matching two random **views** of the same image: SimCLR
(Chen et al., 2020) draws two transformations :math:`t, t' \sim \mathcal{T}` and pulls
:math:`z = f(t(x))` towards :math:`z' = f(t'(x))`. What the encoder learns to ignore is
what :math:`\mathcal{T}` changes, so the augmentations *are* the task definition; SimCLR's
Sec. 3 finds that random cropping composed with colour distortion matters most.

:func:`augment` transforms a whole batch ``(B, C, H, W)`` at once, every image with its
own random parameters, on whatever device the batch lives, and :func:`two_views` calls it
twice. Every random number comes from the ``torch.Generator`` you pass.

**Geometry is one matrix.** A random resized crop, an affine map (rotation, shear,
scale, translation) and a horizontal flip each move pixels; composed, they are still one
affine map, so each image is resampled once (every bilinear resampling blurs a 28x28 glyph
a little more). In the normalised coordinates of ``F.affine_grid`` (:math:`u \in
[-1, 1]^2`, :math:`x` to the right, :math:`y` down) the output pixel at :math:`u` reads the
input at :math:`\theta u`, with

.. math:: \theta = C \, A^{-1} \, F,

where :math:`F = \operatorname{diag}(\pm 1, 1)` flips, :math:`A` is the forward affine
map about the image centre (shear :math:`x' = x + y \tan\phi`, rotate counter-clockwise
by :math:`\alpha`, scale by :math:`s`, shift by :math:`(t_x, t_y)` pixels) and :math:`C`
maps the output onto the crop box (``top, left, height, width``) of the input:
:math:`x_\text{in} = \tfrac{w}{W} u_x + \tfrac{2\,\text{left} + w}{W} - 1`. Sampling
needs the *inverse* of the forward transformation, which is why :math:`A^{-1}` appears
(the crop is already written as a sampling map). :func:`affine_matrices` builds
:math:`\theta` from given parameters, :func:`random_affine_matrices` draws them, and
:func:`warp` resamples with ``F.affine_grid`` + ``F.grid_sample`` (bilinear, zeros
outside the image: paper for ink images).

**Elastic distortion for handwriting** (Simard et al., 2003, Sec. 2). Each image gets a
smooth random displacement field

.. math:: d = \alpha \, (G_\sigma * U), \qquad U_{ij} \sim \mathcal{U}(-1, 1)^2,

uniform noise per pixel smoothed by a Gaussian of width :math:`\sigma` pixels and scaled by
:math:`\alpha` pixels; strokes wobble as if drawn by another hand. Simard's MNIST values
(:math:`\alpha = 34`, :math:`\sigma = 4`: an rms shift of about 1.7 px per axis) are for
28x28 characters, the size used here. The field is applied to the output,
:math:`\text{out}(u) = \text{in}(\theta(u + d(u)))`, which is one more term in the same
sampling grid: still one resampling. We chose this over thickening and thinning strokes
with max- and min-pooling: on the 28x28 glyphs a 3x3 min-pool keeps only 13% of the ink
(strokes are 1-2 px wide, so whole strokes vanish) and a 3x3 max-pool doubles it, too
coarse a step to be a nuisance the encoder should ignore.

**Colour** (3-channel images; SimCLR's ``ColorJitter``, ``RandomGrayscale`` and
``GaussianBlur``, as torchvision defines them). With luma
:math:`Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601) and every result clipped to
:math:`[0, 1]`: brightness :math:`b x`; contrast :math:`c x + (1 - c) \bar{Y}` (the mean
luma of the image); saturation :math:`s x + (1 - s) Y`; hue turns the hue of HSV by a
fraction :math:`h` of the circle. Grayscale writes :math:`Y` to all three channels;
blur is a Gaussian of a random width. **One-channel images**: brightness, contrast and
blur apply as they are; saturation, hue and grayscale leave a gray image unchanged (it
has no colour), as in torchvision; other channel counts are rejected when a colour
operation is on.

**Randomness.** Parameters are drawn in float64 (the elastic noise in float32) on the
generator's device, then moved to the images' device and dtype. The same seed therefore
gives the same augmentations on the CPU and a GPU (with a CPU generator), for float32 and
float64 images, and a CUDA generator also works for CUDA images.

**Why plain PyTorch and not kornia.** torchvision is ruled out (it does not import
with this machine's CPU torch). kornia 0.9.0 works with torch 2.13, but its
augmentation classes draw from the global RNG and take no generator, so we would have
used only its functional ops with parameters drawn here. Those are each a few lines of
PyTorch: the warp is PyTorch's own ``F.affine_grid``/``F.grid_sample`` (no hand-written
interpolation), blur a separable convolution, and kornia's ``elastic_transform2d`` does
a resampling of its own, where folding the field into the affine grid saves one; its
``adjust_saturation`` scales S of HSV, not the blend with luma of torchvision's that
SimCLR used. kornia would add 31 MB (``kornia`` plus the compiled ``kornia_rs``), raise
the torch floor from 2.2 to 2.5.1, and hide the code the chapters show. The one piece
with real substance, RGB <-> HSV for hue, is tested against Python's ``colorsys`` (and
agreed with kornia's ``adjust_hue`` to 1e-8 when we compared them).

**Deviations from the torchvision pipelines of the papers**: crop boxes are continuous
(sub-pixel), since the crop is a warp anyway; the four jitter operations run in a fixed
order (torchvision shuffles it per image); the blur kernel reaches :math:`3\sigma` rather
than SimCLR's 10% of the image side (which would be 3 px on 32x32 CIFAR).

References: Chen et al., A Simple Framework for Contrastive Learning of Visual
Representations (SimCLR), ICML 2020, Sec. 3 and Appendix A; Simard, Steinkraus & Platt,
Best Practices for Convolutional Neural Networks Applied to Visual Document Analysis,
ICDAR 2003; Szegedy et al., Going Deeper with Convolutions, CVPR 2015 (the crop).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(8, 1, 28, 28)
    >>> x1, x2 = two_views(x, AugmentConfig.glyphs(), g)
    >>> x1.shape, bool((x1 != x2).any()), 0 <= float(x1.min()) <= float(x1.max()) <= 1
    (torch.Size([8, 1, 28, 28]), True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Range = tuple[float, float]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G, B in the luma ``Y`` (torchvision's ``rgb_to_grayscale``)."""


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations :func:`augment` applies, and how strongly.

    Every default leaves the images alone, so a config names only what it wants
    (``AugmentConfig(flip_p=0.5)`` only flips). The papers' recipes are the presets
    :meth:`glyphs` and :meth:`rgb`. Ranges are ``(low, high)``, sampled uniformly per
    image unless said otherwise.
    """

    # Geometry: composed into one affine map (plus the elastic field), one resampling.
    crop_scale: Range = (1.0, 1.0)  # crop area / image area; SimCLR: (0.08, 1.0)
    crop_ratio: Range = (3 / 4, 4 / 3)  # crop width / height, log-uniform (Inception)
    flip_p: float = 0.0  # probability of a horizontal flip; SimCLR: 0.5
    degrees: Range = (0.0, 0.0)  # rotation angle, counter-clockwise, in [-180, 180]
    translate: tuple[float, float] = (
        0.0,
        0.0,
    )  # max shift as a fraction of (width, height), in [0, 1]
    scale: Range = (1.0, 1.0)  # zoom about the centre (> 1 enlarges)
    shear: Range = (0.0, 0.0)  # x-shear angle phi in degrees: x' = x + y tan(phi)
    elastic_alpha: float = 0.0  # elastic displacement scale in pixels; Simard: 34
    elastic_sigma: float = 4.0  # smoothness of the elastic field in pixels; Simard: 4
    # Colour (torchvision's ColorJitter): factors in [max(0, 1 - v), 1 + v], hue in [-v, v].
    brightness: float = 0.0  # SimCLR CIFAR: 0.4 (ImageNet: 0.8)
    contrast: float = 0.0  # SimCLR CIFAR: 0.4 (ImageNet: 0.8)
    saturation: float = 0.0  # SimCLR CIFAR: 0.4 (ImageNet: 0.8)
    hue: float = 0.0  # fraction of the hue circle, at most 0.5; SimCLR CIFAR: 0.1
    jitter_p: float = 1.0  # probability that the jitter applies at all; SimCLR: 0.8
    grayscale_p: float = 0.0  # probability of grayscale; SimCLR: 0.2
    blur_p: float = 0.0  # probability of a Gaussian blur; SimCLR ImageNet: 0.5, CIFAR: 0
    blur_sigma: Range = (0.1, 2.0)  # blur width in pixels; SimCLR: (0.1, 2.0)

    def __post_init__(self) -> None:
        inf = math.inf
        _check_range("crop_scale", self.crop_scale, 0.0, 1.0, open_low=True)
        _check_range("crop_ratio", self.crop_ratio, 0.0, inf, open_low=True)
        _check_range("degrees", self.degrees, -180.0, 180.0)
        _check_range("scale", self.scale, 0.0, inf, open_low=True)
        _check_range("shear", self.shear, -90.0, 90.0, open_low=True, open_high=True)
        _check_range("blur_sigma", self.blur_sigma, 0.0, inf, open_low=True)
        _check_pair("translate", self.translate)
        if not all(0.0 <= t <= 1.0 for t in self.translate):
            raise ValueError(
                f"translate must be (max x shift, max y shift), each in [0, 1]; "
                f"got {self.translate!r}"
            )
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            _check_number(name, getattr(self, name), 0.0, 1.0, "a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation", "elastic_alpha"):
            _check_number(name, getattr(self, name), 0.0, inf, ">= 0")
        _check_number("hue", self.hue, 0.0, 0.5, "in [0, 0.5]")
        _check_number("elastic_sigma", self.elastic_sigma, 1e-12, inf, "> 0")

    @classmethod
    def glyphs(cls) -> AugmentConfig:
        """For 28x28 ink images (glyphs, Omniglot): crop, a small affine map, elastic.

        Deviations from SimCLR, and why: the crop keeps at least 60% of the area, since
        ImageNet's 8% would cut most characters down to a stroke fragment; no flip, since a
        mirrored character can be another character (and Omniglot benchmarks even use
        rotations as new classes, so rotations stay small); no colour, since there is one
        channel of ink. Elastic distortion is Simard et al.'s (2003) MNIST setting.
        """
        return cls(
            crop_scale=(0.6, 1.0),
            degrees=(-10.0, 10.0),
            translate=(0.1, 0.1),
            scale=(0.9, 1.1),
            shear=(-10.0, 10.0),
            elastic_alpha=34.0,
            elastic_sigma=4.0,
        )

    @classmethod
    def rgb(cls) -> AugmentConfig:
        """SimCLR's CIFAR-10 recipe (Chen et al., 2020, Appendix B.9): crop, flip, colour
        distortion of strength 0.5 (jitter 0.4, 0.4, 0.4, 0.1 with p = 0.8), grayscale with
        p = 0.2, and no blur (their ImageNet recipe adds blur with ``blur_p=0.5``)."""
        return cls(
            crop_scale=(0.08, 1.0),
            flip_p=0.5,
            brightness=0.4,
            contrast=0.4,
            saturation=0.4,
            hue=0.1,
            jitter_p=0.8,
            grayscale_p=0.2,
        )

    @property
    def moves_pixels(self) -> bool:
        """Whether any geometric operation is on (else :func:`augment` skips the warp)."""
        return (
            self.crop_scale != (1.0, 1.0)
            or self.flip_p > 0
            or self.degrees != (0.0, 0.0)
            or self.translate != (0.0, 0.0)
            or self.scale != (1.0, 1.0)
            or self.shear != (0.0, 0.0)
            or self.elastic_alpha > 0
        )


def augment(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment every image of a batch with its own random parameters.

    Order: geometry (crop, affine, flip and elastic field, one resampling), colour jitter
    (brightness, contrast, saturation, hue), grayscale, blur; then a clip to ``[0, 1]``.

    Args:
        x: images in ``[0, 1]``, floating point, on any device.
        config: the operations and their strengths.
        generator: the source of every random number (CPU or the images' device).

    Shape:
        - x: ``(B, C, H, W)``, ``C`` = 1 or 3 when a colour operation is on
        - returns: ``(B, C, H, W)``, same dtype and device as ``x``
    """
    _check_images(x)
    if not isinstance(config, AugmentConfig):
        raise TypeError(f"config must be an AugmentConfig; got {type(config).__name__}")
    _check_generator(generator)
    b, c, h, w = x.shape
    colour_on = (config.brightness, config.contrast, config.saturation, config.hue) != (0,) * 4
    if (colour_on or config.grayscale_p > 0) and c not in (1, 3):
        raise ValueError(f"colour operations need 1 or 3 channels; got images {tuple(x.shape)}")

    if config.moves_pixels:
        theta = random_affine_matrices(b, (h, w), config, generator, device=x.device, dtype=x.dtype)
        field = None
        if config.elastic_alpha > 0:
            alpha, sigma = config.elastic_alpha, config.elastic_sigma
            field = elastic_field(
                b, (h, w), alpha, sigma, generator, device=x.device, dtype=x.dtype
            )
        x = warp(x, theta, field)

    if colour_on:
        on = _bernoulli(b, config.jitter_p, generator, x)  # (B,) bool
        y = x
        if config.brightness > 0:
            y = adjust_brightness(y, _factors(b, config.brightness, generator, x))
        if config.contrast > 0:
            y = adjust_contrast(y, _factors(b, config.contrast, generator, x))
        if config.saturation > 0:
            y = adjust_saturation(y, _factors(b, config.saturation, generator, x))
        if config.hue > 0:
            y = adjust_hue(y, _uniform(generator, -config.hue, config.hue, b).to(x))
        x = torch.where(on[:, None, None, None], y, x)
    if config.grayscale_p > 0:
        on = _bernoulli(b, config.grayscale_p, generator, x)
        x = torch.where(on[:, None, None, None], rgb_to_grayscale(x).expand_as(x), x)
    if config.blur_p > 0:
        on = _bernoulli(b, config.blur_p, generator, x)
        sigma = _uniform(generator, *config.blur_sigma, b).to(x)
        radius = min(math.ceil(3 * config.blur_sigma[1]), h - 1, w - 1)
        x = torch.where(on[:, None, None, None], gaussian_blur(x, sigma, radius), x)
    return x.clamp(0.0, 1.0)


def two_views(
    x: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations of the same batch, SimCLR's ``t(x), t'(x)``.

    For asymmetric views (BYOL blurs one view more than the other) call :func:`augment`
    twice with two configs.

    Shape:
        - x: ``(B, C, H, W)``
        - returns: two tensors ``(B, C, H, W)``
    """
    return augment(x, config, generator), augment(x, config, generator)


# --- geometry --------------------------------------------------------------------------


def sample_crop_boxes(
    batch: int,
    size: tuple[int, int],
    scale: Range,
    ratio: Range,
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """Random resized crop boxes, as torchvision's ``RandomResizedCrop`` draws them.

    Each image tries ``attempts`` boxes of area ``U(scale) * H * W`` and aspect ratio
    ``w / h`` log-uniform in ``ratio``, keeps the first that fits, and falls back to the
    largest centred box with a ratio in range. Boxes are continuous (not rounded to
    pixels) and placed uniformly inside the image.

    Shape:
        - returns: ``(batch, 4)`` float64 ``(top, left, height, width)`` in pixels, on the
          generator's device
    """
    h_img, w_img = size
    area = _uniform(generator, *scale, batch, attempts) * (h_img * w_img)  # (B, A)
    log_r = _uniform(generator, math.log(ratio[0]), math.log(ratio[1]), batch, attempts)
    w = torch.sqrt(area * log_r.exp())
    h = torch.sqrt(area / log_r.exp())
    fits = (w <= w_img) & (h <= h_img)  # (B, A)
    first = fits.to(torch.uint8).argmax(1, keepdim=True)  # index of the first fit (0 if none)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]  # (B,)
    in_ratio = w_img / h_img  # fallback: a centred box, as large as the ratio range allows
    if in_ratio < ratio[0]:
        w_fb, h_fb = w_img, w_img / ratio[0]
    elif in_ratio > ratio[1]:
        w_fb, h_fb = h_img * ratio[1], h_img
    else:
        w_fb, h_fb = w_img, h_img
    found = fits.any(1)
    w = torch.where(found, w, torch.full_like(w, w_fb))
    h = torch.where(found, h, torch.full_like(h, h_fb))
    position = _uniform(generator, 0.0, 1.0, batch, 2)  # where in the free space
    top, left = position[:, 0] * (h_img - h), position[:, 1] * (w_img - w)
    top = torch.where(found, top, (h_img - h) / 2)
    left = torch.where(found, left, (w_img - w) / 2)
    return torch.stack([top, left, h, w], 1)


def affine_matrices(
    size: tuple[int, int],
    *,
    boxes: torch.Tensor | None = None,
    angle: torch.Tensor | None = None,
    translate: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shear: torch.Tensor | None = None,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The sampling matrices :math:`\theta = C A^{-1} F` of ``F.affine_grid``.

    Crop to ``boxes``; then, about the centre, shear (:math:`x' = x + y
    \tan(\text{shear})`, degrees), rotate by ``angle`` degrees counter-clockwise, scale by
    ``scale`` and shift by ``translate`` pixels (right, down); then flip where ``flip`` is
    true.
    Parameters left ``None`` are the identity; at least one must be given.

    Args:
        size: ``(H, W)`` of the images.

    Shape:
        - boxes: ``(B, 4)`` ``(top, left, height, width)`` in pixels
        - angle, scale, shear: ``(B,)``; translate: ``(B, 2)``; flip: ``(B,)`` bool
        - returns: ``(B, 2, 3)``, dtype and device of the first parameter given (float64
          for a bool ``flip`` alone)
    """
    given = [p for p in (boxes, angle, translate, scale, shear, flip) if p is not None]
    if not given:
        raise ValueError(
            "affine_matrices needs at least one of boxes, angle, translate, scale, shear, flip"
        )
    b, device = given[0].shape[0], given[0].device
    dtype = given[0].dtype if given[0].is_floating_point() else torch.float64
    h_img, w_img = size

    def param(p: torch.Tensor | None, default: float) -> torch.Tensor:
        if p is None:
            return torch.full((b,), default, dtype=torch.float64, device=device)
        return p.to(device=device, dtype=torch.float64)

    eye = torch.eye(3, dtype=torch.float64, device=device).repeat(b, 1, 1)  # (B, 3, 3)
    crop = eye.clone()
    if boxes is not None:
        top, left, h, w = param(boxes, 0.0).unbind(1)
        crop[:, 0, 0], crop[:, 0, 2] = w / w_img, (2 * left + w) / w_img - 1
        crop[:, 1, 1], crop[:, 1, 2] = h / h_img, (2 * top + h) / h_img - 1
    # Inverse of the forward map p -> s R(angle) Shear p + t, in pixels about the centre:
    # p = Shear^-1 R(-angle) (p' - t) / s.
    a = torch.deg2rad(param(angle, 0.0))
    rot_inv = eye[:, :2, :2].clone()
    rot_inv[:, 0, 0], rot_inv[:, 0, 1] = torch.cos(a), -torch.sin(a)
    rot_inv[:, 1, 0], rot_inv[:, 1, 1] = torch.sin(a), torch.cos(a)
    shear_inv = eye[:, :2, :2].clone()
    shear_inv[:, 0, 1] = -torch.tan(torch.deg2rad(param(shear, 0.0)))
    m_inv = shear_inv @ rot_inv / param(scale, 1.0)[:, None, None]  # (B, 2, 2)
    t = torch.zeros(b, 2, dtype=torch.float64, device=device)
    if translate is not None:
        t = translate.to(device=device, dtype=torch.float64)
    half = torch.tensor([w_img / 2, h_img / 2], dtype=torch.float64, device=device)
    affine_inv = eye.clone()  # the same map in normalised coordinates: S^-1 M^-1 S, S = half
    affine_inv[:, :2, :2] = m_inv * half / half[:, None]
    affine_inv[:, :2, 2] = -(m_inv @ t[:, :, None])[:, :, 0] / half
    mirror = eye.clone()
    if flip is not None:
        mirror[:, 0, 0] = 1 - 2 * flip.to(device=device, dtype=torch.float64)
    return (crop @ affine_inv @ mirror)[:, :2].to(dtype)


def random_affine_matrices(
    batch: int,
    size: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-image random crop, affine map and flip of ``config``, as one matrix each.

    Always draws the same random numbers, whatever is switched on.

    Args:
        device: where the matrices go (default: the generator's device).

    Shape:
        - returns: ``(batch, 2, 3)`` sampling matrices for :func:`warp`
    """
    _check_generator(generator)
    h, w = size
    boxes = sample_crop_boxes(batch, size, config.crop_scale, config.crop_ratio, generator)
    flip = _uniform(generator, 0.0, 1.0, batch) < config.flip_p
    angle = _uniform(generator, *config.degrees, batch)
    shift = _uniform(generator, -1.0, 1.0, batch, 2)
    shift = shift * shift.new_tensor([config.translate[0] * w, config.translate[1] * h])
    scale = _uniform(generator, *config.scale, batch)
    shear = _uniform(generator, *config.shear, batch)
    theta = affine_matrices(
        size, boxes=boxes, angle=angle, translate=shift, scale=scale, shear=shear, flip=flip
    )
    return theta.to(device=generator.device if device is None else device, dtype=dtype)


def elastic_field(
    batch: int,
    size: tuple[int, int],
    alpha: float,
    sigma: float,
    generator: torch.Generator,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""Simard et al.'s (2003) elastic displacement field :math:`\alpha (G_\sigma * U)`.

    Args:
        alpha: scale of the displacement, in pixels.
        sigma: width of the Gaussian that smooths the noise, in pixels (the kernel reaches
            :math:`3\sigma`, at most the image side less one, with reflected borders).
        device: where the field goes (default: the generator's device).

    Shape:
        - returns: ``(batch, 2, H, W)`` displacements ``(dx, dy)`` in pixels
    """
    _check_generator(generator)
    h, w = size
    # float32 noise whatever the dtype: it is smoothed anyway, and float64 would double
    # the cost of the biggest draw here without changing the field in any way that matters.
    noise = _uniform(generator, -1.0, 1.0, batch, 2, h, w, dtype=torch.float32)
    noise = noise.to(device=generator.device if device is None else device, dtype=dtype)
    radius = min(math.ceil(3 * sigma), h - 1, w - 1)
    return alpha * gaussian_blur(noise, noise.new_full((batch,), sigma), radius)


def warp(x: torch.Tensor, theta: torch.Tensor, field: torch.Tensor | None = None) -> torch.Tensor:
    r"""Resample images: ``out(u) = x(theta (u + field(u)))``, bilinear, zeros outside.

    ``theta`` is a sampling matrix in ``F.affine_grid``'s normalised coordinates
    (``align_corners=False``); ``field`` an optional displacement in output pixels (as
    from :func:`elastic_field`), mapped through the linear part of ``theta`` so that it
    distorts the output and joins the same sampling grid.

    Shape:
        - x: ``(B, C, H, W)``
        - theta: ``(B, 2, 3)``
        - field: ``(B, 2, H, W)`` ``(dx, dy)`` in pixels
        - returns: ``(B, C, H, W)``
    """
    _check_images(x)
    b, _, h, w = x.shape
    if theta.shape != (b, 2, 3):
        raise ValueError(
            f"theta must have shape ({b}, 2, 3) for images {tuple(x.shape)}; "
            f"got {tuple(theta.shape)}"
        )
    theta = theta.to(x)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2)
    if field is not None:
        if field.shape != (b, 2, h, w):
            raise ValueError(f"field must have shape ({b}, 2, {h}, {w}); got {tuple(field.shape)}")
        d = field.to(x).permute(0, 2, 3, 1) * x.new_tensor([2 / w, 2 / h])  # (B, H, W, 2)
        grid = grid + torch.einsum("bij,bhwj->bhwi", theta[:, :, :2], d)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# --- colour ----------------------------------------------------------------------------


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601); a gray image is its own.

    Shape:
        - x: ``(B, C, H, W)`` with ``C`` = 3 (RGB) or 1
        - returns: ``(B, 1, H, W)``
    """
    _check_images(x)
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_grayscale needs 1 or 3 channels; got {tuple(x.shape)}")
    weights = x.new_tensor(LUMA_WEIGHTS)
    return torch.einsum("bchw,c->bhw", x, weights)[:, None]


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x``, clipped to ``[0, 1]``.

    Shape:
        - x: ``(B, C, H, W)``; factor: ``(B,)``; returns: ``(B, C, H, W)``
    """
    return _blend(x, torch.zeros_like(x), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * mean luma``, clipped: ``factor = 0`` is flat gray.

    Shape:
        - x: ``(B, C, H, W)`` with ``C`` = 1 or 3; factor: ``(B,)``; returns: like ``x``
    """
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(x, mean.expand_as(x), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * luma``, clipped: ``factor = 0`` is grayscale.

    Shape:
        - x: ``(B, C, H, W)`` with ``C`` = 1 (returned unchanged) or 3; factor: ``(B,)``
        - returns: like ``x``
    """
    gray = rgb_to_grayscale(x)
    if gray is x:  # one channel: no colour to change
        return x
    return _blend(x, gray.expand_as(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn the hue (of HSV) by ``shift`` of the full circle, e.g. 0.5 is the opposite hue.

    Shape:
        - x: ``(B, C, H, W)`` with ``C`` = 1 (returned unchanged) or 3; shift: ``(B,)``
        - returns: like ``x``
    """
    if rgb_to_grayscale(x) is x:
        return x
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + shift.to(x)[:, None, None], 1.0)
    return _hsv_to_rgb(h, s, v)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int | None = None) -> torch.Tensor:
    """Blur each image with its own Gaussian, as two 1-D passes, reflected borders.

    Args:
        x: images.
        sigma: standard deviation of each image's Gaussian, in pixels.
        radius: the kernel spans ``2 * radius + 1`` pixels (default ``ceil(3 max sigma)``);
            less than the image's height and width.

    Shape:
        - x: ``(B, C, H, W)``; sigma: ``(B,)``; returns: ``(B, C, H, W)``
    """
    _check_images(x)
    b, c, h, w = x.shape
    sigma = sigma.to(x)
    if radius is None:
        radius = math.ceil(3 * float(sigma.max()))
    if not 0 <= radius < min(h, w):
        raise ValueError(
            f"radius must be in [0, {min(h, w) - 1}] for images {tuple(x.shape)}; got {radius}"
        )
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma[:, None]) ** 2)  # (B, K)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    y = x.reshape(1, b * c, h, w)  # one group per image and channel
    y = F.conv2d(
        F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c
    )
    y = F.conv2d(
        F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c
    )
    return y.reshape(b, c, h, w)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.to(x)[:, None, None, None]
    return (f * x + (1 - f) * other).clamp(0.0, 1.0)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``colorsys.rgb_to_hsv`` on whole images: three ``(B, H, W)`` in ``[0, 1]``."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``colorsys.hsv_to_rgb`` on whole images: ``(B, H, W)`` each to ``(B, 3, H, W)``.

    Closed form of colorsys's six sectors: channel ``n`` (5 for R, 3 for G, 1 for B) is
    ``v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``.
    """
    n = h.new_tensor([5.0, 3.0, 1.0])[:, None, None]  # (3, 1, 1)
    k = torch.remainder(n + 6.0 * h[:, None], 6.0)  # (B, 3, H, W)
    return v[:, None] * (1 - s[:, None] * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))


# --- randomness and checks -------------------------------------------------------------


def _uniform(
    generator: torch.Generator,
    low: float,
    high: float,
    *shape: int,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``U(low, high)`` on the generator's device, float64 unless asked otherwise."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=dtype)
    return low + (high - low) * u


def _bernoulli(
    batch: int, p: float, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """Which images an operation of probability ``p`` applies to: ``(batch,)`` bool."""
    return (_uniform(generator, 0.0, 1.0, batch) < p).to(like.device)


def _factors(
    batch: int, strength: float, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """ColorJitter's factors, ``U(max(0, 1 - strength), 1 + strength)``, ``(batch,)``."""
    return _uniform(generator, max(0.0, 1.0 - strength), 1.0 + strength, batch).to(like)


def _check_images(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor; got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"images must have shape (B, C, H, W); got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1]; got {x.dtype}")


def _check_generator(generator: object) -> None:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_pair(name: str, value: object) -> None:
    if not (isinstance(value, tuple) and len(value) == 2 and all(map(_is_number, value))):
        raise TypeError(f"{name} must be a tuple of two numbers; got {value!r}")


def _check_range(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    _check_pair(name, value)
    a, b = value  # type: ignore[misc]
    low_ok = a > low if open_low else a >= low
    high_ok = b < high if open_high else b <= high
    if not (low_ok and a <= b and high_ok):
        rule = f"{low:g} {'<' if open_low else '<='} low <= high {'<' if open_high else '<='} "
        raise ValueError(f"{name} must be (low, high) with {rule}{high:g}; got {value!r}")


def _check_number(name: str, value: object, low: float, high: float, allowed: str) -> None:
    if not _is_number(value):
        raise TypeError(f"{name} must be a number; got {value!r}")
    if not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
