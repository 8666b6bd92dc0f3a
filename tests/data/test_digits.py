"""scikit-learn's digits as an ImageDataset, against scikit-learn's own arrays."""

import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from companion.data import load_dataset


def test_digits_splits_partition_the_images() -> None:
    reference = sklearn_digits()
    train, val, test = (load_dataset("digits", s) for s in ("train", "val", "test"))
    everything = load_dataset("digits", "all")
    assert len(everything) == 1797 == len(train) + len(val) + len(test)
    assert train.num_classes == 5 and val.num_classes == 5 and test.num_classes == 5
    assert train.class_names == ("0", "1", "2", "3", "4")
    assert test.class_names == ("5", "6", "7", "8", "9")
    # Pixel values are scikit-learn's 0..16 scaled to [0, 1].
    expected = torch.from_numpy(reference.images[reference.target == 7]).float() / 16
    got = torch.cat([val.images[val.labels == 2], test.images[test.labels == 2]])[:, 0]
    assert torch.equal(got, expected)
    assert everything.images.min() == 0 and everything.images.max() == 1


def test_digits_upsampled() -> None:
    assert load_dataset("digits", "train", image_size=28).image_shape == (1, 28, 28)


def test_digits_bad_split() -> None:
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset("digits", "dev")
