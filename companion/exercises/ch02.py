r"""Checks for chapter 2's exercises (metric-based meta-learning).

Each check builds small seeded embeddings (no network, no data set), so it runs in
milliseconds, and compares the student's answer with :mod:`companion.meta.protonet`,
:mod:`companion.meta.matching` or the chapter's formula.

Example:
    >>> def stub(z_support, z_query, ways):
    ...     raise NotImplementedError("compute the prototypes, then -||z - c_k||^2")
    >>> check_protonet_logits(stub).status
    'not done'
    >>> check_matching_floor(lambda ways, scale=1.0: math.log(ways)).status  # uniform votes
    'not right'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from companion.exercises import Feedback, attempt, compare_number, compare_tensors, right, wrong
from companion.meta.protonet import protonet_logits, prototypes

EX1, EX2, EX3 = "Exercise 2.1", "Exercise 2.2", "Exercise 2.3"


def _embeddings(ways: int, shots: int, queries: int, dim: int,
                seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class-first support embeddings ``(N*K, D)``, their labels and query embeddings
    ``(M, D)``, drawn around one random centre per class (float64)."""
    g = torch.Generator().manual_seed(seed)
    centres = 2 * torch.randn(ways, dim, generator=g, dtype=torch.float64)
    z_support = centres.repeat_interleave(shots, 0) + torch.randn(
        ways * shots, dim, generator=g, dtype=torch.float64)
    z_query = centres[torch.randint(ways, (queries,), generator=g)] + torch.randn(
        queries, dim, generator=g, dtype=torch.float64)
    return z_support, torch.arange(ways).repeat_interleave(shots), z_query


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.to(b.dtype), b, atol=1e-6, rtol=1e-5)


def check_protonet_logits(protonet_logits_by_hand: Callable) -> Feedback:
    """Exercise 2.1: ``protonet_logits_by_hand(z_support, z_query, ways)``, the logits
    ``-||z_query - c_k||^2`` of eq. (proto-softmax), against
    :func:`~companion.meta.protonet.protonet_logits`.

    Three shots per class, so that averaging over the wrong axis (shots instead of classes)
    gives different prototypes; the common slips (a sign, a missing square, the axes of the
    result swapped, interleaved shots) are named in the feedback.
    """
    cases = [(torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]]),  # the chapter's
              torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 1.0]]), 2),
             (*_embeddings(5, 3, 7, 6, seed=0), 5)]
    for z_support, support_y, z_query, ways in cases:
        run = attempt(EX1, protonet_logits_by_hand, z_support.clone(), z_query.clone(), ways)
        if run.feedback:
            return run.feedback
        got, want = run.value, protonet_logits(z_support, support_y, z_query)  # (M, N)
        size = f"{ways}-way {len(support_y) // ways}-shot"
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            got = got.detach()
            if _close(-got, want):
                return wrong(EX1, f"on a {size} episode your logits are the distances "
                             "themselves; the logits are their negatives.",
                             "a larger distance must give a smaller logit: return -d.")
            if _close(-got.square(), want):
                return wrong(EX1, f"on a {size} episode your logits are -||z - c_k||, not "
                             "-||z - c_k||^2.", "square the distance: (z - c).pow(2).sum(-1).")
            interleaved = z_support.unflatten(0, (-1, ways)).mean(0)  # mean over the wrong axis
            if _close(got, -torch.cdist(z_query, interleaved).square()):
                return wrong(EX1, f"on a {size} episode your prototypes average one image of "
                             "every class, not the shots of one class.",
                             "class-first support: z_support.view(ways, shots, D).mean(1).")
        if (isinstance(got, torch.Tensor) and got.ndim == 2 and got.shape[::-1] == want.shape
                and got.shape != want.shape):
            return wrong(EX1, f"your logits have shape {tuple(got.shape)}: one row per "
                         f"prototype; the reference has one row per query, {tuple(want.shape)}.",
                         "return (M, N): queries in rows, classes in columns.")
        result = compare_tensors(EX1, got, want, name=f"the logits of a {size} episode",
                                 atol=1e-6, hint="c_k is the mean of the K support "
                                 "embeddings of class k; the logit is -||z - c_k||^2.")
        if not result.passed:
            return result
    return right(EX1, "your logits equal protonet_logits on the chapter's 2-D example and on a "
                 "5-way 3-shot episode.")


def matching_floor_reference(ways: int, scale: float = 1.0) -> float:
    """The lowest query loss of a Matching Network whose cosines lie in ``[0, 1]``:
    ``-log(e^s / (e^s + N - 1)) = log(1 + (N - 1) e^{-s})`` (eq. matching-floor, any shot)."""
    return math.log1p((ways - 1) * math.exp(-scale))


def check_matching_floor(matching_floor: Callable) -> Feedback:
    """Exercise 2.2: ``matching_floor(ways, scale=1.0)``, the smallest possible loss
    ``-log y_hat_y`` of a Matching Network whose (scaled) cosines lie in ``[0, scale]``."""
    for ways, scale in [(5, 1.0), (20, 1.0), (5, 10.0), (2, 0.5), (60, 3.0)]:
        run = attempt(EX2, matching_floor, ways, scale=scale)
        if run.feedback:
            return run.feedback
        result = compare_number(
            EX2, run.value, matching_floor_reference(ways, scale),
            name=f"matching_floor({ways}, scale={scale:g})", atol=1e-6, rtol=1e-4,
            hint="the best embedding has cosine 1 to its own class and 0 to the N - 1 others; "
                 "the attention of eq. (matching-attention) is a softmax of scale * cosine.")
        if not result.passed:
            return result
    shown = (f"5-way: {matching_floor_reference(5):.3g} at scale 1, "
             f"{matching_floor_reference(5, 10.0):.3g} at scale 10; "
             f"20-way: {matching_floor_reference(20):.3g} at scale 1")
    return right(EX2, f"the floor holds ({shown}).")


def check_linear_head(linear_head_from_prototypes: Callable) -> Feedback:
    """Exercise 2.3: ``linear_head_from_prototypes(z_support, ways)``, the weights
    ``W_k = 2 c_k`` and biases ``b_k = -||c_k||^2`` of eq. (proto-linear).

    The answer may be a tuple ``(W, b)`` or an ``nn.Linear``. Right when both equal the
    formula (with the package's prototypes) and the logits ``z W^T + b`` differ from
    ProtoNet's by the same number in every column of a row.
    """
    z_support, support_y, z_query = _embeddings(5, 2, 9, 8, seed=1)
    run = attempt(EX3, linear_head_from_prototypes, z_support.clone(), 5)
    if run.feedback:
        return run.feedback
    answer = run.value
    if isinstance(answer, nn.Linear):
        answer = (answer.weight, answer.bias)
    if not (isinstance(answer, tuple | list) and len(answer) == 2):
        return wrong(EX3, f"return (W, b) or an nn.Linear; got {type(answer).__name__}.")
    w, b = answer
    c = prototypes(z_support, 5)  # (N, D)
    if isinstance(w, torch.Tensor) and _close(w.detach(), c):
        return wrong(EX3, "your weights are the prototypes c_k; eq. (proto-linear) has 2 c_k.",
                     "expand -||z - c||^2 = -z.z + 2 c.z - c.c and read off the weight of z.")
    result = compare_tensors(EX3, w, 2 * c, name="W", hint="W_k = 2 c_k, one row per class.")
    if not result.passed:
        return result
    if isinstance(b, torch.Tensor) and b.shape == (5,):
        b = b.detach()
        if _close(b, c.square().sum(-1)):
            return wrong(EX3, "your biases are +||c_k||^2; the sign is wrong.",
                         "-||z - c||^2 = -z.z + 2 c.z - c.c.")
        if _close(b, -c.norm(dim=-1)):
            return wrong(EX3, "your biases are -||c_k||; they are -||c_k||^2.",
                         "c.pow(2).sum(-1), not c.norm(dim=-1).")
    result = compare_tensors(EX3, b, -c.square().sum(-1), name="b",
                             hint="b_k = -||c_k||^2, a vector of N numbers.")
    if not result.passed:
        return result
    logits = z_query @ w.detach().to(z_query.dtype).T + b.detach().to(z_query.dtype)  # (M, N)
    gap = logits - protonet_logits(z_support, support_y, z_query)  # -||z||^2... + ||z||^2
    spread = (gap - gap.mean(-1, keepdim=True)).abs().max().item()
    return right(EX3, f"W = 2 c_k and b = -||c_k||^2; your logits minus ProtoNet's are the "
                 f"same in every column of a row (spread {spread:.1g}), so the softmaxes agree.")
