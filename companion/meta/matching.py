r"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, 2016).

A matching network labels a query :math:`\hat x` with a weighted vote of the support labels
(Vinyals et al., eq. 1), where the weights are an attention over the support set
:math:`S = \{(x_i, y_i)\}_{i=1}^{k}` (here ``k = N*K``) and :math:`y_i` is one-hot:

.. math::

    \hat y = \sum_{i=1}^{k} a(\hat x, x_i)\, y_i , \tag{1}

    a(\hat x, x_i) = \frac{e^{c(f(\hat x), g(x_i))}}{\sum_{j=1}^{k} e^{c(f(\hat x), g(x_j))}},
    \tag{2}

with :math:`c` the cosine similarity. The model is a differentiable nearest-neighbour
classifier: :math:`\hat y` is a distribution over the ``N`` classes, and training minimises
:math:`-\log \hat y_{y}` of each query's true class :math:`y` (sec. 2.2, "matching train
and test conditions" by training on episodes). We compute eq. 1 literally and take its log,
clamped at the smallest positive float so a vanishing probability gives a large finite loss
instead of ``inf``. Without full-context embeddings :math:`f = g` is the encoder.

**Full-context embeddings (FCE, sec. 2.1.2 and appendix).** Both embeddings may see the
whole support set. The support embedding is :math:`g'` (the encoder) plus a bidirectional
LSTM over the support in its order (class-first here), with skip connection (appendix A.2):

.. math::

    g(x_i, S) = \vec h_i + \overleftarrow h_i + g'(x_i).

The query embedding is an LSTM run for ``K`` steps of attention "reads" over
:math:`g(S)` (appendix A.1, eq. 3-6), :math:`f(\hat x, S) = \mathrm{attLSTM}(f'(\hat x),
g(S), K) = h_K`:

.. math::

    \hat h_k, c_k &= \mathrm{LSTM}(f'(\hat x), [h_{k-1}, r_{k-1}], c_{k-1}), \tag{3}

    h_k &= \hat h_k + f'(\hat x), \tag{4}

    r_{k-1} &= \textstyle\sum_i a(h_{k-1}, g(x_i))\, g(x_i), \tag{5}

    a(h_{k-1}, g(x_i)) &= \operatorname{softmax}_i(h_{k-1}^\top g(x_i)). \tag{6}

Eq. 3 makes the state :math:`[h, r]` of size ``2D`` while eq. 4 needs an output of size
``D``. An LSTM's gates are linear in the concatenation of its input and state, so feeding
:math:`r_{k-1}` with the *input*, :math:`\mathrm{LSTMCell}([f'(\hat x), r_{k-1}], (h_{k-1},
c_{k-1}))`, gives the same gates with a ``D``-sized output; that is what we do. We start
from :math:`h_0 = c_0 = 0` (so the first read is the mean of :math:`g(S)`). ``K`` is not
given in the paper.

Embedding: as in :mod:`companion.meta.protonet`, all supports and queries of a meta-batch go
through the encoder in one forward, so a batch-statistics norm normalises over the meta-batch
in training and over the episode in :meth:`MatchingNet.classify`.

References:
    Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, *Matching Networks for One Shot
    Learning*, NeurIPS 2016.

Example:
    >>> z_support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> cosine_attention(torch.tensor([[1.0, 0.0]]), z_support)  # softmax of (1, 0)
    tensor([[0.7311, 0.2689]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from companion.checks import check_int, check_positive, preview
from companion.data.episodes import Episode, TaskBatch
from companion.meta.protonet import check_task_batch, embed_tasks


@dataclass(frozen=True)
class MatchingConfig:
    """What defines a matching network.

    ``fce`` and ``fce_steps`` are the paper's full-context embeddings; ``scale`` multiplies
    the cosine of eq. 2 (the paper has none, i.e. 1). The training episodes (the test's N
    and K: "matching train and test conditions", sec. 2.2) and the optimiser (the paper
    gives none; we use Snell et al.'s Adam at 1e-3, halved every 2,000 episodes, so the two
    methods compare like with like) belong to the training loop: see the ``matchingnet``
    entry of :data:`companion.methods.REGISTRY`.
    """

    fce: bool = False  # full-context embeddings (sec. 2.1.2); the paper's Omniglot nets omit them
    fce_steps: int = 5  # K, the attLSTM's reads (appendix A.1); not given in the paper
    scale: float = 1.0  # multiplies the cosine in eq. 2; the paper has none, i.e. 1

    def __post_init__(self) -> None:
        if not isinstance(self.fce, bool):
            raise ValueError(f"fce must be a bool; got {self.fce!r}")
        check_int("fce_steps", self.fce_steps)
        check_positive("scale", self.scale)


def cosine_attention(
    z_query: torch.Tensor, z_support: torch.Tensor, *, scale: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Attention ``a(x_hat, x_i)`` of eq. 2: a softmax over the support of cosine similarities.

    Shape:
        - z_query: ``(..., M, D)`` (``f(x_hat)``), z_support: ``(..., k, D)`` (``g(x_i)``)
        - returns: ``(..., M, k)``, rows sum to 1
    """
    if (z_query.ndim < 2 or z_query.shape[:-2] != z_support.shape[:-2]
            or z_query.shape[-1] != z_support.shape[-1]):
        raise ValueError(f"expected z_query (..., M, D) and z_support (..., k, D); got "
                         f"{tuple(z_query.shape)} and {tuple(z_support.shape)}")
    c = F.normalize(z_query, dim=-1) @ F.normalize(z_support, dim=-1).transpose(-1, -2)
    return torch.softmax(scale * c, dim=-1)  # (..., M, k)


def matching_log_probs(
    z_support: torch.Tensor,
    support_y: torch.Tensor,
    z_query: torch.Tensor,
    *,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``log y_hat`` of eq. 1: the log of the attention-weighted sum of one-hot labels.

    Labels need not be class-first, but every class ``0..N-1`` must occur in the support.

    Shape:
        - z_support: ``(..., k, D)``, support_y: ``(..., k)`` labels ``0..N-1``
        - z_query: ``(..., M, D)``
        - returns: ``(..., M, N)`` log-probabilities
    """
    if support_y.shape != z_support.shape[:-1]:
        raise ValueError(f"support_y must be (..., k) for z_support (..., k, D); got "
                         f"{tuple(support_y.shape)} and {tuple(z_support.shape)}")
    if support_y.dtype.is_floating_point or support_y.dtype == torch.bool or support_y.numel() == 0:
        raise ValueError(f"support_y must be integer labels 0..N-1; got {support_y.dtype} "
                         f"{preview(support_y)}")
    if int(support_y.min()) < 0:
        raise ValueError(f"support_y must be labels 0..N-1; got {preview(support_y)}")
    y = F.one_hot(support_y, int(support_y.max()) + 1).to(z_support.dtype)  # (..., k, N)
    if not bool((y.sum(-2) > 0).all()):
        raise ValueError("every class 0..N-1 must have a support example in every task; "
                         f"got support_y {preview(support_y)}")
    a = cosine_attention(z_query, z_support, scale=scale)  # (..., M, k)
    y_hat = a @ y  # eq. 1: (..., M, k) @ (..., k, N) -> (..., M, N)
    return y_hat.clamp_min(torch.finfo(y_hat.dtype).tiny).log()


class FullContextEmbedding(nn.Module):
    """``g(x_i, S)`` (bidirectional LSTM, appendix A.2) and ``f(x_hat, S)`` (attLSTM, A.1).

    Args:
        dim: the encoder's feature dimension ``D``.
        steps: ``K``, the attLSTM's processing steps.
    """

    def __init__(self, dim: int, steps: int) -> None:
        super().__init__()
        self.dim, self.steps = dim, steps
        self.g_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.f_cell = nn.LSTMCell(2 * dim, dim)  # input [f'(x_hat), r_{k-1}], state (h, c)

    def g(self, g_prime: torch.Tensor) -> torch.Tensor:
        """Support embeddings ``g = h_fwd + h_bwd + g'``. Shape: ``(T, k, D) -> (T, k, D)``."""
        h, _ = self.g_lstm(g_prime)  # (T, k, 2D): forward and backward hidden states
        h_forward, h_backward = h.chunk(2, dim=-1)
        return h_forward + h_backward + g_prime

    def f(self, f_prime: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Query embeddings ``h_K`` (eq. 3-6). Shape: ``(T, M, D), (T, k, D) -> (T, M, D)``."""
        t, m, d = f_prime.shape
        x = f_prime.reshape(t * m, d)  # every query runs its own attLSTM
        h, c = torch.zeros_like(x), torch.zeros_like(x)  # h_0 = c_0 = 0
        for _ in range(self.steps):
            a = torch.softmax(h.view(t, m, d) @ g.transpose(1, 2), dim=-1)  # eq. 6: (T, M, k)
            r = (a @ g).reshape(t * m, d)  # eq. 5: (T, M, D)
            h_hat, c = self.f_cell(torch.cat([x, r], dim=-1), (h, c))  # eq. 3
            h = h_hat + x  # eq. 4
        return h.view(t, m, d)

    def forward(
        self, z_support: torch.Tensor, z_query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g(S), f(queries, S))`` from the encoder's ``g'(S)`` and ``f'(queries)``."""
        if z_support.ndim != 3 or z_support.shape[-1] != self.dim or z_query.ndim != 3 \
                or z_query.shape[::2] != z_support.shape[::2]:
            raise ValueError(f"FullContextEmbedding expects (T, k, {self.dim}) and "
                             f"(T, M, {self.dim}); got {tuple(z_support.shape)} and "
                             f"{tuple(z_query.shape)}")
        g = self.g(z_support)
        return g, self.f(z_query, g)


class MatchingNet(nn.Module):
    """A matching network around any encoder (``f' = g'``), with optional FCE.

    Args:
        encoder: the embedding network, ``(B, ...) -> (B, D)``.
        config: the method's hyper-parameters (:class:`MatchingConfig`).
        feature_dim: the encoder's output size ``D``; required when ``config.fce``.

    Example:
        >>> net = MatchingNet(nn.Identity())
        >>> episode = Episode(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]),
        ...                   torch.tensor([[2.0, 0.1], [0.2, 3.0]]), torch.tensor([0, 1]))
        >>> net.classify(episode).argmax(-1)
        tensor([0, 1])
    """

    def __init__(
        self,
        encoder: nn.Module,
        config: MatchingConfig = MatchingConfig(),
        *,
        feature_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, MatchingConfig):
            raise TypeError(f"config must be a MatchingConfig; got {type(config).__name__}")
        self.encoder = encoder
        self.config = config
        self.fce: FullContextEmbedding | None = None
        if config.fce:
            check_int("fce=True needs feature_dim, the encoder's output size D (e.g. "
                      "Conv4.out_features(28)), which", feature_dim)
            self.fce = FullContextEmbedding(feature_dim, config.fce_steps)

    def _log_probs(self, support_x: torch.Tensor, support_y: torch.Tensor,
                   query_x: torch.Tensor) -> torch.Tensor:
        z_support, z_query = embed_tasks(self.encoder, support_x, query_x)  # (T, k, D), (T, M, D)
        if self.fce is not None:
            z_support, z_query = self.fce(z_support, z_query)  # g(S), f(x_hat, S)
        return matching_log_probs(z_support, support_y, z_query, scale=self.config.scale)

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean ``-log y_hat_y`` over the queries of all tasks (eq. 1).

        Shape:
            - batch: a :class:`TaskBatch` of ``T`` episodes
            - returns: a scalar loss and ``{"accuracy", "loss"}`` floats
        """
        check_task_batch(batch)
        log_p = self._log_probs(batch.support_x, batch.support_y, batch.query_x)  # (T, M, N)
        loss = F.nll_loss(log_p.flatten(0, 1), batch.query_y.flatten())
        accuracy = (log_p.argmax(-1) == batch.query_y).float().mean()
        return loss, {"accuracy": float(accuracy), "loss": float(loss.detach())}

    def classify(self, episode: Episode) -> torch.Tensor:
        """Query log-probabilities ``log y_hat`` of one episode, shape ``(N*Q, N)``."""
        if not isinstance(episode, Episode):
            raise TypeError(f"classify expects an Episode; got {type(episode).__name__}")
        return self._log_probs(episode.support_x[None], episode.support_y[None],
                               episode.query_x[None])[0]
