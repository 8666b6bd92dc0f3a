"""Checks for chapter 8's exercises (contrastive learning is meta-learning).

Example:
    >>> def cross_view_loss(z1, z2, tau):
    ...     raise NotImplementedError("normalise, one N x N matrix, both directions")
    >>> check_cross_view_loss(cross_view_loss).status
    'not done'
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from companion.data import Episode, TaskBatch
from companion.exercises import Feedback, attempt, compare_number, right, wrong
from companion.meta.protonet import protonet_logits
from companion.ssl.simclr import nt_xent
from companion.tasks.rotations import rotate_classes

EX1, EX2, EX3 = "Exercise 8.1", "Exercise 8.2", "Exercise 8.3"


def protonet_views_loss(z_support: torch.Tensor, z_query: torch.Tensor, tau: float) -> torch.Tensor:
    """The package's ProtoNet loss on a views episode: image ``i`` is class ``i``, its
    ``K`` support views class-first, one query each; cosine at scale ``1 / tau``.

    Shape:
        - z_support: ``(N*K, D)``, z_query: ``(N, D)``; returns a scalar
    """
    n = len(z_query)
    labels = torch.arange(n)
    support_y = labels.repeat_interleave(len(z_support) // n)
    logits = protonet_logits(z_support, support_y, z_query, metric="cosine", scale=1 / tau)
    return F.cross_entropy(logits, labels)


def check_cross_view_loss(cross_view_loss: Callable) -> Feedback:
    """Exercise 8.1: NT-Xent without same-view negatives, against the ProtoNet side of the
    identity (chapter 2's ``protonet_logits``, cosine at ``1 / tau``, both directions)."""
    g = torch.Generator().manual_seed(8)
    for n, d, tau in ((6, 5, 0.2), (4, 3, 0.5), (9, 7, 1.0)):
        z1 = 2 * torch.randn(n, d, generator=g, dtype=torch.float64)
        z2 = z1 + torch.randn(n, d, generator=g, dtype=torch.float64)
        run = attempt(EX1, cross_view_loss, z1.clone(), z2.clone(), tau)
        if run.feedback:
            return run.feedback
        if run.value is None:
            return Feedback(EX1, "not done", "cross_view_loss returned None.")
        want = float(protonet_views_loss(z1, z2, tau) + protonet_views_loss(z2, z1, tau)) / 2
        result = compare_number(EX1, run.value, want, atol=1e-6, rtol=1e-6,
                                name=f"your loss (N = {n}, tau = {tau})")
        if result.passed:
            continue
        got = _number(run.value)
        if got is None:
            return result
        near = {  # what a likely slip computes instead
            "the full NT-Xent": (float(nt_xent(z1, z2, temperature=tau)),
                                 "that is the full NT-Xent: leave out the N - 1 same-view "
                                 "negatives of each anchor (W_j = 0)."),
            "one direction": (float(protonet_views_loss(z1, z2, tau)),
                              "average the two directions: view 1 as support and view 2 as "
                              "query, then the mirror."),
            "the other direction": (float(protonet_views_loss(z2, z1, tau)),
                                    "average the two directions: view 1 as support and view "
                                    "2 as query, then the mirror."),
            "raw dot products": (float(_unnormalised(z1, z2, tau)),
                                 "normalise each row to unit length first: sim is the cosine."),
        }
        for what, (value, hint) in near.items():
            if abs(got - value) <= 1e-6 * max(1.0, abs(value)):
                return wrong(EX1, f"{result.message} Your value is {what}.", hint)
        return wrong(EX1, result.message, "sim(z_j^(2), z_k^(1)) / tau for all j, k is one "
                     "N x N matrix; a cross-entropy with targets 0..N-1 along each axis, "
                     "averaged.")
    return right(EX1, "your loss equals the ProtoNet side of the identity (cosine at 1/tau, "
                 "both directions) to 1e-6 on 3 random batches.")


def _number(value: object) -> float | None:
    """``value`` as a float if it is a real number or a one-element tensor, else ``None``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _unnormalised(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    logits = z2 @ z1.T / tau
    labels = torch.arange(len(z1))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def check_views_as_shots(views_as_shots_loss: Callable) -> Feedback:
    """Exercise 8.2: prototypes from ``K`` views of each image, against the package's
    ``protonet_logits`` (cosine at ``1 / tau``)."""
    g = torch.Generator().manual_seed(8)
    for n, k, d, tau in ((5, 3, 4, 0.2), (4, 1, 6, 0.5), (3, 4, 2, 0.2)):
        z = torch.randn(n, k + 1, d, generator=g, dtype=torch.float64)
        z = z * torch.rand(n, k + 1, 1, generator=g, dtype=torch.float64).mul(3).add(0.2)
        run = attempt(EX2, views_as_shots_loss, z.clone(), tau)
        if run.feedback:
            return run.feedback
        if run.value is None:
            return Feedback(EX2, "not done", "views_as_shots_loss returned None.")
        want = float(protonet_views_loss(z[:, :k].flatten(0, 1), z[:, k], tau))
        result = compare_number(EX2, run.value, want, atol=1e-6, rtol=1e-6,
                                name=f"your loss (N = {n}, K = {k}, tau = {tau})")
        if result.passed:
            continue
        got = _number(run.value)
        if got is None:
            return result
        unit = F.normalize(z, dim=-1)
        near = {
            "the mean of unit vectors": (
                float(protonet_views_loss(unit[:, :k].flatten(0, 1), z[:, k], tau)),
                "average the K embeddings themselves (chapter 2's prototype), then take "
                "the cosine to the mean; do not normalise the views before averaging."),
            "a prototype that includes the query view": (
                float(protonet_views_loss(z.flatten(0, 1), z[:, k], tau)),
                "the prototype is the mean of the K support views z[:, :K]; the query "
                "view z[:, K] is what it classifies."),
            "the views flattened view-major": (
                float(protonet_views_loss(z[:, :k].transpose(0, 1).flatten(0, 1), z[:, k],
                                          tau)),
                "class-first: all K views of image 0, then of image 1 (z[:, :K].flatten(0, "
                "1)), or average over dim 1 directly."),
        }
        for what, (value, hint) in near.items():
            if abs(got - value) <= 1e-6 * max(1.0, abs(value)):
                return wrong(EX2, f"{result.message} Your value is {what}.", hint)
        return wrong(EX2, result.message, "prototypes c_i = z[i, :K].mean(0); logits "
                     "cos(z[j, K], c_i) / tau; a cross-entropy with target j.")
    return right(EX2, "your loss equals the package's ProtoNet loss (protonet_logits, cosine "
                 "at 1/tau) for K = 1, 3 and 4 views as shots.")


def _episode(seed: int, ways: int, shots: int, queries: int) -> Episode:
    """A class-first episode of random (asymmetric) 5 x 5 images."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return Episode(torch.rand(ways * shots, 1, 5, 5, generator=g),
                   labels.repeat_interleave(shots),
                   torch.rand(ways * queries, 1, 5, 5, generator=g),
                   labels.repeat_interleave(queries))


def check_rotate_episode(rotate_episode: Callable) -> Feedback:
    """Exercise 8.3: one episode's classes in four rotations, against the package's
    ``rotate_classes(TaskBatch.stack([episode]))[0]`` with ``torch.equal``."""
    for seed, (ways, shots, queries) in enumerate(((3, 2, 1), (2, 1, 3))):
        episode = _episode(seed, ways, shots, queries)
        run = attempt(EX3, rotate_episode, episode)
        if run.feedback:
            return run.feedback
        got, want = run.value, rotate_classes(TaskBatch.stack([episode]))[0]
        if not isinstance(got, Episode):
            return wrong(EX3, f"return an Episode; got {type(got).__name__}.")
        for part, per_class in (("support", shots), ("query", queries)):
            x, y = getattr(got, f"{part}_x"), getattr(got, f"{part}_y")
            wx, wy = getattr(want, f"{part}_x"), getattr(want, f"{part}_y")
            if x.shape != wx.shape:
                return wrong(EX3, f"{part}_x has shape {tuple(x.shape)}; four rotations of "
                             f"a {ways}-way episode's {part} set have {tuple(wx.shape)}.",
                             "rotate the support AND the query set, every class four times.")
            if not torch.equal(y, wy):
                hint = ("label r N + k for class k in rotation r, so the four blocks of the "
                        "rotated episode are the whole episode rotated by 0, 1, 2, 3 "
                        "quarter-turns (rotation-major).")
                if torch.equal(y, _class_major_labels(ways, per_class)):
                    hint = ("your labels are class-major (4 k + r); the package numbers "
                            "rotation-major, r N + k: " + hint)
                return wrong(EX3, f"{part}_y is {y.tolist()}; expected {wy.tolist()}.", hint)
            if not torch.equal(x, wx):
                turned = torch.cat([torch.rot90(getattr(episode, f"{part}_x"), -r, (-2, -1))
                                    for r in range(4)])
                hint = ("r quarter-turns counter-clockwise: torch.rot90(x, r, dims=(-2, -1)); "
                        "block r holds the images of rotation r.")
                if torch.equal(x, turned):
                    hint = "your rotations turn clockwise; " + hint
                elif torch.equal(x, _class_major_images(wx, ways, per_class)):
                    hint = ("your classes are numbered class-major (4 k + r) and sorted; the "
                            "package numbers rotation-major, r N + k: block r is the whole "
                            "episode rotated r times.")
                return wrong(EX3, f"{part}_x differs from rotate_classes' images.", hint)
    return right(EX3, "your rotated episodes equal rotate_classes(TaskBatch.stack([episode]))"
                 "[0] exactly, for two episodes.")


def _class_major_labels(ways: int, per_class: int) -> torch.Tensor:
    """Labels ``4 k + r`` in the rotation-major order of the images."""
    c = torch.arange(ways).repeat_interleave(per_class)
    return torch.cat([4 * c + r for r in range(4)])


def _class_major_images(x: torch.Tensor, ways: int, per_class: int) -> torch.Tensor:
    """Rotation-major images ``(4, N, per_class, ...)`` reordered class-major, class-first."""
    return x.unflatten(0, (4, ways, per_class)).transpose(0, 1).flatten(0, 2)
