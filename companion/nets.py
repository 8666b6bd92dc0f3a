r"""Backbones ("encoders") and heads shared by every chapter.

An **encoder** is any ``nn.Module`` that maps images ``(B, C, H, W)`` to vectors
``(B, D)``. SSL methods train one, metric meta-learners embed with one, gradient-based
meta-learners put a linear head on one. Three are provided:

**Conv4** (Vinyals et al., 2016; Snell et al., 2017; Finn et al., 2017). Four blocks of

.. math:: h \mapsto \operatorname{maxpool}_2(\operatorname{ReLU}(\operatorname{norm}(
   W * h + b))),

each a 3x3 convolution with padding 1 and ``hidden`` channels, then a flatten. Every block
halves the image (floor), so 28x28 Omniglot gives ``hidden x 1 x 1`` (28->14->7->3->1) and
84x84 miniImageNet gives ``hidden x 5 x 5`` (1,600 features for ``hidden=64``).

**ResNet12** (Oreshkin et al., 2018, TADAM; Lee et al., 2019, MetaOptNet). Four residual
blocks; block ``i`` has three 3x3 convolutions with ``channels[i]`` filters, each followed
by norm, with LeakyReLU(0.1) after the first two; a 1x1 convolution + norm shortcut is
added, then LeakyReLU(0.1) and a 2x2 max-pool. A global average pool gives
``D = channels[-1]``. MetaOptNet's widths (64, 160, 320, 640) are the default; TADAM used
(64, 128, 256, 512). DropBlock regularisation from MetaOptNet is omitted.

**MLP**: flatten, then ``Linear -> norm -> ReLU`` per hidden width, then an optional
linear output layer; the default ``hidden=(40, 40)`` is MAML's sinusoid regressor (Finn et
al., 2017, Sec. 5.1).

**Norm layers and ``torch.func``.** ``norm`` is a callable ``num_channels -> nn.Module``
or one of the names in :data:`NORMS`. The default, :class:`BatchNorm`, is batch
normalisation (Ioffe & Szegedy, 2015),

.. math:: y = \gamma \frac{x - \mu_B}{\sqrt{\sigma_B^2 + \epsilon}} + \beta,

that always uses the statistics of the current batch and keeps no running buffers, which is
what MAML does ("transductive" BN: each task is normalised with its own statistics). It
equals ``nn.BatchNorm2d(track_running_stats=False)``, but that built-in gives a wrong
second-order meta-gradient (off by about 1e-2 in torch 2.13, forward losses exact) when
``torch.func.vmap`` maps over tasks that share the meta-parameters, the usual MAML
meta-batch. So :class:`BatchNorm` switches to plain tensor ops under ``vmap``
(:func:`batch_norm_ops`, exact) and uses the fused kernel everywhere else
(``tests/test_nets.py`` checks both paths). Forward passes check only shapes, so every
network here is safe to ``vmap``.

**ReLU after the max-pool.** ReLU and LeakyReLU are increasing, so they commute with a
max-pool: ``pool(relu(h)) = relu(pool(h))``, gradients included. The blocks pool first,
which runs the activation on a quarter of the values (the papers write the other order).

References: Vinyals et al., Matching Networks, NeurIPS 2016; Snell et al., Prototypical
Networks, NeurIPS 2017; Finn et al., MAML, ICML 2017; Oreshkin et al., TADAM, NeurIPS 2018;
Lee et al., MetaOptNet, CVPR 2019; Ioffe & Szegedy, Batch Normalization, ICML 2015; Wu &
He, Group Normalization, ECCV 2018.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch._C import _functorch

NormFactory = Callable[[int], nn.Module]


class BatchNorm(nn.Module):
    """Batch norm from the current batch's statistics only, safe under ``torch.func.vmap``.

    Normalises over every dimension but the channel dimension 1, with the biased variance
    (as ``nn.BatchNorm*`` does in training), in train and eval mode alike. Outside ``vmap``
    it calls PyTorch's fused kernel (``F.batch_norm``, exact there, and about 1.5x faster
    for a second-order MAML step on the CPU); under ``vmap`` it computes the same function
    with plain tensor ops (:func:`batch_norm_ops`), because the fused kernel's second-order
    gradient is wrong there (see the module docstring).

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance before the square root.
        affine: learn a per-channel scale ``weight`` (gamma, init 1) and shift ``bias``
            (beta, init 0).

    Shape:
        - x: ``(B, C)`` or ``(B, C, *)`` with at least two values per channel
        - returns: same shape as ``x``
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        _check_width(num_features, "num_features")
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm expects input (B, {self.num_features}, *); got {tuple(x.shape)}"
            )
        if math.prod(x.shape) // x.shape[1] < 2:
            raise ValueError(
                f"BatchNorm needs more than one value per channel; got {tuple(x.shape)}"
            )
        weight, bias = (self.weight, self.bias) if self.affine else (None, None)
        if _under_vmap():
            return batch_norm_ops(x, weight, bias, self.eps)
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"


def batch_norm_ops(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    r"""Batch norm with batch statistics as plain tensor ops (what :class:`BatchNorm` runs
    under ``vmap``): :math:`\gamma (x - \mu_B) / \sqrt{\sigma_B^2 + \epsilon} + \beta`."""
    dims = [0, *range(2, x.ndim)]  # all but channels
    mean = x.mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
    centred = x - mean
    var = centred.square().mean(dim=dims, keepdim=True)  # biased, (1, C, 1, ...)
    x_hat = centred * torch.rsqrt(var + eps)
    if weight is None:
        return x_hat
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    return x_hat * weight.view(shape) + bias.view(shape)


def _under_vmap() -> bool:
    """Whether a ``torch.func.vmap`` transform is active (its interpreter is on the stack)."""
    stack = _functorch.get_interpreter_stack() or ()
    return any(level.key() == _functorch.TransformType.Vmap for level in stack)


NORMS: dict[str, NormFactory] = {
    "batch": BatchNorm,
    # 32 groups (Wu & He, 2018), or gcd(C, 32) when C is not a multiple of 32.
    "group": lambda c: nn.GroupNorm(math.gcd(c, 32), c),
    "instance": lambda c: nn.GroupNorm(c, c),  # one group per channel, with affine
    "none": lambda c: nn.Identity(),
    "identity": lambda c: nn.Identity(),
}


def make_norm(norm: str | NormFactory | None, num_channels: int) -> nn.Module:
    """Build a norm layer from a name in :data:`NORMS`, a factory, or ``None`` (identity)."""
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; allowed: {sorted(NORMS)} or a callable")
        return NORMS[norm](num_channels)
    if not callable(norm):
        raise TypeError(f"norm must be a str, a callable or None; got {type(norm).__name__}")
    return norm(num_channels)


def _check_width(width: object, name: str) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"{name} must be a positive int; got {width!r}")


def _check_images(x: torch.Tensor, in_channels: int, min_size: int, name: str) -> None:
    # Shape checks only, so they are cheap and safe under vmap (x.shape is per task there).
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{name} expects images (B, {in_channels}, H, W) with H, W >= {min_size}; "
            f"got {tuple(x.shape)}"
        )
    if min(x.shape[2], x.shape[3]) < min_size:
        raise ValueError(
            f"{name} expects images (B, {in_channels}, H, W) with H, W >= {min_size} "
            f"(four 2x2 max-pools); got {tuple(x.shape)}"
        )


class Conv4(nn.Module):
    """The four-block convolutional encoder of ProtoNets and MAML.

    Args:
        in_channels: channels of the input images (1 for Omniglot, 3 for miniImageNet).
        hidden: filters in every block (64 in the papers; 32 for MAML on miniImageNet).
        norm: a name in :data:`NORMS` or a factory ``num_channels -> nn.Module``.

    Shape:
        - x: ``(B, in_channels, H, W)`` with ``H, W >= 16``
        - returns: ``(B, hidden * (H // 16) * (W // 16))``; see :meth:`out_features`
    """

    def __init__(
        self, in_channels: int = 1, hidden: int = 64, norm: str | NormFactory | None = "batch"
    ) -> None:
        super().__init__()
        _check_width(in_channels, "in_channels")
        _check_width(hidden, "hidden")
        self.in_channels = in_channels
        self.hidden = hidden
        widths = [in_channels, hidden, hidden, hidden, hidden]
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                    make_norm(norm, c_out),
                    nn.MaxPool2d(2),  # before the ReLU: they commute, and it is 4x less work
                    nn.ReLU(),
                )
                for c_in, c_out in pairwise(widths)
            ]
        )

    def out_features(self, image_size: int | tuple[int, int]) -> int:
        """Feature dimension ``D`` for square ``image_size`` or ``(H, W)`` inputs."""
        h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
        if min(h, w) < 16:
            raise ValueError(f"Conv4 needs images of at least 16x16; got {image_size}")
        return self.hidden * (h // 16) * (w // 16)  # four floor-halvings = // 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.in_channels, 16, "Conv4")
        return self.blocks(x).flatten(1)  # (B, hidden, H/16, W/16) -> (B, D)


class _ResidualBlock(nn.Module):
    """One ResNet-12 block: 3 x (conv3x3, norm), 1x1 shortcut, LeakyReLU, max-pool."""

    def __init__(self, c_in: int, c_out: int, norm: str | NormFactory | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = make_norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm, c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm3 = make_norm(norm, c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), make_norm(norm, c_out))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W)
        out = self.act(self.norm1(self.conv1(x)))
        out = self.act(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))  # (B, c_out, H, W)
        # LeakyReLU is increasing, so it commutes with the max-pool: pool first (4x less work)
        return self.act(self.pool(out + self.shortcut(x)))  # (B, c_out, H/2, W/2)


class ResNet12(nn.Module):
    """ResNet-12 of TADAM (Oreshkin et al., 2018) and MetaOptNet (Lee et al., 2019).

    Convolutions have no bias (each is followed by a norm), as in MetaOptNet.

    Args:
        in_channels: channels of the input images.
        channels: the four block widths; use e.g. ``(16, 32, 64, 128)`` on a CPU.
        norm: a name in :data:`NORMS` or a factory ``num_channels -> nn.Module``.

    Shape:
        - x: ``(B, in_channels, H, W)`` with ``H, W >= 16``
        - returns: ``(B, channels[-1])``
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 160, 320, 640),
        norm: str | NormFactory | None = "batch",
    ) -> None:
        super().__init__()
        _check_width(in_channels, "in_channels")
        channels = tuple(channels)
        if len(channels) != 4:
            raise ValueError(f"channels must be four block widths; got {channels}")
        for c in channels:
            _check_width(c, "every entry of channels")
        self.in_channels = in_channels
        self.channels = channels
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(
            *[_ResidualBlock(c_in, c_out, norm) for c_in, c_out in pairwise(widths)]
        )

    def out_features(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Feature dimension ``D = channels[-1]`` (any image of at least 16x16)."""
        return self.channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.in_channels, 16, "ResNet12")
        return self.blocks(x).mean(dim=(2, 3))  # (B, C, H/16, W/16) -> (B, C)


class MLP(nn.Module):
    """Flatten, then ``Linear -> norm -> ReLU`` per hidden width, then an optional Linear.

    Args:
        in_features: size of one flattened input (``C * H * W`` for images).
        hidden: hidden widths; ``()`` gives a single linear layer (needs ``out_features``).
        out_features: width of a final linear layer (no norm or ReLU after it); ``None``
            ends on the last hidden layer, so the MLP is an encoder.
        norm: a name in :data:`NORMS` or a factory ``num_features -> nn.Module``.

    Shape:
        - x: ``(B, *)`` with ``prod(*) == in_features``
        - returns: ``(B, out_features)`` or ``(B, hidden[-1])``
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (40, 40),
        out_features: int | None = None,
        norm: str | NormFactory | None = "none",
    ) -> None:
        super().__init__()
        _check_width(in_features, "in_features")
        hidden = tuple(hidden)
        for h in hidden:
            _check_width(h, "every entry of hidden")
        if out_features is not None:
            _check_width(out_features, "out_features")
        elif not hidden:
            raise ValueError("MLP needs at least one hidden width or an out_features")
        self.in_features = in_features
        self._out = out_features if out_features is not None else hidden[-1]
        layers: list[nn.Module] = [nn.Flatten()]
        widths = (in_features, *hidden)
        for f_in, f_out in pairwise(widths):
            layers += [nn.Linear(f_in, f_out), make_norm(norm, f_out), nn.ReLU()]
        if out_features is not None:
            layers.append(nn.Linear(widths[-1], out_features))
        self.layers = nn.Sequential(*layers)

    def out_features(self, image_size: int | tuple[int, int] | None = None) -> int:
        """Output dimension ``D`` (fixed by the constructor; ``image_size`` is ignored)."""
        return self._out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"MLP expects (B, *) with {self.in_features} features per example; "
                f"got {tuple(x.shape)}"
            )
        return self.layers(x)  # (B, *) -> (B, D)


def linear_head(in_features: int, ways: int, zero_init: bool = False) -> nn.Linear:
    """The linear classifier on top of an encoder, as in MAML and ANIL.

    Args:
        in_features: the encoder's feature dimension ``D``.
        ways: number of classes ``N`` in an episode.
        zero_init: start weight and bias at zero, so every task starts from uniform
            predictions (the "zeroing trick" of Kao et al., 2022, ICLR); otherwise
            PyTorch's default init.

    Shape:
        - input: ``(B, in_features)``; returns: ``(B, ways)`` logits
    """
    _check_width(in_features, "in_features")
    _check_width(ways, "ways")
    head = nn.Linear(in_features, ways)
    if zero_init:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return head
