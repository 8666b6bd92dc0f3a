"""ImageDataset and resize_images, against PIL and hand-built datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from companion.data.base import ImageDataset, resize_images


def random_strokes(n: int, side: int = 105) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 1, side // 5, side // 5, generator=g) > 0.8).float()
    return torch.nn.functional.interpolate(x, size=(side, side), mode="nearest")


@pytest.mark.parametrize(("method", "pil"), [("bilinear", Image.BILINEAR),
                                             ("lanczos", Image.LANCZOS)])
def test_resize_matches_pil(method: str, pil: int) -> None:
    images = random_strokes(4)
    ours = resize_images(images, 28, method=method)
    for img, small in zip(images, ours, strict=True):
        ref = Image.fromarray((img[0].numpy() * 255).astype(np.uint8)).resize((28, 28), pil)
        ref = torch.from_numpy(np.asarray(ref, dtype=np.float32) / 255)
        # PIL rounds to 8 bits after each of its two passes; we stay in float.
        assert (small[0] - ref).abs().max() < 0.01


def test_resize_keeps_range_identity_and_validates() -> None:
    images = random_strokes(2, 40)
    for method in ("bilinear", "lanczos"):
        out = resize_images(images, 17, method=method)
        assert out.shape == (2, 1, 17, 17) and out.min() >= 0 and out.max() <= 1
    assert resize_images(images, 40) is images
    with pytest.raises(ValueError, match="image size must be a positive int"):
        resize_images(images, 0)
    with pytest.raises(ValueError, match="allowed: bilinear, lanczos"):
        resize_images(images, 10, method="cubic")


def toy(labels: list[int], classes: int) -> ImageDataset:
    y = torch.tensor(labels)
    return ImageDataset("toy", "all", torch.arange(len(y), dtype=torch.float32).view(-1, 1, 1, 1),
                        y, torch.arange(classes), tuple(f"c{c}" for c in range(classes)))


def test_class_indices_and_subsets() -> None:
    ds = toy([2, 0, 1, 0, 2, 2], 3)
    assert ds.class_indices(2).tolist() == [0, 4, 5]
    assert ds.images_per_class().tolist() == [2, 1, 3]
    sub = ds.subset_classes([2, 0], split="test")
    assert sub.class_names == ("c2", "c0") and sub.labels.tolist() == [0, 0, 0, 1, 1]
    assert sub.images.flatten().tolist() == [0, 4, 5, 1, 3]
    assert ds.summary()["images_per_class"] == "1-3"


def test_validation_messages() -> None:
    with pytest.raises(ValueError, match="at least one image each"):
        toy([0, 0, 2], 3)
    with pytest.raises(ValueError, match=r"\(M, channels, H, W\)"):
        ImageDataset("t", "s", torch.zeros(3, 4, 4), torch.zeros(3, dtype=torch.long),
                     torch.zeros(1), ("a",))
    with pytest.raises(ValueError, match="groups must have one entry per class"):
        ImageDataset("t", "s", torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]),
                     torch.zeros(3), ("a", "b"))
