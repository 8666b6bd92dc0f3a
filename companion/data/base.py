"""The one in-memory form every dataset takes: a labelled stack of images.

Every loader in :mod:`companion.data` (``glyphs``, ``digits``, ``omniglot``, ``cifar_fs``)
returns a :class:`ImageDataset`. Episode samplers, probes and training loops read only
this, so a new dataset is one function that builds one.

Images are ``float32`` in ``[0, 1]`` with channels first. For the grey-scale sets
(glyphs, digits, Omniglot) **ink is 1 and paper is 0**, so a blank image is all zeros and
"distance between images" measures the ink that differs. The colour set (CIFAR-FS) has
three channels of RGB intensity, 0 being black: there a blank image is not zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from companion.checks import check_int


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set, with labels ``0..C-1`` and one group id per class.

    Args:
        name: the dataset's name, as passed to :func:`companion.data.load_dataset`.
        split: which split this is (``"train"``, ``"val"``, ``"test"``, ...).
        images: the images in ``[0, 1]`` (grey-scale: ink = 1; colour: RGB intensities).
        labels: the class of each image, ``0..C-1`` (every class has at least one image).
        groups: for each class, the id of its group (the alphabet for glyphs and
            Omniglot, the CIFAR-100 superclass for CIFAR-FS; the class itself where there
            are no groups).
        class_names: a readable name per class.
        source: where the data came from (a cache path, or ``"generated"``).

    Shape:
        - images: ``(M, channels, H, W)``
        - labels: ``(M,)`` int64
        - groups: ``(C,)`` int64
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    class_names: tuple[str, ...]
    source: str = "generated"
    _class_index: tuple[torch.Tensor, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(
                f"images must have shape (M, channels, H, W); got {tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},) to match the images; "
                f"got {tuple(self.labels.shape)}"
            )
        num_classes = len(self.class_names)
        if self.groups.shape != (num_classes,):
            raise ValueError(
                f"groups must have one entry per class ({num_classes}); "
                f"got shape {tuple(self.groups.shape)}"
            )
        counts = torch.bincount(self.labels, minlength=num_classes)
        if counts.numel() != num_classes or bool((counts == 0).any()):
            raise ValueError(
                f"labels must cover 0..{num_classes - 1} with at least one image each; "
                f"counts per class: {counts.tolist()}"
            )
        order = torch.argsort(self.labels, stable=True)
        index = tuple(torch.split(order, counts.tolist()))
        object.__setattr__(self, "_class_index", index)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.images.shape[0]

    def class_indices(self, c: int) -> torch.Tensor:
        """Indices into :attr:`images` of the images of class ``c``, in stored order."""
        return self._class_index[c]

    def images_per_class(self) -> torch.Tensor:
        """Number of images of each class, shape ``(C,)``."""
        return torch.tensor([len(ix) for ix in self._class_index])

    def subset_classes(self, classes: torch.Tensor | list[int], split: str) -> ImageDataset:
        """The images of ``classes`` only, relabelled ``0..len(classes)-1`` in that order."""
        classes = torch.as_tensor(classes, dtype=torch.long)
        index = torch.cat([self._class_index[int(c)] for c in classes])
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[classes] = torch.arange(len(classes))
        return ImageDataset(
            name=self.name,
            split=split,
            images=self.images[index],
            labels=remap[self.labels[index]],
            groups=self.groups[classes],
            class_names=tuple(self.class_names[int(c)] for c in classes),
            source=self.source,
        )

    def summary(self) -> dict[str, object]:
        """Sizes a reader (or ``python -m companion data info``) wants to see."""
        per_class = self.images_per_class()
        return {
            "name": self.name,
            "split": self.split,
            "classes": self.num_classes,
            "images": len(self),
            "images_per_class": (
                int(per_class[0]) if bool((per_class == per_class[0]).all())
                else f"{int(per_class.min())}-{int(per_class.max())}"
            ),
            "groups": int(torch.unique(self.groups).numel()),
            "image_shape": list(self.image_shape),
            "source": self.source,
        }


RESIZE_FILTERS = ("bilinear", "lanczos")


def _lanczos_weights(n_in: int, n_out: int, a: int = 3, *, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """Row ``i`` holds the weights of input pixels for output pixel ``i`` (PIL's LANCZOS).

    A Lanczos-``a`` kernel ``sinc(x) sinc(x / a)`` for ``|x| < a``, stretched by the scale
    factor when shrinking (so it also low-passes), centred on each output pixel's centre
    in input coordinates, normalised to sum to 1: the separable filter of
    ``PIL.Image.resize(..., LANCZOS)``.
    """
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # (n_out,)
    x = ((torch.arange(n_in, dtype=torch.float64) + 0.5)[None, :] - centres[:, None]) / stretch
    w = torch.where(x.abs() < a, torch.sinc(x) * torch.sinc(x / a), torch.zeros_like(x))
    return (w / w.sum(1, keepdim=True)).to(dtype=dtype, device=device)  # (n_out, n_in)


def resize_images(images: torch.Tensor, size: int, method: str = "bilinear") -> torch.Tensor:
    """Resize a stack of images to ``size x size``, anti-aliased, values kept in ``[0, 1]``.

    ``bilinear`` is ``PIL.Image.resize(..., BILINEAR)`` (a triangle filter widened when
    shrinking, as torchvision's ``Resize`` does); ``lanczos`` is PIL's ``LANCZOS``, the
    filter Finn et al. (2017) used to shrink Omniglot to 28x28 in the MAML code, applied as
    two matrix products.

    Shape:
        - images: ``(M, channels, H, W)`` floating point
        - returns: ``(M, channels, size, size)``, same dtype and device
    """
    check_int("image size", size)
    if method not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize method {method!r}; allowed: {', '.join(RESIZE_FILTERS)}")
    if images.shape[-2:] == (size, size):
        return images
    if method == "lanczos":
        h, w = images.shape[-2:]
        rows = _lanczos_weights(h, size, dtype=images.dtype, device=images.device)  # (S, H)
        cols = _lanczos_weights(w, size, dtype=images.dtype, device=images.device)  # (S, W)
        # Horizontal pass first, clipped to [0, 1] like PIL's 8-bit intermediate image.
        wide = (images @ cols.T).clamp_(0.0, 1.0)  # (M, channels, H, S)
        return (rows @ wide).clamp_(0.0, 1.0)  # (M, channels, S, S)
    return torch.nn.functional.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp_(0.0, 1.0)
