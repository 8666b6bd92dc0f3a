r"""CACTUs: tasks from the clusters of an unsupervised embedding.

Hsu, Levine & Finn (2019), *Unsupervised Learning via Meta-Learning* (ICLR), sec. 3 and
Algorithm 1. An encoder trained without labels (theirs: ACAI, BiGAN, DeepCluster; here any
checkpoint of the package, such as SimCLR's) embeds the unlabeled pool,
:math:`z_i = f(x_i)`; k-means then groups the embeddings into ``k`` clusters, and the
clusters serve as **pseudo-classes**: an ``N``-way ``K``-shot task picks ``N`` clusters
and ``K + Q`` members of each, exactly as a labelled task picks classes and images. To get
many different partitions from one embedding, partition ``p > 0`` clusters the embeddings
with every dimension scaled by a random weight, :math:`z \odot w_p` with
:math:`w_p \sim \mathcal{U}(0, 1)^D` (their code's ``scaled_encodings``), and each task
comes from one partition drawn at random. Clusters with fewer than ``K + Q`` members are
dropped.

Their Omniglot setting is ``k = 500`` clusters and ``P = 100`` partitions (sec. 4.1;
``scripts/omniglot_kmeans.sh`` in kylehkhsu/cactus-maml); the ``cpu`` recipe uses fewer
partitions to keep the clustering inside the 5-minute budget of the stage.

k-means (:func:`kmeans`) is written here in a few lines of torch: k-means++ seeding
(Arthur & Vassilvitskii, 2007) and Lloyd's iterations, batched as one distance matrix per
step, with the source's own generator, so a partition is reproducible from its seed.

**No labels are read**: the source sees images and their embeddings only.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.cat([torch.randn(30, 2, generator=g) * 0.1 + c for c in (0.0, 5.0, 10.0)])
    >>> centres, assignment = kmeans(z, 3, generator=g)
    >>> sorted(torch.bincount(assignment).tolist())
    [30, 30, 30]
"""

from __future__ import annotations

import torch

from companion.checks import check_int
from companion.data.episodes import Episode, TaskBatch
from companion.tasks.pool import unlabeled_images


def kmeans(z: torch.Tensor, k: int, *, generator: torch.Generator, iterations: int = 50,
           tolerance: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with k-means++ seeding: centres and the cluster of every point.

    Lloyd's algorithm: assign each point to its nearest centre (squared Euclidean), move
    each centre to the mean of its points, repeat until no centre moves by more than
    ``tolerance`` times the data's spread, or ``iterations`` times. A centre that loses all
    its points is moved onto the point farthest from its own centre.

    Args:
        z: the points.
        k: number of clusters, ``1 <= k <= M``.
        generator: a CPU ``torch.Generator`` for the seeding.
        iterations: at most this many Lloyd steps.
        tolerance: stop when centres move less than this, relative to the data's spread.

    Shape:
        - z: ``(M, D)``; returns centres ``(k, D)`` and assignment ``(M,)`` int64
    """
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"kmeans needs points (M, D); got {tuple(z.shape)}")
    check_int("k", k)
    check_int("iterations", iterations)
    if k > len(z):
        raise ValueError(f"cannot make {k} clusters of {len(z)} points (k must be 1..{len(z)})")
    z = z.float()
    centres = z[_kmeanspp(z, k, generator)]  # (k, D)
    spread = z.var(0).sum().clamp_min(1e-12)
    for _ in range(iterations):
        assignment = nearest_centre(z, centres)  # (M,)
        counts = torch.bincount(assignment, minlength=k)  # (k,)
        sums = torch.zeros_like(centres).index_add_(0, assignment, z)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        empty = (counts == 0).nonzero().flatten()
        if len(empty):  # re-seed empty clusters on the worst-fitted points
            error = (z - moved[assignment]).pow(2).sum(1)
            moved[empty] = z[error.topk(len(empty)).indices]
        shift = (moved - centres).pow(2).sum(1).max()
        centres = moved
        if shift <= tolerance * spread:
            break
    return centres, nearest_centre(z, centres)


def nearest_centre(z: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    r"""Index of the nearest centre of every point, by squared Euclidean distance written as
    :math:`\lVert c \rVert^2 - 2 z \cdot c` (the :math:`\lVert z \rVert^2` term is the
    same for every centre): one matrix product.

    Shape:
        - z: ``(M, D)``, centres: ``(k, D)``; returns ``(M,)`` int64
    """
    return (centres.pow(2).sum(1) - 2 * z @ centres.T).argmin(1)


def _kmeanspp(z: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``k`` seeds: each next one drawn with probability proportional to its
    squared distance from the nearest seed so far (Arthur & Vassilvitskii, 2007).

    A draw is a uniform number looked up in the cumulative weights (inverse CDF)."""
    chosen = [int(torch.randint(len(z), (1,), generator=generator))]
    nearest = (z - z[chosen[0]]).pow(2).sum(1)  # (M,)
    for _ in range(k - 1):
        cumulative = torch.cumsum(nearest.double(), 0)
        u = torch.rand((), generator=generator, dtype=torch.float64) * cumulative[-1]
        nxt = min(int(torch.searchsorted(cumulative, u, right=True)), len(z) - 1)
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (z - z[nxt]).pow(2).sum(1))
    return torch.tensor(chosen)


class Partition:
    """One clustering of the pool, kept as the clusters with at least ``min_size`` members.

    Shape:
        - members: ``(M',)`` indices into the pool, grouped by cluster
        - starts, sizes: ``(C,)`` where each kept cluster begins in ``members``, its size
    """

    def __init__(self, assignment: torch.Tensor, min_size: int) -> None:
        order = torch.argsort(assignment, stable=True)
        sizes = torch.bincount(assignment)
        starts = torch.cumsum(sizes, 0) - sizes
        keep = sizes >= min_size
        self.members = order
        self.starts, self.sizes = starts[keep], sizes[keep]

    def __len__(self) -> int:
        return len(self.sizes)


class CACTUs:
    """``N``-way ``K``-shot tasks whose classes are k-means clusters of an embedding.

    Args:
        images: the unlabeled pool, a tensor ``(M, C, H, W)`` or an ``ImageDataset`` (its
            labels are never read).
        embeddings: one embedding per image, ``(M, D)`` (e.g.
            :func:`companion.evaluate.embed` of a self-supervised encoder).
        ways, shots, queries: the tasks' shape ``N``, ``K``, ``Q``.
        clusters: ``k``, clusters per partition (500 in the paper for Omniglot).
        partitions: ``P``, partitions (100 in the paper); the first clusters the embedding
            as it is, the others a randomly scaled copy.
        seed: seed of the source's generator (ignored if ``generator`` is given), which
            draws the partitions and then the tasks.
        generator: a CPU ``torch.Generator``.

    Raises:
        ValueError: bad sizes, embeddings that do not match the images, or a partition
            with fewer than ``ways`` clusters of at least ``shots + queries`` members.
    """

    def __init__(self, images: object, embeddings: torch.Tensor, ways: int, shots: int = 1,
                 queries: int = 1, *, clusters: int = 500, partitions: int = 100,
                 seed: int | None = None, generator: torch.Generator | None = None) -> None:
        self.images = unlabeled_images(images)
        self.ways, self.shots = check_int("ways", ways), check_int("shots", shots)
        self.queries = check_int("queries", queries)
        self.clusters = check_int("clusters", clusters)
        check_int("partitions", partitions)
        if (not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2
                or embeddings.shape[:1] != self.images.shape[:1]):
            raise ValueError(f"embeddings must be (M, D) with one row per image "
                             f"(M = {len(self.images)}); got "
                             f"{tuple(getattr(embeddings, 'shape', ()))}")
        self.generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)
        z = embeddings.detach().cpu().float()
        self.partitions: list[Partition] = []
        for p in range(partitions):
            weights = torch.ones(z.shape[1]) if p == 0 else torch.rand(z.shape[1],
                                                                        generator=self.generator)
            _, assignment = kmeans(z * weights, clusters, generator=self.generator)
            partition = Partition(assignment, shots + queries)
            if len(partition) < ways:
                raise ValueError(
                    f"partition {p} has only {len(partition)} clusters with at least "
                    f"shots + queries = {shots + queries} members; {ways}-way tasks need "
                    f"{ways} (use more images, fewer clusters or fewer shots/queries)")
            self.partitions.append(partition)

    def generators(self) -> dict[str, torch.Generator]:
        """The source's one random stream (:class:`companion.protocols.TaskSource`)."""
        return {"tasks": self.generator}

    def sample(self) -> Episode:
        """One task: a random partition, ``N`` of its clusters, ``K + Q`` members of each."""
        g, k, q = self.generator, self.shots, self.queries
        partition = self.partitions[int(torch.randint(len(self.partitions), (1,), generator=g))]
        chosen = torch.randperm(len(partition), generator=g)[: self.ways]
        support, query = [], []
        for c in chosen.tolist():
            start, size = int(partition.starts[c]), int(partition.sizes[c])
            pick = partition.members[start + torch.randperm(size, generator=g)[: k + q]]
            support.append(pick[:k])
            query.append(pick[k:])
        labels = torch.arange(self.ways)
        return Episode(support_x=self.images[torch.cat(support)],
                       support_y=labels.repeat_interleave(k),
                       query_x=self.images[torch.cat(query)],
                       query_y=labels.repeat_interleave(q))

    def sample_batch(self, tasks: int) -> TaskBatch:
        """``tasks`` tasks stacked into a :class:`TaskBatch`."""
        check_int("tasks", tasks)
        return TaskBatch.stack([self.sample() for _ in range(tasks)])

    def pseudo_labels(self, partition: int = 0) -> torch.Tensor:
        """Cluster id of every image in one partition (``-1`` where its cluster was dropped):
        what the chapter compares with the true classes.

        Shape:
            - returns: ``(M,)`` int64
        """
        part = self.partitions[partition]
        labels = torch.full((len(self.images),), -1, dtype=torch.long)
        spans = zip(part.starts.tolist(), part.sizes.tolist(), strict=True)
        for c, (start, size) in enumerate(spans):
            labels[part.members[start:start + size]] = c
        return labels
