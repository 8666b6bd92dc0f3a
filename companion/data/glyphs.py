"""Glyphs: a procedural Omniglot-like few-shot dataset, generated in seconds.

Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015, *Human-level concept learning through
probabilistic program induction*, Science 350:1332) holds 1,623 characters from 50
alphabets, each drawn once by 20 people. Its few-shot question: after *one* drawing of a
new character, can you recognise other people's drawings of it? Lake et al. answered with
a generative model in which a character is a small *program* (a few strokes, each a spline
through control points, with parts reused across an alphabet) and a drawing is that
program run with motor noise. This module is a toy version of that model, so the book
runs with no download:

1. **Alphabet style** (:class:`AlphabetStyle`, sampled per alphabet): how many strokes and
   control points are typical, how sharply strokes turn, angular (polylines on a 45 degree
   heading grid, like runes) or curved, how often strokes close into loops, add a dot or
   start on an earlier stroke, a slant, an aspect ratio, a pen width, and a *library* of
   stroke shapes that the alphabet's characters reuse (its family resemblance).
2. **Character**: 1 to 4 strokes, each a random walk of 2 to 5 control points (or a loop,
   a dot, or a library stroke), fitted into a box of side ``extent``.
3. **Drawing** (the 20 "people"; the jitter fields of :class:`GlyphConfig`): every control
   point moves by ``point_noise``, every stroke by ``stroke_shift``, then a random affine
   map (``rotation``, per-axis ``scale``, ``shear``, ``translate``) and pen width.
4. **Rendering**: each stroke is a Catmull-Rom spline (a polyline if angular) through its
   control points, cut into short pieces with midpoints ``m_q`` and lengths ``l_q``. A
   Gaussian pen tip of size ``sigma`` leaves the ink density

   ``D(u) = sum_q l_q exp(-|u - m_q|^2 / 2 sigma^2) / (sqrt(2 pi) sigma)``,

   which is ``exp(-d^2 / 2 sigma^2)`` at distance ``d`` from a long straight stroke. The
   exponential separates in ``x`` and ``y``, so an image is one matrix product
   ``G_y^T diag(l) G_x``. Ink saturates: ``ink = min(1, exp(w^2 / 2 sigma^2) D / 2)`` is
   1/2 exactly at distance ``w`` (the pen's half-width), 1 inside, and fades smoothly
   outside: anti-aliased by construction.

Lengths are in frame units (the image is ``[0, 1]^2``), so ``image_size`` only changes the
sampling grid (below ~25 pixels the pen tip widens to half a pixel so that it still
anti-aliases). Alphabet ``k`` of seed ``s`` has its own ``torch.Generator`` seeded from
``(s, k)``: it is the same whichever split loads it, and drawing ``d`` is the same whatever
``drawings`` asks for. Splits are by alphabet, as in Omniglot's background and evaluation
sets, so test characters come from alphabets never seen in training. As on Omniglot, raw
pixels are a weak metric: 1-nearest-neighbour in pixel space is far behind a Conv-4
ProtoNet trained for a few CPU minutes (chapters 1 and 2 measure both).

Example:
    >>> data = load_glyphs("test", alphabets=1, drawings=2)
    >>> data.images.shape[1:], data.class_names[0]
    (torch.Size([1, 28, 28]), 'alphabet40/char00')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from companion.data.base import ImageDataset

GLYPH_SPLITS: dict[str, range] = {
    "train": range(0, 30),  # 30 alphabets, like Omniglot's background set
    "val": range(30, 40),
    "test": range(40, 55),
    "all": range(0, 55),  # every alphabet (self-supervised training, probes)
}
"""Alphabet ids of each split; ``train``, ``val`` and ``test`` are disjoint."""


@dataclass(frozen=True)
class GlyphConfig:
    """Sizes of the generator and the per-drawing jitter; lengths are in frame units."""

    characters: tuple[int, int] = (20, 40)  # characters per alphabet, uniform (Omniglot ~30)
    max_strokes: int = 4  # a character has 1..max_strokes strokes
    max_points: int = 5  # a stroke has 2..max_points control points
    library: int = 6  # stroke shapes an alphabet reuses across its characters
    extent: float = 0.64  # a character's longer side before jitter (~18 px of 28)
    samples: int = 20  # pieces per spline span: keeps pieces shorter than ~2 sigma
    sigma: float = 0.02  # Gaussian pen tip (0.56 px at 28x28): the anti-aliasing ramp
    width: float = 0.042  # mean pen half-width (1.2 px at 28); alphabets scale it 0.8-1.25x
    point_noise: float = 0.045  # std of each control point's displacement (motor noise)
    stroke_shift: float = 0.05  # std of each whole stroke's displacement
    rotation: float = 10.0  # rotation, uniform in +-rotation degrees
    scale: float = 0.15  # scale per axis, uniform in 1 +- scale
    shear: float = 0.15  # shear, uniform in +-shear
    translate: float = 0.08  # translation per axis, uniform in +-translate (~2 px at 28)
    width_jitter: float = 0.25  # pen half-width times uniform 1 +- width_jitter


@dataclass(frozen=True)
class AlphabetStyle:
    """What makes one alphabet look unlike another; sampled by :func:`alphabet_style`."""

    strokes: float  # P(each extra stroke), so 1 + Binomial(max_strokes - 1, strokes)
    points: float  # P(each extra control point), so 2 + Binomial(max_points - 2, points)
    angular: bool  # headings snapped to multiples of 45 degrees (runes vs. cursive)
    straight: float  # P(a stroke is a polyline rather than a smooth spline)
    turn: float  # std of the heading change between control points, radians
    step: float  # mean distance between control points, before fitting into the frame
    loop: float  # P(a stroke is a closed loop)
    dot: float  # P(a later stroke is a dot)
    connect: float  # P(a later stroke starts on a control point of an earlier one)
    reuse: float  # P(a stroke is copied from the alphabet's library)
    slant: float  # shear applied to every character of the alphabet
    aspect: float  # width / height of the characters
    width: float  # pen half-width


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def alphabet_style(g: torch.Generator, config: GlyphConfig = GlyphConfig()) -> AlphabetStyle:
    """Sample an alphabet's style (the ranges here are the generator's design choices)."""
    u = [float(x) for x in torch.rand(13, generator=g)]
    angular = u[2] < 0.35
    return AlphabetStyle(
        strokes=0.2 + 0.4 * u[0], points=0.3 + 0.5 * u[1], angular=angular,
        straight=0.9 if angular else 0.4 * u[3], turn=0.6 + 1.0 * u[4],
        step=0.25 + 0.2 * u[5], loop=0.25 * u[6], dot=0.2 * u[7], connect=0.3 + 0.6 * u[8],
        reuse=0.2 + 0.5 * u[9], slant=0.5 * (u[10] - 0.5), aspect=0.75 + 0.5 * u[11],
        width=config.width * (0.8 + 0.45 * u[12]),
    )  # fmt: skip


def _strokes(g: torch.Generator, n: int, style: AlphabetStyle, config: GlyphConfig):
    """``n`` strokes from the origin: points (n, P, 2); per stroke k, loop, straight (n,).

    Only the first ``k`` points count (later ones become copies of point ``k - 1``); a loop
    uses all P and ends where it starts. Every random number is drawn whatever the flags,
    so the random stream never depends on them.
    """
    P = config.max_points
    k = 2 + (torch.rand(n, P - 2, generator=g) < style.points).sum(1)  # (n,)
    turns = torch.randn(n, P - 1, generator=g) * style.turn
    heading = _uniform(g, 0, 2 * math.pi, n, 1) + turns.cumsum(1)  # (n, P-1)
    if style.angular:
        heading = torch.round(heading / (math.pi / 4)) * (math.pi / 4)
    length = style.step * _uniform(g, 0.6, 1.4, n, P - 1)
    steps = length[..., None] * torch.stack((heading.cos(), heading.sin()), -1)  # (n, P-1, 2)
    walk = torch.cat((torch.zeros(n, 1, 2), steps.cumsum(1)), 1)  # (n, P, 2)
    angle = _uniform(g, 0, 2 * math.pi, n, 1) + torch.arange(P) * (2 * math.pi / (P - 1))
    radii = style.step * _uniform(g, 0.4, 0.9, n, 1, 2) * _uniform(g, 0.8, 1.2, n, P, 1)
    ellipse = radii * torch.stack((angle.cos(), angle.sin()), -1)  # (n, P, 2)
    loop = torch.rand(n, generator=g) < style.loop
    straight = torch.rand(n, generator=g) < style.straight
    points = torch.where(loop[:, None, None], ellipse - ellipse[:, :1], walk)
    return points, torch.where(loop, P, k), loop, straight


def _characters(g: torch.Generator, style: AlphabetStyle, config: GlyphConfig, n: int):
    """``n`` characters: control points (n, S, P, 2) in the frame, the source index of each
    point (n, S, P) (padding repeats a point, a loop's last point is its first) and the
    loop and straight flags of each stroke (n, S)."""
    S, P = config.max_strokes, config.max_points
    library = _strokes(g, config.library, style, config)
    pts, k, loop, straight = (x.view(n, S, *x.shape[1:]) for x in _strokes(g, n * S, style, config))
    pick = torch.randint(config.library, (n, S), generator=g)
    reuse = torch.rand(n, S, generator=g) < style.reuse
    borrowed = library[0][pick] * _uniform(g, 0.7, 1.1, n, S, 1, 1)  # at 70-110% size
    pts = torch.where(reuse[..., None, None], borrowed, pts)
    k, loop, straight = (
        torch.where(reuse, theirs[pick], ours)
        for theirs, ours in zip(library[1:], (k, loop, straight), strict=True)
    )
    strokes = 1 + (torch.rand(n, S - 1, generator=g) < style.strokes).sum(1, keepdim=True)
    used = torch.arange(S) < strokes  # (n, S)
    k[:, 0] = torch.where(strokes[:, 0] == 1, k[:, 0].clamp(min=3), k[:, 0])  # no lone dash
    dot = (torch.rand(n, S, generator=g) < style.dot) & (torch.arange(S) > 0) & used
    # Where each stroke starts: anywhere, or on a control point of an earlier stroke.
    start = _uniform(g, 0, 3 * style.step, n, S, 2)
    connect = torch.rand(n, S, generator=g) < style.connect
    earlier, spot = torch.rand(n, S, generator=g), torch.rand(n, S, generator=g)
    rows = torch.arange(n)
    for s in range(1, S):
        j = (earlier[:, s] * s).long()  # an earlier stroke
        p = (spot[:, s] * k[rows, j]).long()  # one of its control points
        on_it = pts[rows, j, p] + start[rows, j]
        start[:, s] = torch.where(connect[:, s, None], on_it, start[:, s])
    pts = pts + start[:, :, None]
    # Slant, then fit the inked (used, non-dot) points into a box of side `extent`.
    pts = torch.stack((style.aspect * (pts[..., 0] + style.slant * pts[..., 1]), pts[..., 1]), -1)
    inked = ((used & ~dot)[..., None] & (torch.arange(P) < k[..., None]))[..., None]
    lo = torch.where(inked, pts, math.inf).amin((1, 2))  # (n, 2)
    hi = torch.where(inked, pts, -math.inf).amax((1, 2))
    size = (hi - lo).amax(1).clamp_min(1e-6)[:, None, None, None]
    pts = (pts - (lo + hi)[:, None, None] / 2) * (config.extent / size) + 0.5
    # A dot is a short dash anywhere in the character's box.
    place = 0.5 + config.extent * _uniform(g, -0.5, 0.5, n, S, 1, 2)
    dash = torch.zeros(P, 2)
    dash[1:, 0] = 0.6 * style.width
    pts = torch.where(dot[..., None, None], place + dash, pts)
    k, loop = torch.where(dot, 2, k), loop & ~dot
    src = torch.minimum(torch.arange(P), k[..., None] - 1)  # padding repeats point k - 1
    src = torch.where(loop[..., None] & (torch.arange(P) == P - 1), 0, src)  # close loops
    src = torch.where(used[..., None], src, 0)  # an unused stroke is a single point
    return pts.gather(2, src[..., None].expand(-1, -1, -1, 2)), src, loop, straight


def _drawing(g: torch.Generator, pts: torch.Tensor, src: torch.Tensor, width: float,
             config: GlyphConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One drawing of every character: control points (n, S, P, 2), pen half-widths (n,)."""
    n = pts.shape[0]
    width = width * (1 + config.width_jitter * _uniform(g, -1, 1, n))
    noise = config.point_noise * torch.randn(pts.shape, generator=g)
    noise = noise + config.stroke_shift * torch.randn(n, pts.shape[1], 1, 2, generator=g)
    pts = (pts + noise).gather(2, src[..., None].expand(-1, -1, -1, 2))  # copies stay copies
    angle = math.radians(config.rotation) * _uniform(g, -1, 1, n)
    cos, sin = angle.cos(), angle.sin()
    scale = 1 + config.scale * _uniform(g, -1, 1, n, 2)
    shear = config.shear * _uniform(g, -1, 1, n)
    # A = rotation @ [[1, shear], [0, 1]] @ diag(scale)
    a = torch.stack((cos, cos * shear - sin, sin, sin * shear + cos), -1).view(n, 2, 2)
    a = a * scale[:, None, :]
    shift = config.translate * _uniform(g, -1, 1, n, 2)
    return torch.einsum("nij,nspj->nspi", a, pts - 0.5) + 0.5 + shift[:, None, None], width


def _pieces(pts: torch.Tensor, src: torch.Tensor, loop: torch.Tensor, straight: torch.Tensor,
            samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut every stroke into pieces: midpoints (..., Q, 2) and lengths (..., Q).

    A span between two copies of one point (same ``src``) gets length exactly 0; rounding
    in the spline would leave ~1e-8 and stray ink where the copies are.
    """
    before = torch.where(loop[..., None], pts[..., -2, :], pts[..., 0, :])  # a loop wraps
    after = torch.where(loop[..., None], pts[..., 1, :], pts[..., -1, :])  # around
    padded = torch.cat((before[..., None, :], pts, after[..., None, :]), -2)  # (..., P+2, 2)
    windows = padded.unfold(-2, 4, 1)  # (..., P-1, 2, 4): the 4 points that shape a span
    t = torch.linspace(0, 1, samples + 1)
    catmull_rom = 0.5 * torch.stack(
        (-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, t**3 - t**2), -1
    )  # (K+1, 4)
    linear = torch.stack((0 * t, 1 - t, t, 0 * t), -1)
    smooth = torch.einsum("...cf,kf->...kc", windows, catmull_rom)  # (..., P-1, K+1, 2)
    polyline = torch.einsum("...cf,kf->...kc", windows, linear)
    curve = torch.where(straight[..., None, None, None], polyline, smooth)
    mid = (curve[..., 1:, :] + curve[..., :-1, :]) / 2
    step = curve[..., 1:, :] - curve[..., :-1, :]
    length = torch.hypot(step[..., 0], step[..., 1])  # (..., P-1, K)
    length = length * (src[..., 1:] != src[..., :-1])[..., None]
    return mid.flatten(-4, -2), length.flatten(-3)


def render(mid: torch.Tensor, length: torch.Tensor, width: torch.Tensor, image_size: int,
           sigma: float) -> torch.Tensor:
    """Ink of a Gaussian pen along the pieces (the module docstring's equation).

    Shape:
        - mid: ``(N, Q, 2)`` piece midpoints ``(x, y)`` in ``[0, 1]``, ``y`` pointing down
        - length: ``(N, Q)`` piece lengths; width: ``(N,)`` pen half-widths
        - returns: ``(N, image_size, image_size)`` ink in ``[0, 1]``
    """
    centres = (torch.arange(image_size, dtype=mid.dtype, device=mid.device) + 0.5) / image_size
    root2_sigma = math.sqrt(2) * sigma

    def tip(x: torch.Tensor) -> torch.Tensor:  # exp(-x^2 / 2 sigma^2), cut to 0 at 5.7 sigma
        # The cut keeps tiny (denormal) floats, which slow CPUs down ~50x, out of the product.
        z = (centres / root2_sigma - x / root2_sigma).square_().clamp_(max=16.0)
        return z.neg_().exp_().sub_(math.exp(-16.0)).clamp_(min=0.0)

    gx, gy = tip(mid[..., 0:1]), tip(mid[..., 1:2])  # (N, Q, W), (N, Q, H)
    gy = gy * (length / (math.sqrt(2 * math.pi) * sigma))[..., None]
    density = gy.transpose(1, 2) @ gx  # (N, H, W)
    gain = 0.5 * torch.exp(width**2 / (2 * sigma**2))
    return (gain[:, None, None] * density).clamp_(max=1.0)


def draw_alphabet(alphabet: int, *, seed: int = 0, drawings: int = 20, image_size: int = 28,
                  config: GlyphConfig = GlyphConfig()) -> torch.Tensor:
    """All drawings of one alphabet's characters, ink = 1.

    Shape:
        - returns: ``(C, drawings, image_size, image_size)``, ``C`` from ``config.characters``
    """
    g = torch.Generator().manual_seed(seed * 1000 + alphabet)  # unique while alphabet < 1000
    style = alphabet_style(g, config)
    n = int(torch.randint(config.characters[0], config.characters[1] + 1, (), generator=g))
    pts, src, loop, straight = _characters(g, style, config, n)
    drawn = [_drawing(g, pts, src, style.width, config) for _ in range(drawings)]
    per_drawing = torch.stack([p for p, _ in drawn], 1)  # (n, D, S, P, 2)
    widths = torch.stack([w for _, w in drawn], 1).flatten()  # (N,) with N = n * D
    mid, length = _pieces(per_drawing, src[:, None], loop[:, None], straight[:, None],
                          config.samples)
    mid, length = mid.flatten(0, 1), length.flatten(0, 1)  # (N, Q, 2), (N, Q)
    sigma = max(config.sigma, 0.5 / image_size)  # at least half a pixel, or small sizes alias
    # Keep the ink inside the frame: shrink about the centre if too big, then shift.
    margin = (widths + 3 * sigma)[:, None]  # (N, 1); ink there is < 1%
    has_ink = (length > 0)[..., None]
    lo = torch.where(has_ink, mid, math.inf).amin(1)  # (N, 2)
    hi = torch.where(has_ink, mid, -math.inf).amax(1)
    shrink = ((1 - 2 * margin) / (hi - lo).amax(1, keepdim=True)).clamp(max=1.0)  # (N, 1)
    centre = (lo + hi) / 2
    lo, hi = (lo - centre) * shrink + centre, (hi - centre) * shrink + centre
    shift = (margin - lo).clamp(min=0) - (hi - (1 - margin)).clamp(min=0)
    mid = (mid - centre[:, None]) * shrink[:, None] + (centre + shift)[:, None]
    length = length * shrink
    chunk = max(1, 2**22 // (mid.shape[1] * image_size))  # ~16 MB per (chunk, Q, W) tensor
    images = [
        render(mid[i : i + chunk], length[i : i + chunk], widths[i : i + chunk], image_size, sigma)
        for i in range(0, len(mid), chunk)
    ]
    return torch.cat(images).view(n, drawings, image_size, image_size)


def load_glyphs(split: str = "train", *, image_size: int = 28, seed: int = 0,
                drawings: int = 20, alphabets: int | None = None) -> ImageDataset:
    """Generate a split of the glyphs dataset (see the module docstring).

    Args:
        split: ``"train"``, ``"val"``, ``"test"`` (disjoint alphabets) or ``"all"``.
        image_size: side of the square images, at least 8.
        seed: which universe of alphabets; the same seed always gives the same images.
        drawings: drawings per character (Omniglot has 20).
        alphabets: keep only the first ``alphabets`` alphabets of the split.

    Shape:
        - returns images: ``(M, 1, image_size, image_size)``, ``M = characters * drawings``,
          class-first (the drawings of class 0, then those of class 1, ...)
    """
    if split not in GLYPH_SPLITS:
        raise ValueError(f"unknown glyphs split {split!r}; allowed: {', '.join(GLYPH_SPLITS)}")
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer of at least 8 pixels; got {image_size!r}")
    if not isinstance(drawings, int) or drawings < 1:
        raise ValueError(f"drawings must be an integer of at least 1; got {drawings!r}")
    ids = GLYPH_SPLITS[split]
    if alphabets is not None and (not isinstance(alphabets, int) or not 1 <= alphabets <= len(ids)):
        raise ValueError(
            f"alphabets must be None or an integer from 1 to {len(ids)} (the {split!r} split "
            f"has {len(ids)}); got {alphabets!r}"
        )
    ids = ids[:alphabets]
    parts = [draw_alphabet(a, seed=seed, drawings=drawings, image_size=image_size) for a in ids]
    sizes = [len(x) for x in parts]  # characters per alphabet
    return ImageDataset(
        name="glyphs",
        split=split,
        images=torch.cat(parts).view(-1, 1, image_size, image_size),  # (C * D, 1, H, W)
        labels=torch.arange(sum(sizes)).repeat_interleave(drawings),
        groups=torch.repeat_interleave(torch.tensor(list(ids)), torch.tensor(sizes)),
        class_names=tuple(
            f"alphabet{a:02d}/char{c:02d}"
            for a, n in zip(ids, sizes, strict=True)
            for c in range(n)
        ),
        source="generated",
    )
