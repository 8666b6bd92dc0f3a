"""Chapter 1's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import math

import torch

from companion.data import Episode
from companion.exercises import ch01


def sample_episode(dataset, ways, shots, queries, generator):  # the book's solution
    classes = torch.randperm(dataset.num_classes, generator=generator)[:ways]
    support, query = [], []
    for c in classes.tolist():
        pool = dataset.class_indices(c)
        pick = pool[torch.randperm(len(pool), generator=generator)[: shots + queries]]
        support.append(pick[:shots])
        query.append(pick[shots:])
    labels = torch.arange(ways)
    return Episode(dataset.images[torch.cat(support)], labels.repeat_interleave(shots),
                   dataset.images[torch.cat(query)], labels.repeat_interleave(queries))


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


def test_sample_episode() -> None:
    assert ch01.check_sample_episode(sample_episode).passed
    assert ch01.check_sample_episode(stub).status == "not done"

    def with_replacement(dataset, ways, shots, queries, generator):  # may repeat an image
        episode = sample_episode(dataset, ways, shots, queries, generator)
        return Episode(episode.support_x, episode.support_y,
                       torch.cat([episode.support_x[:1], episode.query_x[1:]]),
                       episode.query_y)

    def unseeded(dataset, ways, shots, queries, generator):
        return sample_episode(dataset, ways, shots, queries, torch.Generator().manual_seed(
            int(torch.randint(1000, (1,)))))

    def interleaved(dataset, ways, shots, queries, generator):  # labels 0,1,2,..,0,1,2
        e = sample_episode(dataset, ways, shots, queries, generator)
        return Episode(e.support_x, torch.arange(ways).repeat(shots), e.query_x, e.query_y)

    for mistake in (with_replacement, unseeded, interleaved):
        feedback = ch01.check_sample_episode(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)


def test_fraction_inside() -> None:
    def solution(n, m=600):
        return math.erf(1.96 * math.sqrt((1 / m) / (1 / n + 1 / m)) / math.sqrt(2))

    feedback = ch01.check_fraction_inside(solution)
    assert feedback.passed, feedback
    assert "83%" in feedback.message and "54%" in feedback.message and "28%" in feedback.message
    assert ch01.check_fraction_inside(stub).status == "not done"
    assert ch01.check_fraction_inside(lambda n, m=600: 0.95).status == "not right"
    # The usual slip: treating the other mean as exact (sd sigma / sqrt(n) only).
    slip = lambda n, m=600: math.erf(1.96 * math.sqrt(n / m) / math.sqrt(2))  # noqa: E731
    assert ch01.check_fraction_inside(slip).status == "not right"


def test_cosine_predict() -> None:
    def solution(support_x, support_y, query_x):
        s = torch.nn.functional.normalize(support_x.flatten(1), dim=1)
        q = torch.nn.functional.normalize(query_x.flatten(1), dim=1)
        return support_y[(q @ s.T).argmax(1)]

    def euclidean(support_x, support_y, query_x):
        return support_y[torch.cdist(query_x.flatten(1), support_x.flatten(1)).argmin(1)]

    def scores(support_x, support_y, query_x):
        return query_x.flatten(1) @ support_x.flatten(1).T

    assert ch01.check_cosine_predict(solution).passed
    assert ch01.check_cosine_predict(stub).status == "not done"
    assert ch01.check_cosine_predict(scores).status == "not right"
    assert ch01.check_cosine_predict(euclidean).status == "not right"
