"""Chapter 8's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from companion.data import Episode
from companion.exercises import ch08
from companion.ssl.simclr import nt_xent


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


def cross_view_loss(z1, z2, tau):  # the book's solution
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    logits = u2 @ u1.T / tau  # (N, N): row j, the query view of image j against every support
    labels = torch.arange(len(z1))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_cross_view_loss() -> None:
    feedback = ch08.check_cross_view_loss(cross_view_loss)
    assert feedback.passed, feedback
    assert ch08.check_cross_view_loss(stub).status == "not done"
    assert ch08.check_cross_view_loss(lambda z1, z2, tau: None).status == "not done"

    def one_direction(z1, z2, tau):
        u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
        return F.cross_entropy(u2 @ u1.T / tau, torch.arange(len(z1)))

    def unnormalised(z1, z2, tau):
        logits = z2 @ z1.T / tau
        labels = torch.arange(len(z1))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def full(z1, z2, tau):
        return nt_xent(z1, z2, temperature=tau)

    def times_tau(z1, z2, tau):
        return cross_view_loss(z1, z2, 1 / tau)

    hints = {one_direction: "two directions", unnormalised: "normalise", full: "same-view",
             times_tau: "cross-entropy"}
    for mistake, hint in hints.items():
        feedback = ch08.check_cross_view_loss(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
        assert hint in feedback.hint, (mistake.__name__, feedback)


def test_views_as_shots() -> None:
    def solution(z, tau):  # the book's solution
        k = z.shape[1] - 1
        c = F.normalize(z[:, :k].mean(1), dim=1)  # (N, D): mean of the K support views
        q = F.normalize(z[:, k], dim=1)  # (N, D): the query views
        return F.cross_entropy(q @ c.T / tau, torch.arange(len(z)))

    feedback = ch08.check_views_as_shots(solution)
    assert feedback.passed, feedback
    assert ch08.check_views_as_shots(stub).status == "not done"

    def unit_mean(z, tau):  # normalises the views before averaging
        k = z.shape[1] - 1
        u = F.normalize(z, dim=-1)
        c = F.normalize(u[:, :k].mean(1), dim=1)
        return F.cross_entropy(u[:, k] @ c.T / tau, torch.arange(len(z)))

    def with_query(z, tau):  # the query view leaks into its own prototype
        k = z.shape[1] - 1
        c = F.normalize(z.mean(1), dim=1)
        return F.cross_entropy(F.normalize(z[:, k], dim=1) @ c.T / tau, torch.arange(len(z)))

    def squared_euclidean(z, tau):
        k = z.shape[1] - 1
        logits = -torch.cdist(z[:, k], z[:, :k].mean(1)).pow(2) / tau
        return F.cross_entropy(logits, torch.arange(len(z)))

    hints = {unit_mean: "do not normalise", with_query: "query view", squared_euclidean: "cos"}
    for mistake, hint in hints.items():
        feedback = ch08.check_views_as_shots(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
        assert hint in feedback.hint, (mistake.__name__, feedback)


def rotate_episode(episode):  # the book's solution
    ways = episode.ways

    def rotated(x, y):
        return (torch.cat([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)]),
                torch.cat([y + r * ways for r in range(4)]))

    return Episode(*rotated(episode.support_x, episode.support_y),
                   *rotated(episode.query_x, episode.query_y))


def test_rotate_episode() -> None:
    feedback = ch08.check_rotate_episode(rotate_episode)
    assert feedback.passed, feedback
    assert ch08.check_rotate_episode(stub).status == "not done"

    def clockwise(episode):
        ways = episode.ways

        def rotated(x, y):
            return (torch.cat([torch.rot90(x, -r, dims=(-2, -1)) for r in range(4)]),
                    torch.cat([y + r * ways for r in range(4)]))

        return Episode(*rotated(episode.support_x, episode.support_y),
                       *rotated(episode.query_x, episode.query_y))

    def class_major_labels(episode):  # 4c + r, images left rotation-major: not class-first
        e = rotate_episode(episode)
        ways = episode.ways
        relabel = lambda y: 4 * (y % ways) + y // ways  # noqa: E731
        return Episode(e.support_x, relabel(e.support_y), e.query_x, relabel(e.query_y))

    def class_major_sorted(episode):  # 4c + r and reordered class-first: labels look right
        e = rotate_episode(episode)
        ways, k, q = episode.ways, episode.shots, episode.queries
        return Episode(e.support_x.unflatten(0, (4, ways, k)).transpose(0, 1).flatten(0, 2),
                       e.support_y,
                       e.query_x.unflatten(0, (4, ways, q)).transpose(0, 1).flatten(0, 2),
                       e.query_y)

    def support_only(episode):
        e = rotate_episode(episode)
        return Episode(e.support_x, e.support_y, episode.query_x, episode.query_y)

    hints = {clockwise: "clockwise", class_major_labels: "class-major",
             class_major_sorted: "class-major", support_only: "query"}
    for mistake, hint in hints.items():
        feedback = ch08.check_rotate_episode(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
        assert hint in feedback.hint, (mistake.__name__, feedback)
