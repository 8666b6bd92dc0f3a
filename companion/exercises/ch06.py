"""Checks for chapter 6's exercises (meta-learning without labels).

Example:
    >>> check_p_distinct(lambda classes, per_class, ways: None).status
    'not done'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from companion.data import Episode
from companion.exercises import Feedback, attempt, compare_number, not_done, right, wrong
from companion.tasks import LASIUM
from companion.tasks.cactus import Partition

EX1, EX2, EX3 = "Exercise 6.1", "Exercise 6.2", "Exercise 6.3"


def p_distinct_reference(classes: int, per_class: int, ways: int) -> float:
    """P(``ways`` images drawn without replacement from ``classes`` x ``per_class`` images
    are all of different classes): after ``i`` draws, ``(classes - i) * per_class`` of the
    ``classes * per_class - i`` images left are of a class not drawn yet."""
    total = classes * per_class
    return math.prod((classes - i) * per_class / (total - i) for i in range(ways))


def check_p_distinct(p_distinct_pool: Callable) -> Feedback:
    """Exercise 6.1: the probability that a UMTRA task's ``N`` images show ``N`` classes."""
    cases = [(10, 2, 5), (969, 20, 20), (1200, 20, 5), (64, 600, 5), (5, 3, 5), (3, 2, 4)]
    for classes, per_class, ways in cases:
        run = attempt(EX1, p_distinct_pool, classes, per_class, ways)
        if run.feedback:
            return run.feedback
        if run.value is None:
            return not_done(EX1, "p_distinct_pool returned None.")
        result = compare_number(
            EX1, run.value, p_distinct_reference(classes, per_class, ways),
            name=f"p_distinct_pool({classes}, {per_class}, {ways})", atol=1e-9, rtol=1e-7,
            hint="UMTRA draws the images without replacement (torch.randperm): after i "
                 "images, classes * per_class - i are left, and (classes - i) * per_class "
                 "of them are of a class not drawn yet.")
        if not result.passed:
            return result
    shown = ", ".join(f"N = {n}: {p_distinct_reference(1200, 20, n):.3f}" for n in (5, 20, 50))
    return right(EX1, f"the formula holds; with 20 drawings of each of 1,200 characters "
                 f"(Omniglot's background set), P(all distinct) is {shown}.")


def _pool_index(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor | None:
    """Row of ``pool`` equal to each image of ``x`` (``None`` if one is not in the pool)."""
    flat = pool.flatten(1)
    if x.ndim < 2 or x.flatten(1).shape[1] != flat.shape[1]:
        return None
    hits = (x.flatten(1)[:, None, :].to(flat.dtype) == flat[None]).all(-1)  # (B, M)
    if not hits.any(1).all():
        return None
    return hits.float().argmax(1)


def _cluster_problem() -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
    """A pool of 60 distinct random images and an assignment to 10 clusters, three of
    them smaller than ``K + Q = 4`` (members scattered through the pool)."""
    g = torch.Generator().manual_seed(6)
    sizes = [12, 9, 7, 6, 5, 4, 3, 2, 1, 11]  # clusters 6, 7 and 8 are too small
    assignment = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    assignment = assignment[torch.randperm(len(assignment), generator=g)]
    images = torch.rand(len(assignment), 1, 3, 3, generator=g)
    return images, assignment, 3, 1, 3  # images, assignment, ways, shots, queries


def check_cluster_task(cluster_task: Callable) -> Feedback:
    """Exercise 6.2: CACTUs' step from a partition to a task.

    Any random order is accepted. The check asks what every task must satisfy: shapes,
    class-first labels, each label's images from one cluster, ``N`` different clusters of at
    least ``K + Q`` members (the package's :class:`~companion.tasks.cactus.Partition`
    says which), no image twice, the same task from the same generator state; and, over
    300 tasks, that every admissible cluster and every member of one is drawn.
    """
    images, assignment, ways, shots, queries = _cluster_problem()
    eligible = set(_eligible(assignment, shots + queries))
    used_clusters, used_images = set(), set()
    for seed in range(300):
        run = attempt(EX2, cluster_task, images, assignment, ways, shots, queries,
                      torch.Generator().manual_seed(seed))
        if run.feedback:
            return run.feedback
        task = run.value
        if not isinstance(task, Episode):
            return wrong(EX2, f"return an Episode; got {type(task).__name__}.",
                         "Episode(support_x, support_y, query_x, query_y) from companion.data.")
        for part, per_class in (("support", shots), ("query", queries)):
            x, y = getattr(task, f"{part}_x"), getattr(task, f"{part}_y")
            want = (ways * per_class, *images.shape[1:])
            if tuple(x.shape) != want:
                return wrong(EX2, f"{part}_x has shape {tuple(x.shape)}; a {ways}-way task "
                             f"with {per_class} {part} images per class has {want}.",
                             "draw only from clusters with at least K + Q members: a smaller "
                             "one cannot give K + Q different images.")
            labels = torch.arange(ways).repeat_interleave(per_class)
            if not torch.equal(y.cpu(), labels):
                return wrong(EX2, f"{part}_y is {y.tolist()}; class-first labels are "
                             f"{labels.tolist()}.", "torch.arange(ways).repeat_interleave(k)")
        index = {part: _pool_index(getattr(task, f"{part}_x"), images)
                 for part in ("support", "query")}
        if index["support"] is None or index["query"] is None:
            return wrong(EX2, "some task images are not images of the pool.",
                         "index `images` with the members you draw; do not transform them.")
        every = torch.cat([index["support"], index["query"]])
        if len(set(every.tolist())) != len(every):
            return wrong(EX2, "an image appears twice in one task.",
                         "draw K + Q distinct members of each cluster (torch.randperm).")
        clusters = []
        for c in range(ways):
            picked = torch.cat([index["support"][c * shots:(c + 1) * shots],
                                index["query"][c * queries:(c + 1) * queries]])
            owners = assignment[picked].unique()
            if len(owners) != 1:
                return wrong(EX2, f"label {c} mixes images of clusters {owners.tolist()}.",
                             "a class of the task is one cluster: all its K + Q images "
                             "come from it.")
            clusters.append(int(owners))
        if len(set(clusters)) != ways:
            return wrong(EX2, f"two labels share a cluster: {clusters}.",
                         "draw the clusters without replacement (torch.randperm).")
        small = set(clusters) - eligible
        if small:
            return wrong(EX2, f"cluster(s) {sorted(small)} have fewer than K + Q = "
                         f"{shots + queries} members and cannot be a class.",
                         "keep only clusters with at least K + Q members, as CACTUs does.")
        used_clusters |= set(clusters)
        used_images |= set(every.tolist())
        if seed == 0:
            again = attempt(EX2, cluster_task, images, assignment, ways, shots, queries,
                            torch.Generator().manual_seed(0))
            if (again.feedback or not isinstance(again.value, Episode)
                    or not torch.equal(again.value.support_x, task.support_x)):
                return wrong(EX2, "the same generator state gave a different task.",
                             "draw every random number from `generator`.")
    missed = eligible - used_clusters
    if missed:
        return wrong(EX2, f"in 300 tasks, cluster(s) {sorted(missed)} were never drawn.",
                     "every cluster with at least K + Q members must be possible: "
                     "torch.randperm over the admissible clusters, then take the first N.")
    members = set(torch.isin(assignment, torch.tensor(sorted(eligible))).nonzero().flatten()
                  .tolist())
    if members - used_images:
        return wrong(EX2, f"in 300 tasks, {len(members - used_images)} members of admissible "
                     "clusters were never drawn.",
                     "draw K + Q random members of each chosen cluster, not the first ones.")
    return right(EX2, f"300 valid {ways}-way tasks: every cluster of at least K + Q = "
                 f"{shots + queries} members and every one of its images was drawn, the "
                 f"smaller clusters never; reproducible.")


def _eligible(assignment: torch.Tensor, min_size: int) -> list[int]:
    """Clusters the package's :class:`Partition` keeps (at least ``min_size`` members)."""
    part = Partition(assignment, min_size)
    return assignment[part.members[part.starts]].tolist()


def noise_codes_reference(z: torch.Tensor, sigma: float, m: int, seed: int) -> torch.Tensor:
    """The package's LASIUM-N codes for anchors ``z`` from a generator seeded ``seed``."""
    source = LASIUM(lambda c: c, z.shape[1], ways=len(z), shots=1, queries=m - 1,
                    variant="n", noise=sigma, generator=torch.Generator().manual_seed(seed))
    return source.in_class_codes(z)


def check_noise_codes(noise_codes: Callable) -> Feedback:
    """Exercise 6.3: LASIUM-N's in-class codes, against ``LASIUM.in_class_codes``."""
    g = torch.Generator().manual_seed(0)
    cases = [(torch.randn(4, 6, generator=g), 0.5, 5, 1), (torch.randn(3, 2, generator=g),
                                                            2.0, 3, 2)]
    for z, sigma, m, seed in cases:
        run = attempt(EX3, noise_codes, z.clone(), sigma, m, torch.Generator().manual_seed(seed))
        if run.feedback:
            return run.feedback
        got, want = run.value, noise_codes_reference(z, sigma, m, seed)
        if not isinstance(got, torch.Tensor):
            return wrong(EX3, f"return a tensor of codes; got {type(got).__name__}.")
        if got.shape != want.shape:
            return wrong(EX3, f"the codes have shape {tuple(got.shape)}; for {len(z)} anchors "
                         f"of dimension {z.shape[1]} and m = {m} they are {tuple(want.shape)}.",
                         "one row of m codes per anchor: (N, m, latent_dim).")
        if torch.allclose(got.detach().float(), want, atol=1e-5):
            continue
        return wrong(EX3, f"the codes differ from LASIUM(..., variant='n', noise={sigma})"
                     f".in_class_codes(z) under the same generator state (by up to "
                     f"{(got.detach().float() - want).abs().max():.3g}).",
                     _noise_hint(noise_codes, sigma))
    return right(EX3, "your codes equal LASIUM(..., variant='n').in_class_codes(z) under the "
                 "same generator state.")


def _noise_hint(noise_codes: Callable, sigma: float) -> str:
    """Why the codes differ: a larger draw tells a wrong distribution from a draw order."""
    z = torch.zeros(50, 8)
    run = attempt(EX3, noise_codes, z, sigma, 20, torch.Generator().manual_seed(0))
    if run.feedback or not isinstance(run.value, torch.Tensor) or run.value.shape != (50, 20, 8):
        return "z' = z_i + sigma * epsilon with one torch.randn((N, m, latent_dim)) draw."
    noise = run.value.detach().float() - z[:, None]
    sd = float(noise.std())
    if float(noise.std(1).mean()) < 1e-6:
        return "every code of one anchor is the same: each of the m codes needs its own noise."
    if abs(sd - sigma ** 2) < 0.1 * sigma ** 2 and abs(sd - sigma) > 0.1 * sigma:
        return f"the noise has sd {sd:.2f} = sigma^2: sigma is the standard deviation."
    if abs(sd - sigma) > 0.1 * sigma:
        return f"the noise has sd {sd:.2f}; it should be sigma = {sigma}."
    return ("your codes have the right distribution but not the package's draw order: draw "
            "the noise as one torch.randn((N, m, latent_dim), generator=generator), added to "
            "the anchors, so that the same generator state gives the same codes.")
