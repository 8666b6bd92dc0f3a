"""Chapter 2's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import math

import pytest
import torch

from companion.exercises import ch02


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


# ---- Exercise 2.1: ProtoNet logits by hand ---------------------------------------------------

def logits_solution(z_support, z_query, ways):  # the book's solution
    c = z_support.view(ways, -1, z_support.shape[-1]).mean(1)  # (N, D)
    return -(z_query[:, None, :] - c[None]).pow(2).sum(-1)  # (M, N)


def positive_distances(z_support, z_query, ways):
    return -logits_solution(z_support, z_query, ways)


def not_squared(z_support, z_query, ways):
    return -(-logits_solution(z_support, z_query, ways)).sqrt()


def interleaved_mean(z_support, z_query, ways):  # shots-first reshape: wrong axis
    c = z_support.view(-1, ways, z_support.shape[-1]).mean(0)
    return -(z_query[:, None, :] - c[None]).pow(2).sum(-1)


def transposed(z_support, z_query, ways):
    return logits_solution(z_support, z_query, ways).T


def probabilities(z_support, z_query, ways):
    return logits_solution(z_support, z_query, ways).softmax(-1)


def test_protonet_logits() -> None:
    feedback = ch02.check_protonet_logits(logits_solution)
    assert feedback.passed, feedback
    assert ch02.check_protonet_logits(stub).status == "not done"


@pytest.mark.parametrize("mistake, says", [
    (positive_distances, "negatives"), (not_squared, "not -||z - c_k||^2"),
    (interleaved_mean, "one image of every class"), (transposed, "one row per prototype"),
    (probabilities, "differs from the reference")])
def test_protonet_logits_mistakes(mistake, says) -> None:
    feedback = ch02.check_protonet_logits(mistake)
    assert feedback.status == "not right", feedback
    assert says in feedback.message, feedback


def test_protonet_logits_reference_is_eq_2() -> None:
    # The chapter's hand example: prototypes (0, 1) and (4, 1), query (1, 1) -> -1 and -9.
    z_support = torch.tensor([[0.0, 0.0], [0.0, 2.0], [4.0, 0.0], [4.0, 2.0]])
    assert logits_solution(z_support, torch.tensor([[1.0, 1.0]]), 2).tolist() == [[-1.0, -9.0]]


# ---- Exercise 2.2: the Matching Network's loss floor -----------------------------------------

def floor_solution(ways, scale=1.0):
    return math.log(1 + (ways - 1) * math.exp(-scale))


def test_matching_floor() -> None:
    feedback = ch02.check_matching_floor(floor_solution)
    assert feedback.passed, feedback
    assert "0.905" in feedback.message  # eq. (matching-floor) for N = 5
    assert ch02.check_matching_floor(stub).status == "not done"
    assert ch02.check_matching_floor(lambda ways, scale=1.0: None).status == "not right"


@pytest.mark.parametrize("mistake", [
    lambda ways, scale=1.0: math.log(1 + (ways - 1) / math.e),  # ignores the scale
    lambda ways, scale=1.0: math.log(1 + math.exp(-scale)),  # one wrong class, not N - 1
    lambda ways, scale=1.0: math.log(1 + (ways - 1) * math.exp(-2 * scale)),  # cosines in [-1, 1]
    lambda ways, scale=1.0: math.log(ways),  # uniform attention
])
def test_matching_floor_mistakes(mistake) -> None:
    assert ch02.check_matching_floor(mistake).status == "not right"


def test_matching_floor_is_attained_by_the_best_embedding() -> None:
    # The reference against the package: a query with cosine 1 to its class, 0 to the rest.
    from companion.meta.matching import matching_log_probs

    for ways, shots, scale in [(5, 1, 1.0), (20, 3, 1.0), (5, 2, 10.0)]:
        z_support = torch.eye(ways, dtype=torch.float64).repeat_interleave(shots, 0)
        support_y = torch.arange(ways).repeat_interleave(shots)
        log_p = matching_log_probs(z_support, support_y, torch.eye(ways, dtype=torch.float64),
                                   scale=scale)
        loss = -log_p.diagonal().mean().item()
        assert loss == pytest.approx(ch02.matching_floor_reference(ways, scale), rel=1e-9)


# ---- Exercise 2.3: a ProtoNet is a linear classifier -----------------------------------------

def head_solution(z_support, ways):
    c = z_support.view(ways, -1, z_support.shape[-1]).mean(1)
    head = torch.nn.Linear(z_support.shape[-1], ways, dtype=z_support.dtype)
    with torch.no_grad():
        head.weight.copy_(2 * c)
        head.bias.copy_(-c.pow(2).sum(-1))
    return head


def head_tuple(z_support, ways):
    c = z_support.view(ways, -1, z_support.shape[-1]).mean(1)
    return 2 * c, -c.pow(2).sum(-1)


def test_linear_head() -> None:
    for solution in (head_solution, head_tuple):
        feedback = ch02.check_linear_head(solution)
        assert feedback.passed, feedback
    assert ch02.check_linear_head(stub).status == "not done"


@pytest.mark.parametrize("mistake, says", [
    (lambda z, n: (z.view(n, -1, z.shape[-1]).mean(1), head_tuple(z, n)[1]), "has 2 c_k"),
    (lambda z, n: (head_tuple(z, n)[0], -head_tuple(z, n)[1]), "sign"),
    (lambda z, n: (head_tuple(z, n)[0], -(-head_tuple(z, n)[1]).sqrt()), "-||c_k||^2"),
    (lambda z, n: head_tuple(z, n)[0], "return (W, b)"),
    (lambda z, n: (2 * z.view(-1, n, z.shape[-1]).mean(0), head_tuple(z, n)[1]), "W differs"),
])
def test_linear_head_mistakes(mistake, says) -> None:
    feedback = ch02.check_linear_head(mistake)
    assert feedback.status == "not right", feedback
    assert says in feedback.message, feedback
