"""Checks for chapter 1's exercises (the few-shot problem).

Example:
    >>> check_fraction_inside(lambda n, m=600: None).status
    'not done'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from companion.data import Episode, load_dataset
from companion.evaluate import pixel_nearest_neighbour
from companion.exercises import Feedback, attempt, compare_number, compare_tensors, right, wrong

EX1, EX2, EX3 = "Exercise 1.1", "Exercise 1.2", "Exercise 1.3"


def check_sample_episode(sample_episode: Callable) -> Feedback:
    """Exercise 1.1: ``sample_episode(dataset, ways, shots, queries, generator)``.

    Any random order is accepted; the check asks what every episode must satisfy: the
    shapes, class-first labels ``0..N-1``, each label's images from one dataset class,
    ``N`` different classes, no image in both support and query, and the same episode
    from the same generator state.
    """
    dataset = load_dataset("glyphs", split="test")
    ways, shots, queries = 5, 2, 3
    run = attempt(EX1, sample_episode, dataset, ways, shots, queries,
                  torch.Generator().manual_seed(0))
    if run.feedback:
        return run.feedback
    episode = run.value
    if not isinstance(episode, Episode):
        return wrong(EX1, f"return an Episode; got {type(episode).__name__}.",
                     "Episode(support_x, support_y, query_x, query_y) from companion.data.")
    shape = dataset.image_shape
    for part, per_class in (("support", shots), ("query", queries)):
        x, y = getattr(episode, f"{part}_x"), getattr(episode, f"{part}_y")
        want = (ways * per_class, *shape)
        if tuple(x.shape) != want:
            return wrong(EX1, f"{part}_x has shape {tuple(x.shape)}; a {ways}-way episode with "
                         f"{per_class} {part} images per class has {want}.")
        labels = torch.arange(ways).repeat_interleave(per_class)
        if not torch.equal(y.cpu(), labels):
            return wrong(EX1, f"{part}_y is {y.tolist()}; class-first labels are "
                         f"{labels.tolist()}.", "torch.arange(ways).repeat_interleave(k)")
    # Which dataset image is each episode image? Glyph images are all distinct.
    flat = dataset.images.flatten(1)
    index = {}
    for part in ("support", "query"):
        x = getattr(episode, f"{part}_x").flatten(1)
        d = torch.cdist(x.float(), flat.float(), compute_mode="donot_use_mm_for_euclid_dist")
        best = d.min(1)
        if (best.values > 1e-4).any():
            return wrong(EX1, f"some {part} images are not images of the dataset.",
                         "index dataset.images; do not transform them.")
        index[part] = best.indices
    source = dataset.labels
    if set(index["support"].tolist()) & set(index["query"].tolist()):
        return wrong(EX1, "an image appears in both the support and the query set.",
                     "draw shots + queries distinct images per class, then split them.")
    for c in range(ways):
        picked = torch.cat([index["support"][c * shots:(c + 1) * shots],
                            index["query"][c * queries:(c + 1) * queries]])
        if source[picked].unique().numel() != 1:
            return wrong(EX1, f"label {c} mixes images of dataset classes "
                         f"{source[picked].unique().tolist()}.")
    classes = source[index["support"][::shots]]
    if classes.unique().numel() != ways:
        return wrong(EX1, f"two labels share a dataset class: {classes.tolist()}.",
                     "draw the classes without replacement (torch.randperm).")
    again = attempt(EX1, sample_episode, dataset, ways, shots, queries,
                    torch.Generator().manual_seed(0))
    if again.feedback or not torch.equal(again.value.support_x, episode.support_x):
        return wrong(EX1, "the same generator state gave a different episode.",
                     "draw every random number from `generator` (generator=generator).")
    other = attempt(EX1, sample_episode, dataset, ways, shots, queries,
                    torch.Generator().manual_seed(1))
    if other.feedback is None and torch.equal(other.value.support_x, episode.support_x):
        return wrong(EX1, "two different generator seeds gave the same episode.")
    return right(EX1, f"a valid {ways}-way {shots}-shot episode: classes "
                 f"{classes.tolist()}, disjoint support and query, reproducible.")


def fraction_inside_reference(n: int, m: int = 600) -> float:
    """P(|mean_n - mean_m| <= 1.96 sigma / sqrt(m)) for independent normal means."""
    z = 1.96 * math.sqrt((1 / m) / (1 / n + 1 / m))
    return math.erf(z / math.sqrt(2))  # 2 Phi(z) - 1


def check_fraction_inside(fraction_inside: Callable) -> Feedback:
    """Exercise 1.2: the expected fraction of ``n``-episode means inside a 600-episode CI."""
    cases = [(20, 600), (100, 600), (600, 600), (50, 200)]
    for n, m in cases:
        run = attempt(EX2, fraction_inside, n, m)
        if run.feedback:
            return run.feedback
        if run.value is None:
            return Feedback(EX2, "not done", "fraction_inside returned None.")
        result = compare_number(EX2, run.value, fraction_inside_reference(n, m),
                                name=f"fraction_inside({n}, {m})", atol=2e-3,
                                hint="the difference of the two means has variance "
                                     "sigma^2 (1/n + 1/m); 2 Phi(z) - 1 = erf(z / sqrt 2).")
        if not result.passed:
            return result
    shown = ", ".join(f"n={n}: {fraction_inside_reference(n, 600):.0%}" for n in (20, 100, 600))
    return right(EX2, f"the formula holds ({shown} for m=600).")


def check_cosine_predict(cosine_predict: Callable) -> Feedback:
    """Exercise 1.3: 1-NN labels under the cosine distance, against the package."""
    from companion.data import EpisodeSampler

    sampler = EpisodeSampler(load_dataset("glyphs", split="test"), 5, 1, 5, seed=3)
    for _ in range(3):
        episode = sampler.sample()
        run = attempt(EX3, cosine_predict, episode.support_x, episode.support_y,
                      episode.query_x)
        if run.feedback:
            return run.feedback
        want = pixel_nearest_neighbour(episode, metric="cosine").argmax(1)
        got = run.value
        if isinstance(got, torch.Tensor) and got.dtype.is_floating_point and got.ndim == 2:
            return wrong(EX3, "return predicted labels, one per query, not scores.",
                         "take .argmax(1) of your similarity matrix, mapped to labels.")
        result = compare_tensors(EX3, got.to(want.dtype) if isinstance(got, torch.Tensor)
                                 else got, want, name="the predicted labels", atol=0, rtol=0,
                                 hint="normalise the flattened images to unit length, then "
                                      "the most similar support image gives the label.")
        if not result.passed:
            return result
    return right(EX3, "your cosine nearest neighbour agrees with "
                 "pixel_nearest_neighbour(episode, metric='cosine') on 3 episodes.")
