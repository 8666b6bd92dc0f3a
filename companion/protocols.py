"""What the training loop needs from a learner and from a task source, written down.

:func:`companion.train.fit` trains any **learner** on batches from any **task source**. The
two contracts are ``typing.Protocol`` classes, so a class satisfies them by having the
methods, without inheriting from anything (a ProtoNet, a MAML, a self-supervised method, a
combination of them):

- :class:`Learner`: ``meta_loss(batch) -> (loss, logs)``, the scalar whose gradient is the
  method's update, with a dict of numbers to log; ``classify(episode) -> scores``, the
  ``(N*Q, N)`` scores of an episode's queries, used by validation and ``eval``.
  Optional: ``after_step(step, total_steps)``, called after every optimiser step with the
  number of steps done (1 after the first) and the run's length (BYOL's cosine momentum
  schedule needs both; a MoCo queue ignores them), ``generators()``, and on any of its
  modules ``not_distributable``, the reason it cannot train on several ranks (``None``: it
  can; :func:`companion.distributed.check_distributable`).
- :class:`TaskSource`: ``sample_batch(n)`` (``n`` tasks as a
  :class:`~companion.data.episodes.TaskBatch`, or ``n`` unlabeled images for a
  self-supervised learner) and ``generators()``.

``generators() -> dict[str, torch.Generator]`` names every random stream an object owns
(a sampler's episodes, a learner's augmentations or inner minibatches). ``fit`` saves and
restores all of them in its checkpoints, which is what makes a resumed run equal to one
that never stopped. A composed object returns its parts' generators under prefixed names
(:func:`prefixed`), as it does with its logs, so that two parts never share a key.

Example:
    >>> class Constant:
    ...     def meta_loss(self, batch): ...
    ...     def classify(self, episode): ...
    >>> check_learner(Constant())
    >>> check_learner(object())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: object is not a learner: it has no meta_loss, classify (a learner needs ...
    >>> prefixed("aux", {"loss": 0.5})
    {'aux/loss': 0.5}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from companion.data.episodes import Episode

V = TypeVar("V")


@runtime_checkable
class Learner(Protocol):
    """Anything ``fit`` can train and ``evaluate_learner`` can test."""

    def meta_loss(self, batch: Any) -> tuple[torch.Tensor, Mapping[str, float]]:
        """The scalar loss of one training batch and the numbers to log."""
        ...

    def classify(self, episode: Episode) -> torch.Tensor:
        """Scores ``(N*Q, N)`` of the episode's queries."""
        ...


@runtime_checkable
class TaskSource(Protocol):
    """Anything ``fit`` can draw training batches from."""

    def sample_batch(self, n: int) -> Any:
        """``n`` tasks (a ``TaskBatch``) or ``n`` images, drawn from :meth:`generators`."""
        ...

    def generators(self) -> dict[str, torch.Generator]:
        """Every random stream the source draws from, by name (saved in checkpoints)."""
        ...


LEARNER_METHODS = ("meta_loss", "classify")
TASK_SOURCE_METHODS = ("sample_batch", "generators")


def _missing(obj: object, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if not callable(getattr(obj, name, None))]


def check_learner(obj: object) -> None:
    """Raise a ``TypeError`` naming what ``obj`` lacks to be a :class:`Learner`."""
    missing = _missing(obj, LEARNER_METHODS)
    if missing:
        raise TypeError(f"{type(obj).__name__} is not a learner: it has no "
                        f"{', '.join(missing)} (a learner needs meta_loss(batch) -> "
                        "(loss, logs) and classify(episode) -> scores; see companion.protocols)")
    for name in ("after_step", "generators"):
        if hasattr(obj, name) and not callable(getattr(obj, name)):
            raise TypeError(f"{type(obj).__name__}.{name} must be a method; got "
                            f"{type(getattr(obj, name)).__name__}")


def check_task_source(obj: object) -> None:
    """Raise a ``TypeError`` naming what ``obj`` lacks to be a :class:`TaskSource`."""
    missing = _missing(obj, TASK_SOURCE_METHODS)
    if missing:
        raise TypeError(f"{type(obj).__name__} is not a task source: it has no "
                        f"{', '.join(missing)} (a task source needs sample_batch(n) and "
                        "generators() -> {name: torch.Generator}; see companion.protocols)")


def generators_of(obj: object) -> dict[str, torch.Generator]:
    """``obj.generators()`` checked (names to CPU ``torch.Generator``s), or ``{}`` without one."""
    method = getattr(obj, "generators", None)
    found = dict(method()) if callable(method) else {}
    for name, generator in found.items():
        if not isinstance(name, str) or not isinstance(generator, torch.Generator):
            raise TypeError(f"{type(obj).__name__}.generators() must map names to "
                            f"torch.Generator; got {name!r}: {type(generator).__name__}")
    return found


def prefixed(prefix: str, entries: Mapping[str, V]) -> dict[str, V]:
    """``{"prefix/key": value}``: the logs or generators of one part of a composed object."""
    return {f"{prefix}/{key}": value for key, value in entries.items()}


class MetaLossModule(nn.Module):
    """``forward(batch)`` is ``learner.meta_loss(batch)``: the call that wrappers of a
    module's forward see (``torch.func.functional_call`` in the look-ahead hypergradient,
    ``DistributedDataParallel`` in :func:`companion.train.fit`)."""

    def __init__(self, learner: nn.Module) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, batch: Any) -> tuple[torch.Tensor, Mapping[str, Any]]:
        return self.learner.meta_loss(batch)
