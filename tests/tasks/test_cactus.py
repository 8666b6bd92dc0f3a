"""CACTUs (Hsu et al., 2019): k-means partitions of an embedding, tasks from its clusters."""

from __future__ import annotations

import pytest
import torch
from sklearn.cluster import KMeans

from companion.tasks import CACTUs, kmeans
from companion.tasks.cactus import nearest_centre


def _blobs(k: int = 5, per: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, 3, generator=g) * 10
    z = centres.repeat_interleave(per, 0) + 0.1 * torch.randn(k * per, 3, generator=g)
    return z, torch.arange(k).repeat_interleave(per)


def test_kmeans_recovers_well_separated_blobs():
    z, truth = _blobs()
    _, assignment = kmeans(z, 5, generator=torch.Generator().manual_seed(0))
    # the same partition up to renaming: each true blob maps to one cluster, and back
    pairs = set(zip(truth.tolist(), assignment.tolist(), strict=True))
    assert len(pairs) == 5 and len({a for _, a in pairs}) == 5


def test_kmeans_is_as_good_as_scikit_learn_on_unstructured_data():
    """Within-cluster sum of squares against scikit-learn's k-means++ Lloyd (one start each)."""
    z = torch.randn(600, 8, generator=torch.Generator().manual_seed(0))
    ours = []
    for seed in range(3):
        centres, assignment = kmeans(z, 12, generator=torch.Generator().manual_seed(seed))
        ours.append(float((z - centres[assignment]).pow(2).sum()))
    theirs = [KMeans(12, n_init=1, random_state=s).fit(z.numpy()).inertia_ for s in range(3)]
    assert sum(ours) / 3 <= 1.03 * sum(theirs) / 3


def test_nearest_centre_is_the_argmin_of_distances():
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(50, 4, generator=g), torch.randn(7, 4, generator=g)
    assert torch.equal(nearest_centre(z, c), torch.cdist(z, c).argmin(1))


def test_each_class_of_a_task_is_one_cluster():
    """Images name their own index, so every support and query image can be traced back to
    its cluster in the (single) partition: one cluster per class, different across classes."""
    z, _ = _blobs(k=6, per=10)
    m = len(z)
    images = (torch.arange(m, dtype=torch.float32) / m).view(m, 1, 1, 1).expand(m, 1, 4, 4)
    source = CACTUs(images, z, ways=4, shots=2, queries=3, clusters=6, partitions=1, seed=0)
    clusters = source.pseudo_labels(0)
    for episode in source.sample_batch(5):
        def cluster(x):
            return clusters[(x[:, 0, 0, 0] * m).round().long()]
        s, q = cluster(episode.support_x).view(4, 2), cluster(episode.query_x).view(4, 3)
        assert (s == s[:, :1]).all() and (q == s[:, :1]).all()
        assert len(set(s[:, 0].tolist())) == 4


def test_small_clusters_are_dropped_and_too_few_clusters_are_refused():
    z = torch.cat([_blobs(k=3, per=10)[0], torch.tensor([[100.0, 100.0, 100.0]])])
    images = torch.rand(len(z), 1, 4, 4)
    source = CACTUs(images, z, ways=2, shots=1, queries=1, clusters=4, partitions=1, seed=0)
    assert len(source.partitions[0]) == 3  # the one-point cluster cannot give 2 images
    assert (source.pseudo_labels(0) == -1).sum() == 1
    with pytest.raises(ValueError, match="only 3 clusters"):
        CACTUs(images, z, ways=4, shots=1, queries=1, clusters=4, partitions=1, seed=0)


def test_embeddings_must_match_the_images():
    with pytest.raises(ValueError, match="one row per image"):
        CACTUs(torch.rand(10, 1, 4, 4), torch.rand(9, 3), ways=2)
