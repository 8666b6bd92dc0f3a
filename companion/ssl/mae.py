r"""A small masked autoencoder (He et al., 2022) for 28x28 images.

An image is cut into non-overlapping ``p x p`` patches, each flattened to a **token** of
``p*p*C`` pixels (:func:`patchify`; 4x4 patches give a 7x7 grid of ``L = 49`` tokens at
28x28). A large random subset of the tokens is **masked** (75%, sec. 3 and fig. 5), and:

1. the **encoder**, a small ViT, embeds every token linearly, adds a fixed 2-D sin-cos
   position embedding, drops the masked tokens (:func:`random_masking`: a per-sample
   shuffle by ``argsort`` of uniform noise, as in the authors' code) and runs transformer
   blocks on the *visible* tokens only;
2. the lighter **decoder** maps the encoded tokens to its own width, appends one shared,
   learned **mask token** per masked position, un-shuffles (``ids_restore``), adds its own
   position embedding, runs its blocks and predicts the pixels of every patch;
3. the loss is the mean squared error on the **masked** patches only (sec. 3),

.. math:: \mathcal L = \frac{1}{|M|} \sum_{i \in M} \frac{1}{p^2 C}
   \lVert \hat y_i - y_i \rVert^2, \qquad M = \{i : \text{mask}_i = 1\},

where ``y_i`` is the patch, or with ``norm_pix_loss`` the patch normalised by its own mean
and standard deviation (sec. 3, "Reconstruction target"; off by default, as in the code).

For downstream probes :attr:`MAE.encoder` is a :class:`ViTEncoder`: images to the mean of
the encoded tokens, with no masking (average pooling instead of a class token, which the
paper reports works as well, appendix A.1).

**Deviations, for 28x28 on a CPU.** ViT-B/16 on 224x224 has 196 tokens of 16x16 pixels,
width 768 and 12 blocks; its decoder is 512 wide with 8 blocks. Here: 4x4 patches (49
tokens, of which 12 stay visible at ratio 0.75), an encoder 64 wide with 4 blocks and a
decoder 32 wide with 2 blocks; the blocks are PyTorch's pre-norm
:class:`~torch.nn.TransformerEncoderLayer` with GELU and no dropout, as in ViT.

Reference:
    He, Chen, Xie, Li, Dollar & Girshick, *Masked Autoencoders Are Scalable Vision
    Learners*, CVPR 2022.

Example:
    >>> x = torch.rand(2, 1, 28, 28)
    >>> patchify(x, 4).shape  # (B, L, p*p*C)
    torch.Size([2, 49, 16])
    >>> torch.equal(unpatchify(patchify(x, 4), 4), x)
    True
    >>> mae = MAE()
    >>> loss, logs = mae.loss(x)  # masks 37 of the 49 patches of each image
    >>> mae.encoder(x).shape  # an encoder for probes: every patch, no mask
    torch.Size([2, 64])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from companion.checks import check_int, check_positive


@dataclass(frozen=True)
class MAEConfig:
    """Hyper-parameters of :class:`MAE`; see the module docstring for the paper's sizes."""

    image_size: int = 28  # square images of this side
    channels: int = 1  # C
    patch: int = 4  # p: a 7x7 grid at 28x28 (paper: 16, a 14x14 grid at 224)
    mask_ratio: float = 0.75  # fraction of tokens masked (paper's default, sec. 4.1)
    embed_dim: int = 64  # encoder width (ViT-B: 768); a multiple of 4 (sin-cos) and of heads
    depth: int = 4  # encoder blocks (ViT-B: 12)
    heads: int = 4  # attention heads (ViT-B: 12)
    decoder_embed_dim: int = 32  # the paper's decoder is narrower too (512)
    decoder_depth: int = 2  # decoder blocks (paper: 8)
    decoder_heads: int = 4  # (paper: 16)
    mlp_ratio: float = 4.0  # hidden width of each block's MLP, as in ViT
    norm_pix_loss: bool = False  # per-patch normalised targets; off in the code's default

    def __post_init__(self) -> None:
        ints = (
            "image_size channels patch embed_dim depth heads decoder_embed_dim decoder_depth "
            "decoder_heads"
        )
        for name in ints.split():
            check_int(name, getattr(self, name))
        if self.image_size % self.patch:
            raise ValueError(
                f"image_size must be divisible by patch; got image_size="
                f"{self.image_size} and patch={self.patch}"
            )
        _check_ratio(self.mask_ratio, (self.image_size // self.patch) ** 2)
        for width, heads, name in (
            (self.embed_dim, self.heads, ""),
            (self.decoder_embed_dim, self.decoder_heads, "decoder_"),
        ):
            if width % 4 or width % heads:
                raise ValueError(
                    f"{name}embed_dim must be a multiple of 4 (sin-cos embedding) and "
                    f"of {name}heads; got {width} and {heads}"
                )
        check_positive("mlp_ratio", self.mlp_ratio)


def _check_ratio(ratio: float, tokens: int) -> int:
    """Tokens kept, ``round(L * (1 - ratio))``; ``ValueError`` unless 1 to ``L - 1``."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1); got {ratio!r}")
    keep = round(tokens * (1 - ratio))
    if not 1 <= keep <= tokens - 1:
        raise ValueError(
            f"mask_ratio={ratio} keeps {keep} of {tokens} tokens; it must keep "
            f"at least one and mask at least one"
        )
    return keep


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut images into ``p x p`` patches, row-major over the grid, pixels in ``(p, p, C)`` order.

    Shape:
        - x: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``patch``
        - returns: ``(B, L, p*p*C)`` with ``L = (H/p) * (W/p)``
    """
    if x.ndim != 4 or x.shape[2] % patch or x.shape[3] % patch:
        raise ValueError(
            f"patchify expects images (B, C, H, W) with H and W divisible by "
            f"patch={patch}; got {tuple(x.shape)}"
        )
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (B, H/p, W/p, p, p, C), the authors' order
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(
    tokens: torch.Tensor, patch: int, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of :func:`patchify` for images of ``size = (H, W)`` (default: square).

    Shape:
        - tokens: ``(B, L, p*p*C)``; returns: ``(B, C, H, W)``
    """
    b, n, d = tokens.shape if tokens.ndim == 3 else (0, 0, 0)
    h, w = size if size is not None else (round(n**0.5) * patch,) * 2
    if (
        tokens.ndim != 3
        or d % (patch * patch)
        or h % patch
        or w % patch
        or (h // patch) * (w // patch) != n
    ):
        raise ValueError(
            f"unpatchify expects tokens (B, L, p*p*C) with L = (H/p)(W/p) for "
            f"patch={patch} and size={size}; got {tuple(tokens.shape)}"
        )
    c = d // (patch * patch)
    x = tokens.reshape(b, h // patch, w // patch, patch, patch, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, c, h, w)


def random_masking(
    tokens: torch.Tensor,
    ratio: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``round(L * (1 - ratio))`` tokens of each sample (the authors' shuffle).

    :func:`masking_from_noise` of uniform noise ``(B, L)`` drawn from ``generator`` (on
    its device, then moved to the tokens').

    Shape:
        - tokens: ``(B, L, D)``
        - returns: ``kept (B, keep, D)``, ``mask (B, L)`` (1 = masked, in ``tokens``'s
          dtype), ``ids_restore (B, L)`` int64
    """
    if tokens.ndim != 3:
        raise ValueError(f"random_masking expects tokens (B, L, D); got {tuple(tokens.shape)}")
    b, n, _ = tokens.shape
    noise = torch.rand(b, n, generator=generator, device=generator.device).to(tokens.device)
    return masking_from_noise(tokens, ratio, noise)


def masking_from_noise(
    tokens: torch.Tensor, ratio: float, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masking of :func:`random_masking` for given noise: a pure function (vmap-safe).

    ``noise`` is sorted per sample; the tokens with the smallest noise are kept, in that
    shuffled order. ``ids_restore`` is the inverse permutation: appending ``L - keep`` mask
    tokens to the kept ones and gathering by ``ids_restore`` puts every token back in place.

    Shape:
        - tokens: ``(B, L, D)``; noise: ``(B, L)``, e.g. uniform in ``[0, 1)``
        - returns: ``kept (B, keep, D)``, ``mask (B, L)`` (1 = masked, in ``tokens``'s
          dtype), ``ids_restore (B, L)`` int64
    """
    if tokens.ndim != 3 or noise.shape != tokens.shape[:2]:
        raise ValueError(
            f"expected tokens (B, L, D) and noise (B, L); got {tuple(tokens.shape)} and "
            f"{tuple(noise.shape)}"
        )
    b, n, d = tokens.shape
    keep = _check_ratio(ratio, n)
    ids_shuffle = noise.argsort(dim=1)  # ascending: the first `keep` are kept
    ids_restore = ids_shuffle.argsort(dim=1)
    kept = tokens.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, d))  # (B, keep, D)
    mask = torch.ones(b, n, dtype=tokens.dtype, device=tokens.device)
    mask[:, :keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore  # mask in the original order


def mae_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = False
) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches only.

    Shape:
        - pred, target: ``(B, L, p*p*C)`` (``target = patchify(x, p)``); mask: ``(B, L)``
        - returns: a scalar
    """
    if pred.shape != target.shape or pred.shape[:2] != mask.shape:
        raise ValueError(
            f"expected pred and target (B, L, p*p*C) and mask (B, L); got "
            f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(mask.shape)}"
        )
    if norm_pix_loss:  # unbiased variance and eps = 1e-6, as in the authors' code
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).square().mean(-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum()


def sincos_2d(width: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding: half the channels encode the row, half the column.

    Each half is ``[sin(pos * omega_k), cos(pos * omega_k)]`` with ``omega_k = 10000^(-k/(W/4))``,
    ``k = 0..W/4 - 1`` (the authors' code, after Vaswani et al., 2017).

    Shape:
        - returns: ``(grid_h * grid_w, width)``, row-major like :func:`patchify`
    """
    omega = 10000.0 ** (-torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    parts = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angle = pos[:, None] * omega[None]  # (L, W/4)
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()  # (L, W)


def _blocks(width: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    return nn.Sequential(
        *[
            nn.TransformerEncoderLayer(
                width,
                heads,
                round(mlp_ratio * width),
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        ]
    )


class ViTEncoder(nn.Module):
    """The MAE encoder; as a module it is an **encoder**: images to pooled features, no masking.

    Shape:
        - x: ``(B, C, H, W)`` with ``H = W = config.image_size``
        - returns: ``(B, config.embed_dim)``, the mean of the encoded tokens
    """

    def __init__(self, config: MAEConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.image_size // config.patch
        self.patch_embed = nn.Linear(config.patch**2 * config.channels, config.embed_dim)
        pos = sincos_2d(config.embed_dim, grid, grid)[None]  # (1, L, embed_dim)
        self.register_buffer("pos_embed", pos)
        self.blocks = _blocks(config.embed_dim, config.depth, config.heads, config.mlp_ratio)
        self.norm = nn.LayerNorm(config.embed_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens with position: ``patch_embed(patchify(x)) + pos``, shape ``(B, L, width)``."""
        c, s = self.config.channels, self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"ViTEncoder expects images (B, {c}, {s}, {s}); got {tuple(x.shape)}")
        return self.patch_embed(patchify(x, self.config.patch)) + self.pos_embed

    def transform(self, tokens: torch.Tensor) -> torch.Tensor:
        """Transformer blocks and the final LayerNorm on any subset of tokens ``(B, N, width)``."""
        return self.norm(self.blocks(tokens))

    def out_features(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Feature dimension ``D = embed_dim`` (the image size is fixed by the config)."""
        return self.config.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.embed(x)).mean(1)  # (B, L, W) -> (B, W)


class MAE(nn.Module):
    """Masked autoencoder: a :class:`ViTEncoder` on visible tokens, a light decoder for all.

    Args:
        config: sizes and mask ratio (:class:`MAEConfig`).
        generator: draws the masks; default a CPU generator seeded with 0.

    Shape:
        - x: ``(B, C, H, W)``; ``loss`` returns a scalar and ``{"loss"}``
    """

    views = 1  # loss(x): one (optionally augmented) batch of images

    def __init__(
        self, config: MAEConfig = MAEConfig(), generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if not isinstance(config, MAEConfig):
            raise TypeError(f"config must be an MAEConfig; got {type(config).__name__}")
        self.config = config
        self.encoder = ViTEncoder(config)
        grid, dw = config.image_size // config.patch, config.decoder_embed_dim
        self.decoder_embed = nn.Linear(config.embed_dim, dw)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dw))
        nn.init.normal_(self.mask_token, std=0.02)  # as in the authors' code
        self.register_buffer("decoder_pos_embed", sincos_2d(dw, grid, grid)[None])
        self.decoder_blocks = _blocks(
            dw, config.decoder_depth, config.decoder_heads, config.mlp_ratio
        )
        self.decoder_norm = nn.LayerNorm(dw)
        self.decoder_pred = nn.Linear(dw, config.patch**2 * config.channels)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Pixels of every patch from the encoded visible tokens.

        Shape:
            - latent: ``(B, keep, width)``, ids_restore: ``(B, L)``
            - returns: ``(B, L, p*p*C)``
        """
        h = self.decoder_embed(latent)  # (B, keep, Wd)
        b, n = ids_restore.shape
        masks = self.mask_token.expand(b, n - h.shape[1], -1)  # (B, L - keep, Wd)
        h = torch.cat([h, masks], dim=1)  # shuffled order
        h = h.gather(1, ids_restore[..., None].expand(-1, -1, h.shape[2]))  # original order
        h = self.decoder_norm(self.decoder_blocks(h + self.decoder_pos_embed))
        return self.decoder_pred(h)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MSE on the masked patches of the mask that ``noise`` picks (:func:`mae_loss`).

        The pure path: the caller draws ``noise`` (:meth:`draw_noise`), so this is a
        function of the parameters and the inputs, safe under ``torch.func.functional_call``
        and ``vmap`` (give each batch of the vmapped axis its own ``noise``). Under ``vmap``
        PyTorch may run the attention kernel batch by batch, with a warning that it has no
        batching rule for it; the values are the same.

        Shape:
            - x: ``(B, C, H, W)``; noise: ``(B, L)``
            - returns: a scalar and ``{"loss"}``, a detached 0-dim tensor
        """
        tokens = self.encoder.embed(x)  # (B, L, width), position added before masking
        kept, mask, ids_restore = masking_from_noise(tokens, self.config.mask_ratio, noise)
        pred = self.decode(self.encoder.transform(kept), ids_restore)  # (B, L, p*p*C)
        target = patchify(x, self.config.patch)
        loss = mae_loss(pred, target, mask, self.config.norm_pix_loss)
        return loss, {"loss": loss.detach()}

    def draw_noise(self, x: torch.Tensor) -> torch.Tensor:
        """Uniform noise ``(B, L)`` from :attr:`generator` (on its device), on ``x``'s device."""
        tokens = (self.config.image_size // self.config.patch) ** 2  # L
        return torch.rand(
            x.shape[0], tokens, generator=self.generator, device=self.generator.device
        ).to(x.device)

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`forward` with a fresh random mask drawn from :attr:`generator`.

        Shape:
            - x: ``(B, C, H, W)``; returns: a scalar and ``{"loss"}``
        """
        return self(x, self.draw_noise(x))

    def generators(self) -> dict[str, torch.Generator]:
        """The random stream of the masks, by name (saved in checkpoints)."""
        return {"mask": self.generator}

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update after an optimiser step (no EMA state)."""
