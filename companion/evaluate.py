r"""Episodic evaluation with 95% confidence intervals, and the nearest-neighbour baseline.

Few-shot results are reported as the mean accuracy over many test episodes (600 is the
convention since Vinyals et al. 2016 and Finn et al. 2017) with a 95% confidence interval
from the normal approximation to the mean:

.. math::

    \bar a = \frac{1}{n}\sum_{e=1}^{n} a_e, \qquad
    \mathrm{CI}_{95} = 1.96\,\frac{s}{\sqrt{n}}, \qquad
    s^2 = \frac{1}{n-1}\sum_{e=1}^{n} (a_e - \bar a)^2 ,

where :math:`a_e` is the query accuracy of episode :math:`e`. (Some code uses the
population standard deviation, dividing by :math:`n`; the two intervals differ by the
factor :math:`\sqrt{n / (n - 1)}`.)

The simplest few-shot classifier needs no learning at all: label each query with the
class of its nearest support image. Run on raw pixels it is the bar every method in the
book must clear.

**Probes of a frozen encoder.** A self-supervised encoder is judged by three probes that
train nothing but a classifier on its features: a linear probe, a ``k``-nearest-neighbour
vote, and a few-shot prototype classifier. All three read features from :func:`embed`,
which runs the encoder in eval mode in chunks of images taken in dataset order, i.e. class
order. An image's features are a function of that image alone only if the encoder's norm
layers are: ``BatchNorm(track_running_stats=True)`` (the self-supervised encoders,
``Conv4(..., norm="batch", track_running_stats=True)``), ``GroupNorm`` or no norm. With the
meta-learners' transductive :class:`~companion.nets.BatchNorm` (batch statistics in eval
mode too) the features of an image would change with the other images of its chunk, and a
chunk of one class would be normalised by that class alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from companion.checks import check_choice, check_int
from companion.data.episodes import Episode, EpisodeSampler
from companion.meta.protonet import METRICS, class_first_shape, prototypes


@dataclass(frozen=True)
class EvalResult:
    """Accuracy over ``episodes`` test episodes, as fractions in ``[0, 1]``.

    Attributes:
        accuracy: mean query accuracy over the episodes.
        ci95: half-width of the 95% confidence interval of the mean.
        episodes: how many episodes were evaluated.
        accuracies: the accuracy of each episode.
    """

    accuracy: float
    ci95: float
    episodes: int
    accuracies: tuple[float, ...]

    def __str__(self) -> str:
        return f"{100 * self.accuracy:.2f} +- {100 * self.ci95:.2f} % ({self.episodes} episodes)"


def mean_ci95(values: Iterable[float] | torch.Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * s / sqrt(n)`` (``s`` with ``n - 1``).

    With a single value the interval is undefined; it is reported as ``nan``.
    """
    v = torch.as_tensor(list(values) if not isinstance(values, torch.Tensor) else values,
                        dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("cannot average an empty list of accuracies")
    if v.numel() == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))


def pairwise_distance(
    a: torch.Tensor, b: torch.Tensor, metric: str = "sqeuclidean"
) -> torch.Tensor:
    """Distances between every row of ``a`` and every row of ``b`` (flattened).

    ``sqeuclidean`` is :math:`\\lVert a_i - b_j \\rVert^2`; ``cosine`` is
    :math:`1 - \\cos(a_i, b_j)`.

    Shape:
        - a: ``(n, ...)``, b: ``(m, ...)`` with the same trailing size
        - returns: ``(n, m)``
    """
    check_choice("metric", metric, METRICS)
    a, b = a.flatten(1), b.flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"rows must have the same size; got {a.shape[1]} and {b.shape[1]}")
    if metric == "cosine":
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        return 1.0 - a @ b.T
    # ||a||^2 - 2 a.b + ||b||^2, clamped: rounding can make it slightly negative.
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp_min_(0.0)


def nearest_neighbour_logits(
    support_z: torch.Tensor,
    support_y: torch.Tensor,
    query_z: torch.Tensor,
    *,
    metric: str = "sqeuclidean",
) -> torch.Tensor:
    """1-nearest-neighbour scores: ``logits[j, c] = -min_{i: y_i = c} d(q_j, s_i)``.

    The arg-max of each row is the label of the nearest support example (Cover & Hart
    1967). Inputs may be images or feature vectors.

    Shape:
        - support_z: ``(N*K, ...)``, support_y: ``(N*K,)`` labels ``0..N-1``
        - query_z: ``(M, ...)``
        - returns: ``(M, N)``
    """
    d = pairwise_distance(query_z, support_z, metric)  # (M, N*K)
    ways = int(support_y.max()) + 1
    logits = torch.full((d.shape[0], ways), -math.inf, dtype=d.dtype, device=d.device)
    index = support_y.to(d.device).unsqueeze(0).expand_as(d)
    return logits.scatter_reduce(1, index, -d, reduce="amax")


def pixel_nearest_neighbour(episode: Episode, metric: str = "sqeuclidean") -> torch.Tensor:
    """The pixel-space 1-NN baseline: logits for the queries of ``episode``, shape ``(N*Q, N)``."""
    return nearest_neighbour_logits(
        episode.support_x, episode.support_y, episode.query_x, metric=metric
    )


def episode_accuracy(scores: torch.Tensor, query_y: torch.Tensor) -> float:
    """Fraction of queries classified right; ``scores`` are logits ``(M, N)`` or labels ``(M,)``."""
    predicted = scores.argmax(-1) if scores.ndim == 2 else scores
    if predicted.shape != query_y.shape:
        raise ValueError(
            f"expected one prediction per query ({tuple(query_y.shape)}); "
            f"got scores of shape {tuple(scores.shape)}"
        )
    return float((predicted == query_y.to(predicted.device)).float().mean())


def evaluate_episodes(
    classify: Callable[[Episode], torch.Tensor],
    sampler: EpisodeSampler,
    episodes: int = 600,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    grad: bool = False,
) -> EvalResult:
    """Mean query accuracy of ``classify`` over ``episodes`` episodes, with its 95% CI.

    Args:
        classify: maps an :class:`Episode` to query logits ``(N*Q, N)`` or labels ``(N*Q,)``.
        sampler: where the test episodes come from (seed it for a reproducible table).
        episodes: number of episodes.
        device: move each episode there first (default: leave it where it is).
        progress: show a progress bar.
        grad: keep autograd on while classifying (gradient-based learners adapt on the
            support set); off by default, which saves memory and time.
    """
    check_int("episodes", episodes)
    accuracies = []
    iterator = sampler.episodes(episodes)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=episodes, desc="episodes", leave=False)
    with torch.set_grad_enabled(grad):
        for episode in iterator:
            if device is not None:
                episode = episode.to(device)
            accuracies.append(episode_accuracy(classify(episode), episode.query_y))
    mean, ci = mean_ci95(accuracies)
    return EvalResult(mean, ci, episodes, tuple(accuracies))


# ---------------------------------------------------------------- probes of a frozen encoder
# How good is an encoder that never saw a label? Three probes, each training nothing but a
# classifier on top of frozen features (see the module docstring).


@torch.no_grad()
def embed(encoder: torch.nn.Module, images: torch.Tensor, *,
          batch_size: int = 512) -> torch.Tensor:
    """Features of ``images`` from ``encoder`` in eval mode, batch by batch, without gradient.

    The encoder is put in eval mode for the call and given back in the mode it had. The
    features of an image depend on that image alone, and not on ``batch_size`` or on which
    images share its chunk, only when the encoder's norm layers use running statistics in
    eval mode (``BatchNorm(track_running_stats=True)``, ``nn.BatchNorm2d``) or are per
    image (``GroupNorm``, none). With the transductive default
    ``BatchNorm(track_running_stats=False)`` each chunk is normalised with its own
    statistics, the last chunk perhaps with those of a few images (module docstring).

    The images go to the encoder's device (that of its first parameter or buffer; the
    images' own device if it has neither); the features come back on it.

    Shape:
        - images: ``(M, C, H, W)`` (any ``(M, ...)`` the encoder takes); returns ``(M, D)``
    """
    check_int("batch_size", batch_size)
    if images.ndim < 1 or len(images) == 0:
        raise ValueError(f"embed needs at least one image (M, ...); got {tuple(images.shape)}")
    anchor = next(iter(encoder.parameters()), None)
    anchor = next(iter(encoder.buffers()), None) if anchor is None else anchor
    device = images.device if anchor is None else anchor.device
    was_training = encoder.training
    encoder.eval()
    try:
        return torch.cat([encoder(images[i:i + batch_size].to(device))
                          for i in range(0, len(images), batch_size)])
    finally:
        encoder.train(was_training)


def prototype_probe(encoder: torch.nn.Module, episode: Episode,
                    metric: str = "cosine") -> torch.Tensor:
    r"""The few-shot probe: a prototype classifier on frozen features.

    Class ``c``'s prototype is the mean feature of its support images (Snell et al., 2017,
    eq. 1, :func:`companion.meta.protonet.prototypes`); a query's logits are minus its
    distances to the prototypes. ``cosine`` (the default) suits self-supervised features,
    whose scale carries no meaning (``bench/ssl_table.py`` reports this probe). The
    episode must be class-first (as :class:`EpisodeSampler` draws them); a ``ValueError``
    says so otherwise. The features come from :func:`embed` (eval mode, one chunk).

    Shape:
        - returns: logits ``(N*Q, N)``
    """
    check_choice("metric", metric, METRICS)
    ways, _ = class_first_shape(episode.support_y)  # (N, K)
    z = embed(encoder, torch.cat([episode.support_x, episode.query_x]))
    support, query = z[: len(episode.support_y)], z[len(episode.support_y):]
    return -pairwise_distance(query, prototypes(support, ways), metric)  # (N*Q, N)


def split_per_class(labels: torch.Tensor, train_fraction: float = 0.5
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a per-class split: the first ``train_fraction`` of each class's images
    (in dataset order: for Omniglot, drawers) for training a probe, the rest for testing it.

    Shape:
        - labels: ``(M,)``; returns two index tensors that partition ``0..M-1``
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1); got {train_fraction!r}")
    train, test = [], []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        cut = max(1, min(len(members) - 1, round(train_fraction * len(members))))
        train.append(members[:cut])
        test.append(members[cut:])
    return torch.cat(train), torch.cat(test)


def linear_probe(train_z: torch.Tensor, train_y: torch.Tensor, test_z: torch.Tensor,
                 test_y: torch.Tensor, *, c: float = 1.0, max_iter: int = 1_000) -> float:
    """Test accuracy of multinomial logistic regression on frozen features.

    scikit-learn's ``LogisticRegression`` (L-BFGS, L2 penalty ``1/c``) on features
    standardised with the training set's mean and standard deviation, the usual linear
    evaluation of self-supervised representations (e.g. Chen et al., 2020, sec. B.6).

    Shape:
        - train_z: ``(M, D)``, train_y: ``(M,)``, test_z: ``(M', D)``, test_y: ``(M',)``
    """
    from sklearn.linear_model import LogisticRegression

    check_int("max_iter", max_iter)
    mean, std = train_z.mean(0), train_z.std(0).clamp_min(1e-8)
    train = ((train_z - mean) / std).double().cpu().numpy()
    test = ((test_z - mean) / std).double().cpu().numpy()
    model = LogisticRegression(C=c, max_iter=max_iter)
    model.fit(train, train_y.cpu().numpy())
    return float((model.predict(test) == test_y.cpu().numpy()).mean())


def knn_probe(train_z: torch.Tensor, train_y: torch.Tensor, test_z: torch.Tensor,
              test_y: torch.Tensor, *, k: int = 20, temperature: float | None = 0.07) -> float:
    r"""Test accuracy of a ``k``-nearest-neighbour vote on cosine similarity.

    The default is the weighted vote of Wu et al. (2018, eq. 7) with DINO's settings
    (Caron et al., 2021, sec. 4.1: ``k = 20``, :math:`\tau = 0.07`): the neighbour with
    cosine similarity :math:`s` adds :math:`\exp(s / \tau)` to its class.
    ``temperature=None`` is a plain majority vote. Ties between classes go to the class
    whose votes come from nearer neighbours: the neighbour of rank ``r`` (0 = nearest)
    weighs ``1 + 1e-6 (k - r)`` more.

    Shape:
        - as :func:`linear_probe`
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(train_z):
        raise ValueError(f"k must be an int in 1..{len(train_z)}; got {k!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive or None; got {temperature!r}")
    similarity = 1 - pairwise_distance(test_z, train_z, "cosine")  # (M', M)
    nearest, neighbours = similarity.topk(k, dim=1)  # (M', k), nearest first
    classes = int(max(train_y.max(), test_y.max())) + 1
    votes = torch.zeros(len(test_z), classes, dtype=torch.float64, device=test_z.device)
    weight = 1 + 1e-6 * torch.arange(k, 0, -1, dtype=torch.float64, device=test_z.device)
    if temperature is not None:
        weight = weight * (nearest.double() / temperature).exp()
    votes.scatter_add_(1, train_y.to(test_z.device)[neighbours], weight.expand(len(test_z), k))
    return float((votes.argmax(1) == test_y.to(votes.device)).double().mean())
