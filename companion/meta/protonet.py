r"""Prototypical Networks (Snell, Swersky & Zemel, 2017).

A prototypical network learns an embedding :math:`f_\phi` in which every class of an
episode is summarised by one point, its **prototype**, the mean of its embedded support
examples (Snell et al., eq. 1):

.. math::

    c_k = \frac{1}{|S_k|} \sum_{(x_i, y_i) \in S_k} f_\phi(x_i). \tag{1}

A query :math:`x` is classified by a softmax over negative distances to the prototypes
(eq. 2), and the network is trained by minimising the negative log-probability of the true
class of each query, :math:`J(\phi) = -\log p_\phi(y = k \mid x)`:

.. math::

    p_\phi(y = k \mid x) = \frac{\exp(-d(f_\phi(x), c_k))}
                               {\sum_{k'} \exp(-d(f_\phi(x), c_{k'}))}. \tag{2}

With the squared Euclidean distance :math:`d(z, z') = \lVert z - z' \rVert^2`, the paper's
choice (sec. 2.6 found it greatly improves on cosine), the model is a linear classifier on top
of :math:`f_\phi` (sec. 2.4), and the class mean is the right summary for any regular
Bregman divergence (sec. 2.3). Because episodes are class-first (``[0]*K + [1]*K + ...``),
eq. 1 is one line, as in the authors' code: ``z.view(N, K, D).mean(1)``.

**Options beyond the paper.** ``metric="cosine"`` scores queries by the cosine similarity
to each prototype, as in many later baselines. Cosine logits lie in ``[-1, 1]``, which keeps
the softmax soft, so they are multiplied by a ``scale`` (an inverse temperature, the
"metric scaling" of Oreshkin et al., 2018, TADAM); it can be fixed or learned
(``learn_scale``). The scale applies to either metric; the paper's setting is squared
Euclidean with scale 1.

**Batch normalisation.** :class:`ProtoNet` embeds the support and query images of *all*
tasks of a meta-batch in one encoder forward, which is the fast way on any device. The
default :class:`~companion.nets.Conv4` uses batch statistics only (no running buffers), so
during meta-training BN normalises over the whole meta-batch (supports and queries of every
task together) and in :meth:`ProtoNet.classify` over one episode (its support and query
together). This is the transductive setting of MAML's code, chosen here for every
meta-learner of the package so that they compare like with like; Snell et al.'s code keeps
running statistics and uses them at test time instead. With a meta-batch of several
episodes the statistics mix episodes, which one forward per episode would not; the recipes
of :data:`companion.methods.REGISTRY` train on one episode per step, where the two are the
same.

References:
    Snell, Swersky & Zemel, *Prototypical Networks for Few-shot Learning*, NeurIPS 2017.
    Oreshkin, Rodriguez & Lacoste, *TADAM: Task dependent adaptive metric for improved
    few-shot learning*, NeurIPS 2018.

Example:
    >>> z_support = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]])
    >>> support_y = torch.tensor([0, 0, 1, 1])  # N = 2 ways, K = 2 shots, class-first
    >>> prototypes(z_support, ways=2)
    tensor([[0., 1.],
            [4., 1.]])
    >>> protonet_logits(z_support, support_y, torch.tensor([[1.0, 1.0]]))
    tensor([[-1., -9.]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.checks import check_choice, check_int, check_positive, preview
from companion.data.episodes import Episode, TaskBatch

METRICS = ("sqeuclidean", "cosine")


@dataclass(frozen=True)
class ProtoNetConfig:
    """What defines a prototypical network; the defaults are the paper's.

    Deviations from the paper: none by default; ``cosine``, ``scale != 1`` and
    ``learn_scale`` are options the paper does not use. The training episodes (60-way,
    5 queries per class, the test's shot on Omniglot, sec. 3.1) and the optimiser (Adam at
    1e-3, halved every 2,000 episodes) belong to the training loop: see the ``protonet``
    entry of :data:`companion.methods.REGISTRY`.
    """

    metric: str = "sqeuclidean"  # squared Euclidean distance (sec. 2.2); or "cosine"
    scale: float = 1.0  # logits = scale * (-d) or scale * cos; 1 in the paper, ~10 for cosine
    learn_scale: bool = False  # learn the scale (TADAM's metric scaling) instead of fixing it

    def __post_init__(self) -> None:
        check_choice("metric", self.metric, METRICS)
        check_positive("scale", self.scale)
        if not isinstance(self.learn_scale, bool):
            raise ValueError(f"learn_scale must be a bool; got {self.learn_scale!r}")


def class_first_shape(support_y: torch.Tensor) -> tuple[int, int]:
    """``(N, K)`` of class-first support labels; ``ValueError`` if they are not class-first.

    Class-first labels are ``[0]*K + [1]*K + ... + [N-1]*K`` (in every task of a batch).

    Shape:
        - support_y: ``(..., N*K)`` integer labels
    """
    if support_y.ndim < 1 or support_y.dtype.is_floating_point or support_y.dtype == torch.bool:
        raise ValueError(f"support_y must be integer labels (..., N*K); got {support_y.dtype} "
                         f"{preview(support_y)}")
    n = support_y.shape[-1]
    ways = int(support_y.max()) + 1 if support_y.numel() else 0
    if ways >= 1 and n % ways == 0:
        expected = torch.arange(ways, device=support_y.device).repeat_interleave(n // ways)
        if torch.equal(support_y, expected.expand_as(support_y).to(support_y.dtype)):
            return ways, n // ways
    raise ValueError(
        "support_y must be class-first labels 0..N-1, [0]*K + [1]*K + ... + [N-1]*K; "
        f"got {preview(support_y)}"
    )


def prototypes(z_support: torch.Tensor, ways: int) -> torch.Tensor:
    """Class prototypes ``c_k``: the mean embedded support example of each class (eq. 1).

    Args:
        z_support: embedded support set, class-first (all ``K`` shots of class 0 first).
        ways: number of classes ``N``.

    Shape:
        - z_support: ``(..., N*K, D)``
        - returns: ``(..., N, D)``
    """
    check_int("ways", ways)
    if z_support.ndim < 2 or z_support.shape[-2] % ways:
        raise ValueError(
            f"z_support must be (..., N*K, D) with N*K divisible by ways={ways}; "
            f"got {tuple(z_support.shape)}"
        )
    shots = z_support.shape[-2] // ways
    return z_support.unflatten(-2, (ways, shots)).mean(-2)  # (..., N, K, D) -> (..., N, D)


def protonet_logits(
    z_support: torch.Tensor,
    support_y: torch.Tensor,
    z_query: torch.Tensor,
    *,
    metric: str = "sqeuclidean",
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Logits of eq. 2: ``-scale * ||z_query - c_k||^2`` (or ``scale * cos(z_query, c_k)``).

    A softmax over the last axis gives :math:`p_\\phi(y = k \\mid x)`. Leading batch axes
    (tasks of a meta-batch) are allowed and kept.

    Args:
        z_support: embedded support set, class-first.
        support_y: its labels, class-first ``[0]*K + ... + [N-1]*K`` (checked).
        z_query: embedded queries.
        metric: ``"sqeuclidean"`` (the paper) or ``"cosine"``.
        scale: multiplies the logits (a float or a learned scalar tensor); 1 in the paper.

    Shape:
        - z_support: ``(..., N*K, D)``, support_y: ``(..., N*K)``
        - z_query: ``(..., M, D)``
        - returns: ``(..., M, N)``
    """
    check_choice("metric", metric, METRICS)
    if (z_support.ndim < 2 or z_support.shape[:-1] != support_y.shape
            or z_query.shape[:-2] != z_support.shape[:-2]
            or z_query.shape[-1] != z_support.shape[-1]):
        raise ValueError(
            "expected z_support (..., N*K, D), support_y (..., N*K) and z_query (..., M, D); "
            f"got {tuple(z_support.shape)}, {tuple(support_y.shape)} and {tuple(z_query.shape)}"
        )
    ways, _ = class_first_shape(support_y)
    c = prototypes(z_support, ways)  # (..., N, D)
    if metric == "cosine":
        cos = F.normalize(z_query, dim=-1) @ F.normalize(c, dim=-1).transpose(-1, -2)
        return scale * cos  # (..., M, N)
    d = (z_query.unsqueeze(-2) - c.unsqueeze(-3)).pow(2).sum(-1)  # (..., M, N, D) -> (..., M, N)
    return -scale * d


def embed_tasks(
    encoder: nn.Module, support_x: torch.Tensor, query_x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed the supports and queries of ``T`` tasks in ONE encoder forward.

    One forward is faster than ``2T`` small ones, and with a batch-statistics norm (the
    default :class:`~companion.nets.BatchNorm`) it normalises over all ``T * (N*K + M)``
    images together.

    Shape:
        - support_x: ``(T, N*K, ...)``, query_x: ``(T, M, ...)``
        - returns: ``z_support (T, N*K, D)``, ``z_query (T, M, D)``
    """
    if (support_x.ndim < 2 or support_x.shape[:1] != query_x.shape[:1]
            or support_x.shape[2:] != query_x.shape[2:]):
        raise ValueError("support_x (T, N*K, ...) and query_x (T, M, ...) must share T and the "
                         f"shape of one input; got "
                         f"{tuple(support_x.shape)} and {tuple(query_x.shape)}")
    n_support = support_x.shape[1]
    x = torch.cat([support_x, query_x], dim=1)  # (T, N*K + M, ...)
    z = encoder(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # (T * (N*K + M), D) -> (T, ., D)
    return z[:, :n_support], z[:, n_support:]


def check_task_batch(batch: TaskBatch) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``batch`` is a well-shaped :class:`TaskBatch`."""
    if not isinstance(batch, TaskBatch):
        hint = " (wrap it: TaskBatch.stack([episode]))" if isinstance(batch, Episode) else ""
        raise TypeError(f"meta_loss expects a TaskBatch; got {type(batch).__name__}{hint}")
    if (batch.support_y.ndim != 2 or batch.query_y.ndim != 2
            or batch.support_x.shape[:2] != batch.support_y.shape
            or batch.query_x.shape[:2] != batch.query_y.shape):
        raise ValueError(
            "a TaskBatch needs support_x (T, N*K, ...), support_y (T, N*K), query_x (T, M, ...) "
            f"and query_y (T, M); got {tuple(batch.support_x.shape)}, "
            f"{tuple(batch.support_y.shape)}, {tuple(batch.query_x.shape)}, "
            f"{tuple(batch.query_y.shape)}"
        )


class ProtoNet(nn.Module):
    """A prototypical network around any encoder ``f_phi`` (images -> vectors).

    Args:
        encoder: the embedding network ``f_phi``, ``(B, ...) -> (B, D)``.
        config: the method's hyper-parameters (:class:`ProtoNetConfig`).

    Example:
        >>> net = ProtoNet(nn.Identity())
        >>> episode = Episode(torch.tensor([[0.0], [4.0]]), torch.tensor([0, 1]),
        ...                   torch.tensor([[1.0], [3.5]]), torch.tensor([0, 1]))
        >>> net.classify(episode).argmax(-1)
        tensor([0, 1])
    """

    def __init__(self, encoder: nn.Module, config: ProtoNetConfig = ProtoNetConfig()) -> None:
        super().__init__()
        if not isinstance(config, ProtoNetConfig):
            raise TypeError(f"config must be a ProtoNetConfig; got {type(config).__name__}")
        self.encoder = encoder
        self.config = config
        if config.learn_scale:
            self.scale: float | nn.Parameter = nn.Parameter(torch.tensor(float(config.scale)))
        else:
            self.scale = float(config.scale)

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean cross-entropy ``J(phi) = -log p_phi(y | x)`` over the queries of all tasks.

        Shape:
            - batch: a :class:`TaskBatch` of ``T`` class-first episodes
            - returns: a scalar loss and ``{"accuracy", "loss"}`` floats
        """
        check_task_batch(batch)
        z_support, z_query = embed_tasks(self.encoder, batch.support_x, batch.query_x)
        logits = protonet_logits(z_support, batch.support_y, z_query,
                                 metric=self.config.metric, scale=self.scale)  # (T, NQ, N)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        accuracy = (logits.argmax(-1) == batch.query_y).float().mean()
        return loss, {"accuracy": float(accuracy), "loss": float(loss.detach())}

    def classify(self, episode: Episode) -> torch.Tensor:
        """Query logits of one episode (eq. 2), shape ``(N*Q, N)``."""
        if not isinstance(episode, Episode):
            raise TypeError(f"classify expects an Episode; got {type(episode).__name__}")
        z_support, z_query = embed_tasks(self.encoder, episode.support_x[None],
                                         episode.query_x[None])  # (1, NK, D), (1, NQ, D)
        return protonet_logits(z_support[0], episode.support_y, z_query[0],
                               metric=self.config.metric, scale=self.scale)  # (NQ, N)

    def extra_repr(self) -> str:
        return f"metric={self.config.metric!r}, scale={float(self.scale):g}"
