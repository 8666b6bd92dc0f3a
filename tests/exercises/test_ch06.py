"""Chapter 6's exercise checks: right for the book's solution, "not done" for the stub,
"not right" for the mistakes a student is likely to make."""

from __future__ import annotations

import math

import torch

from companion.data import Episode
from companion.exercises import ch06


def stub(*args, **kwargs):
    raise NotImplementedError("not written yet")


def test_p_distinct() -> None:
    def solution(classes, per_class, ways):  # the book's solution
        total = classes * per_class
        return math.prod((classes - i) * per_class / (total - i) for i in range(ways))

    def combinatorial(classes, per_class, ways):  # the same number, counted another way
        return math.comb(classes, ways) * per_class ** ways / math.comb(classes * per_class,
                                                                         ways)

    for right in (solution, combinatorial):
        feedback = ch06.check_p_distinct(right)
        assert feedback.passed, (right.__name__, feedback)
    assert ch06.check_p_distinct(stub).status == "not done"
    assert ch06.check_p_distinct(lambda c, m, n: None).status == "not done"

    def with_replacement(classes, per_class, ways):  # the chapter's formula, eq. (umtra-distinct)
        return math.prod((classes - i) / classes for i in range(ways))

    def off_by_one(classes, per_class, ways):  # one factor too many
        total = classes * per_class
        return math.prod((classes - i) * per_class / (total - i) for i in range(ways + 1))

    for mistake in (with_replacement, off_by_one):
        feedback = ch06.check_p_distinct(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
    assert "without replacement" in ch06.check_p_distinct(with_replacement).hint


def cluster_task(images, assignment, ways, shots, queries, generator):  # the book's solution
    sizes = torch.bincount(assignment)
    admissible = (sizes >= shots + queries).nonzero().flatten()
    chosen = admissible[torch.randperm(len(admissible), generator=generator)[:ways]]
    support, query = [], []
    for c in chosen.tolist():
        members = (assignment == c).nonzero().flatten()
        pick = members[torch.randperm(len(members), generator=generator)[: shots + queries]]
        support.append(pick[:shots])
        query.append(pick[shots:])
    labels = torch.arange(ways)
    return Episode(images[torch.cat(support)], labels.repeat_interleave(shots),
                   images[torch.cat(query)], labels.repeat_interleave(queries))


def test_cluster_task() -> None:
    feedback = ch06.check_cluster_task(cluster_task)
    assert feedback.passed, feedback
    assert ch06.check_cluster_task(stub).status == "not done"

    def every_cluster(images, assignment, ways, shots, queries, generator):  # small ones too
        chosen = torch.randperm(int(assignment.max()) + 1, generator=generator)[:ways]
        support, query = [], []
        for c in chosen.tolist():
            members = (assignment == c).nonzero().flatten()
            pick = members[torch.randperm(len(members), generator=generator)[: shots + queries]]
            support.append(pick[:shots])
            query.append(pick[shots:])
        labels = torch.arange(ways)
        return Episode(images[torch.cat(support)], labels.repeat_interleave(shots),
                       images[torch.cat(query)], labels.repeat_interleave(queries))

    def first_members(images, assignment, ways, shots, queries, generator):
        sizes = torch.bincount(assignment)
        admissible = (sizes >= shots + queries).nonzero().flatten()
        chosen = admissible[torch.randperm(len(admissible), generator=generator)[:ways]]
        picks = [(assignment == c).nonzero().flatten()[: shots + queries] for c in chosen]
        labels = torch.arange(ways)
        return Episode(images[torch.cat([p[:shots] for p in picks])],
                       labels.repeat_interleave(shots),
                       images[torch.cat([p[shots:] for p in picks])],
                       labels.repeat_interleave(queries))

    def clusters_with_replacement(images, assignment, ways, shots, queries, generator):
        sizes = torch.bincount(assignment)
        admissible = (sizes >= shots + queries).nonzero().flatten()
        chosen = admissible[torch.randint(len(admissible), (ways,), generator=generator)]
        support, query = [], []
        for c in chosen.tolist():
            members = (assignment == c).nonzero().flatten()
            pick = members[torch.randperm(len(members), generator=generator)[: shots + queries]]
            support.append(pick[:shots])
            query.append(pick[shots:])
        labels = torch.arange(ways)
        return Episode(images[torch.cat(support)], labels.repeat_interleave(shots),
                       images[torch.cat(query)], labels.repeat_interleave(queries))

    def unseeded(images, assignment, ways, shots, queries, generator):
        return cluster_task(images, assignment, ways, shots, queries, torch.Generator().manual_seed(
            int(torch.randint(1000, (1,)))))

    def mixed_labels(images, assignment, ways, shots, queries, generator):  # query order lost
        task = cluster_task(images, assignment, ways, shots, queries, generator)
        return Episode(task.support_x, task.support_y, task.query_x.flip(0), task.query_y)

    for mistake in (every_cluster, first_members, clusters_with_replacement, unseeded,
                    mixed_labels):
        feedback = ch06.check_cluster_task(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)


def test_noise_codes() -> None:
    def solution(z, sigma, m, generator):  # the book's solution
        return z[:, None] + sigma * torch.randn((len(z), m, z.shape[1]), generator=generator)

    feedback = ch06.check_noise_codes(solution)
    assert feedback.passed, feedback
    assert ch06.check_noise_codes(stub).status == "not done"

    def variance(z, sigma, m, generator):
        return z[:, None] + sigma ** 2 * torch.randn((len(z), m, z.shape[1]), generator=generator)

    def shared(z, sigma, m, generator):  # one noise vector per anchor, copied m times
        noise = torch.randn((len(z), 1, z.shape[1]), generator=generator)
        return (z[:, None] + sigma * noise).expand(-1, m, -1)

    def code_major(z, sigma, m, generator):  # the right distribution, another draw order
        noise = torch.randn((m, len(z), z.shape[1]), generator=generator).transpose(0, 1)
        return z[:, None] + sigma * noise

    def flat(z, sigma, m, generator):  # (N * m, d): the right numbers, the wrong shape
        return solution(z, sigma, m, generator).flatten(0, 1)

    hints = {variance: "sigma^2", shared: "own noise", code_major: "draw order", flat: ""}
    for mistake, hint in hints.items():
        feedback = ch06.check_noise_codes(mistake)
        assert feedback.status == "not right", (mistake.__name__, feedback)
        assert hint in feedback.hint, (mistake.__name__, feedback)
