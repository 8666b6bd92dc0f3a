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

.. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,

where :math:`\mu, \sigma^2` are the current batch's mean and (biased) variance per channel,
or, in eval mode with ``track_running_stats=True``, running averages of them collected in
training. It equals ``nn.BatchNorm2d`` with the same settings, but that built-in gives a
wrong second-order meta-gradient (forward losses exact) when ``torch.func.vmap`` maps over
tasks that share the meta-parameters, the usual MAML meta-batch
(``test_torch_batchnorm2d_vmap_second_order`` in ``tests/test_nets.py`` shows it). So
:class:`BatchNorm` switches to plain tensor ops under ``vmap`` (:func:`batch_norm_ops`,
exact) and uses the fused kernel everywhere else (``tests/test_nets.py`` checks both
paths). Forward passes check only shapes, so every network here is safe to ``vmap``.

**Batch statistics or running statistics: which is used where, and why.**

- *Meta-learners* (MAML, ANIL, Proto-MAML, Reptile, ProtoNet, Matching Networks) use the
  default ``track_running_stats=False``: every forward pass, in train and eval mode alike,
  is normalised with the statistics of its own batch, and no buffers exist. This is the
  "transductive" setting of MAML's code (Finn et al. call TensorFlow's ``batch_norm``
  without ``is_training``, so it always uses batch statistics, at test time too): each
  task is normalised with the statistics of its own images, so a query's logits depend on
  the other images of its episode. It is also the only setting that is pure under
  ``vmap``/``grad`` (no buffers to update).
- *Self-supervised encoders* are built with ``track_running_stats=True`` (e.g.
  ``Conv4(in_channels, hidden=width, norm="batch", track_running_stats=True)``): training
  normalises with the batch and keeps running averages, and eval mode normalises with
  those, so each image's features are a function of that image alone. The linear, kNN and
  few-shot probes of :mod:`companion.evaluate` then measure the encoder, not the
  composition of the batch the probe happened to form (dataset order is class order, so a
  chunk of images is often a single class).

``GroupNorm`` (``norm="group"``, Wu & He, 2018) and ``"instance"`` are per image in both
modes and keep no buffers.

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

from companion.checks import check_int, check_positive

NormFactory = Callable[[int], nn.Module]


class BatchNorm(nn.Module):
    """Batch norm that is safe under ``torch.func``, with or without running statistics.

    Normalises over every dimension but the channel dimension 1, with the biased variance
    of the batch (as ``nn.BatchNorm*`` does in training). The arguments and buffers are
    PyTorch's (``nn.BatchNorm2d``), and so is what they do, except for the default of
    ``track_running_stats``:

    - ``track_running_stats=False`` (the default; the meta-learners' transductive setting,
      see the module docstring): batch statistics in train *and* eval mode; no buffers.
    - ``track_running_stats=True``: in train mode, batch statistics, and the buffers
      ``running_mean`` and ``running_var`` move towards the batch's mean and *unbiased*
      variance, ``r <- (1 - momentum) r + momentum * stat`` (``momentum=None``: the
      cumulative average over the ``num_batches_tracked`` batches so far); in eval mode,
      the running statistics, so each example is normalised on its own.

    Under a ``torch.func`` transform (``vmap``, ``grad``, ...) the buffers are left
    untouched: a transform maps a pure function, and an in-place update of a module's
    buffer from inside it would store a transform's intermediate value (``nn.BatchNorm*``
    raises there instead). Train mode still normalises with the batch there; eval mode
    still reads the buffers. Outside ``vmap`` the forward calls PyTorch's fused kernel
    (``F.batch_norm``, which also updates the buffers exactly as ``nn.BatchNorm2d`` does);
    under ``vmap`` it computes the same function with plain tensor ops
    (:func:`batch_norm_ops`), because the fused kernel's second-order gradient is wrong
    there (see the module docstring).

    Args:
        num_features: number of channels ``C``.
        eps: added to the variance before the square root.
        momentum: weight of the new batch in the running averages, in ``[0, 1]``, or
            ``None`` for a cumulative average; read only with ``track_running_stats``.
        affine: learn a per-channel scale ``weight`` (gamma, init 1) and shift ``bias``
            (beta, init 0).
        track_running_stats: keep running statistics and normalise with them in eval mode.

    Shape:
        - x: ``(B, C)`` or ``(B, C, *)``; with batch statistics at least two values per
          channel
        - returns: same shape as ``x``

    Example:
        >>> bn = BatchNorm(2, track_running_stats=True)
        >>> x = torch.tensor([[0.0, 10.0], [2.0, 30.0]])  # (B=2, C=2)
        >>> bn(x)  # train mode: the batch's statistics
        tensor([[-1.0000, -1.0000],
                [ 1.0000,  1.0000]], grad_fn=<NativeBatchNormBackward0>)
        >>> bn.running_mean, bn.running_var  # 0.9 * (0, 1) + 0.1 * (mean, unbiased var)
        (tensor([0.1000, 2.0000]), tensor([ 1.1000, 20.9000]))
        >>> bn.eval()(x[:1]).shape  # eval mode: the running statistics, one example is fine
        torch.Size([1, 2])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        check_int("num_features", num_features)
        check_positive("eps", eps)
        if momentum is not None and (
            isinstance(momentum, bool) or not isinstance(momentum, int | float)
            or not 0 <= momentum <= 1
        ):
            raise ValueError(f"momentum must be a number in [0, 1] or None; got {momentum!r}")
        _check_bool("affine", affine)
        _check_bool("track_running_stats", track_running_stats)
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        if track_running_stats:  # nn.BatchNorm*'s buffers, names and initial values
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm expects input (B, {self.num_features}, *); got {tuple(x.shape)}"
            )
        weight, bias = (self.weight, self.bias) if self.affine else (None, None)
        if self.track_running_stats and not self.training:  # per example
            if _under_vmap():
                return batch_norm_ops(x, weight, bias, self.eps,
                                      mean=self.running_mean, var=self.running_var)
            return F.batch_norm(x, self.running_mean, self.running_var, weight, bias,
                                training=False, eps=self.eps)
        if math.prod(x.shape) // x.shape[1] < 2:
            raise ValueError(
                "BatchNorm with batch statistics needs more than one value per channel; "
                f"got {tuple(x.shape)}"
            )
        if _under_vmap():
            return batch_norm_ops(x, weight, bias, self.eps)  # buffers untouched
        if not self.track_running_stats or _under_transform():
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
        self.num_batches_tracked.add_(1)
        momentum = 1 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
        # The kernel updates the buffers in place, outside autograd, with the unbiased variance.
        return F.batch_norm(x, self.running_mean, self.running_var, weight, bias,
                            training=True, momentum=momentum, eps=self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


def batch_norm_ops(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Batch norm as plain tensor ops (what :class:`BatchNorm` runs under ``vmap``):
    :math:`\gamma (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta`.

    ``mean`` and ``var`` (both or neither) are given statistics per channel, e.g. running
    averages; without them :math:`\mu, \sigma^2` are the batch's mean and biased variance.

    Shape:
        - x: ``(B, C, *)``; weight, bias, mean, var: ``(C,)``; returns: same as ``x``
    """
    if (mean is None) != (var is None):
        raise ValueError("batch_norm_ops needs both mean and var, or neither")
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)  # broadcast (C,) over (B, C, *)
    if mean is None:
        dims = [0, *range(2, x.ndim)]  # all but channels
        mean = x.mean(dim=dims, keepdim=True)  # (1, C, 1, ...)
        centred = x - mean
        var = centred.square().mean(dim=dims, keepdim=True)  # biased, (1, C, 1, ...)
    else:
        centred = x - mean.view(shape)
        var = var.view(shape)
    x_hat = centred * torch.rsqrt(var + eps)
    if weight is None:
        return x_hat
    return x_hat * weight.view(shape) + bias.view(shape)


def _under_vmap() -> bool:
    """Whether a ``torch.func.vmap`` transform is active (its interpreter is on the stack)."""
    stack = _functorch.get_interpreter_stack() or ()
    return any(level.key() == _functorch.TransformType.Vmap for level in stack)


def _under_transform() -> bool:
    """Whether any ``torch.func`` transform (``vmap``, ``grad``, ``jvp``, ...) is active."""
    return bool(_functorch.get_interpreter_stack())


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {value!r}")


NORMS: dict[str, NormFactory] = {
    "batch": BatchNorm,  # batch statistics only; see make_norm for running statistics
    # 32 groups (Wu & He, 2018), or gcd(C, 32) when C is not a multiple of 32.
    "group": lambda c: nn.GroupNorm(math.gcd(c, 32), c),
    "instance": lambda c: nn.GroupNorm(c, c),  # one group per channel, with affine
    "none": lambda c: nn.Identity(),
    "identity": lambda c: nn.Identity(),
}


def make_norm(
    norm: str | NormFactory | None, num_channels: int, *, track_running_stats: bool = False
) -> nn.Module:
    """Build a norm layer from a name in :data:`NORMS`, a factory, or ``None`` (identity).

    ``track_running_stats=True`` gives ``BatchNorm(num_channels, track_running_stats=True)``
    and needs ``norm="batch"``: no other norm has batch statistics to track, and a factory
    builds its own layer (write ``lambda c: BatchNorm(c, track_running_stats=True)``).
    """
    _check_bool("track_running_stats", track_running_stats)
    if track_running_stats:
        if norm != "batch":
            raise ValueError(
                "track_running_stats=True needs norm='batch' (the only norm with batch "
                f"statistics; a factory builds its own layer); got norm={norm!r}"
            )
        return BatchNorm(num_channels, track_running_stats=True)
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; allowed: {sorted(NORMS)} or a callable")
        return NORMS[norm](num_channels)
    if not callable(norm):
        raise TypeError(f"norm must be a str, a callable or None; got {type(norm).__name__}")
    return norm(num_channels)


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
        track_running_stats: with ``norm="batch"``, keep running statistics and normalise
            with them in eval mode, so features are per image (the self-supervised
            encoders); ``False`` (default) is the meta-learners' transductive batch norm.
            See the module docstring.

    Shape:
        - x: ``(B, in_channels, H, W)`` with ``H, W >= 16``
        - returns: ``(B, hidden * (H // 16) * (W // 16))``; see :meth:`out_features`

    Example:
        >>> encoder = Conv4(1, hidden=8, norm="batch", track_running_stats=True)
        >>> encoder.eval()(torch.zeros(1, 1, 28, 28)).shape  # one image: running statistics
        torch.Size([1, 8])
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        norm: str | NormFactory | None = "batch",
        *,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        check_int("hidden", hidden)
        self.in_channels = in_channels
        self.hidden = hidden
        widths = [in_channels, hidden, hidden, hidden, hidden]
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                    make_norm(norm, c_out, track_running_stats=track_running_stats),
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

    def __init__(
        self, c_in: int, c_out: int, norm: str | NormFactory | None, track_running_stats: bool
    ) -> None:
        super().__init__()

        def norm_layer() -> nn.Module:
            return make_norm(norm, c_out, track_running_stats=track_running_stats)

        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = norm_layer()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = norm_layer()
        self.conv3 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm3 = norm_layer()
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), norm_layer())
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
        track_running_stats: as in :class:`Conv4`.

    Shape:
        - x: ``(B, in_channels, H, W)`` with ``H, W >= 16``
        - returns: ``(B, channels[-1])``
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (64, 160, 320, 640),
        norm: str | NormFactory | None = "batch",
        *,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels)
        channels = tuple(channels)
        if len(channels) != 4:
            raise ValueError(f"channels must be four block widths; got {channels}")
        for c in channels:
            check_int("every entry of channels", c)
        self.in_channels = in_channels
        self.channels = channels
        widths = (in_channels, *channels)
        self.blocks = nn.Sequential(
            *[_ResidualBlock(c_in, c_out, norm, track_running_stats)
              for c_in, c_out in pairwise(widths)]
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
        track_running_stats: as in :class:`Conv4` (needs ``norm="batch"``).

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
        *,
        track_running_stats: bool = False,
    ) -> None:
        super().__init__()
        check_int("in_features", in_features)
        hidden = tuple(hidden)
        for h in hidden:
            check_int("every entry of hidden", h)
        if out_features is not None:
            check_int("out_features", out_features)
        elif not hidden:
            raise ValueError("MLP needs at least one hidden width or an out_features")
        self.in_features = in_features
        self._out = out_features if out_features is not None else hidden[-1]
        layers: list[nn.Module] = [nn.Flatten()]
        widths = (in_features, *hidden)
        for f_in, f_out in pairwise(widths):
            norm_layer = make_norm(norm, f_out, track_running_stats=track_running_stats)
            layers += [nn.Linear(f_in, f_out), norm_layer, nn.ReLU()]
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
    check_int("in_features", in_features)
    check_int("ways", ways)
    head = nn.Linear(in_features, ways)
    if zero_init:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return head
