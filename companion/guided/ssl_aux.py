r"""Self-supervision as an auxiliary loss in episodic training.

Gidaris et al. (2019, *Boosting Few-Shot Visual Learning with Self-Supervision*) add a
self-supervised loss, rotation prediction (chapter 4), to a few-shot learner's episodic
loss, on the same encoder:

.. math:: \mathcal L = \mathcal L_\text{few-shot}(\text{episode}) + \lambda\,
    \mathcal L_\text{rot}(\text{the episode's images}),

and Su et al. (2020, *When Does Self-Supervision Improve Few-Shot Learning?*) find that it
helps most when labelled classes are few, and that the auxiliary images can be extra
unlabeled ones from the same domain. :class:`WithAuxiliary` wraps any episodic learner
(ProtoNet, MAML, ...) and any one-view self-supervised method sharing its encoder; its
``classify`` is the learner's, so it is evaluated exactly as the learner alone.

The weight :math:`\lambda` is either fixed or **meta-learned** (chapter 7): with
``weight="meta"`` every step also computes the hypergradient of
:mod:`companion.guided.aux_weights` (one lookahead SGD step on half of the meta-batch's
tasks, the primary loss on the other half) and moves :math:`\lambda` after the optimiser
step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from companion.checks import check_int, check_positive
from companion.data.episodes import Episode, TaskBatch
from companion.guided.aux_weights import LogWeight, lookahead_hypergradient
from companion.protocols import MetaLossModule, generators_of, prefixed
from companion.tasks.pool import unlabeled_images


def halves(batch: TaskBatch) -> tuple[TaskBatch, TaskBatch]:
    """Two disjoint parts of a meta-batch: its first and second half of the tasks, or, for a
    single task, the same support with the first and the second half of each class's queries.

    Raises:
        ValueError: one task with a single query per class (nothing to hold out).
    """
    tasks = len(batch)
    fields = Episode.__dataclass_fields__
    if tasks >= 2:
        return (TaskBatch(*(getattr(batch, f)[: tasks // 2] for f in fields)),
                TaskBatch(*(getattr(batch, f)[tasks // 2:] for f in fields)))
    ways = int(batch.support_y.max()) + 1
    queries = batch.query_y.shape[1] // ways
    if queries < 2:
        raise ValueError("a meta-learned auxiliary weight holds out data of the primary task: "
                         "give at least 2 tasks per step (--meta-batch) or 2 queries per class "
                         f"(--train-queries); got 1 task with {queries} query per class")
    half = queries // 2

    def part(rows: slice) -> TaskBatch:
        x = batch.query_x.unflatten(1, (ways, queries))[:, :, rows].flatten(1, 2)
        y = batch.query_y.unflatten(1, (ways, queries))[:, :, rows].flatten(1, 2)
        return TaskBatch(batch.support_x, batch.support_y, x, y)

    return part(slice(0, half)), part(slice(half, queries))


class WithAuxiliary(nn.Module):
    """An episodic ``learner`` trained with ``aux``'s self-supervised loss as well.

    Args:
        learner: a meta-learner (``meta_loss(TaskBatch)``, ``classify(Episode)``).
        aux: a self-supervised method with ``loss(x) -> (loss, logs)`` on one batch of images
            whose ``encoder`` is the learner's encoder (the same module object).
        weight: :math:`\\lambda`, a positive number, or ``"meta"`` to learn it.
        start: the initial :math:`\\lambda` when ``weight="meta"``.
        meta_lr: the step size on :math:`\\log \\lambda` (``weight="meta"``).
        step_size: :math:`\\alpha` of the lookahead step (``weight="meta"``).
        unlabeled: extra unlabeled images (a tensor or ``ImageDataset``) for the auxiliary
            loss, ``unlabeled_batch`` of them per step, drawn with the wrapper's generator.
        unlabeled_batch: images drawn from ``unlabeled`` per step (0: none).
        seed: seed of that generator.
    """

    def __init__(self, learner: nn.Module, aux: nn.Module, weight: float | str = 1.0, *,
                 start: float = 1.0, meta_lr: float = 0.05, step_size: float = 0.1,
                 unlabeled: object | None = None, unlabeled_batch: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        if getattr(aux, "views", None) != 1 or not isinstance(getattr(aux, "encoder", None),
                                                              nn.Module):
            raise TypeError(f"aux must be a one-view self-supervised method with an encoder; "
                            f"got {type(aux).__name__}")
        learner_params = {id(p) for p in learner.parameters()}
        if not all(id(p) in learner_params for p in aux.encoder.parameters()):
            raise ValueError("aux must share the learner's encoder (build it on "
                             "companion.methods.encoder_of(learner))")
        self.learner, self.aux = learner, aux
        if weight == "meta":
            self.weight: LogWeight | None = LogWeight(start, meta_lr)
            self.fixed_weight = None
            self.step_size = check_positive("step_size", step_size)
        elif isinstance(weight, int | float) and not isinstance(weight, bool):
            self.weight, self.fixed_weight = None, check_positive("weight", float(weight))
        else:
            raise ValueError(f"weight must be a positive number or 'meta'; got {weight!r}")
        self.unlabeled = None if unlabeled is None else unlabeled_images(unlabeled)
        self.unlabeled_batch = check_int("unlabeled_batch", unlabeled_batch, 0)
        if self.unlabeled_batch and self.unlabeled is None:
            raise ValueError("unlabeled_batch > 0 needs unlabeled images")
        self.generator = torch.Generator().manual_seed(seed)
        self.pending: float | None = None  # the last hypergradient, applied in after_step

    @property
    def not_distributable(self) -> str | None:
        """Why ``fit`` refuses this learner on several ranks (``None``: it does not); see
        :func:`companion.distributed.check_distributable`."""
        if self.weight is None:
            return None
        return ("the weight's hypergradient goes through a look-ahead step on the whole "
                "meta-batch, and each rank would apply its own share's to its own weight, so "
                "the ranks' weights would drift apart (a fixed --aux-weight runs distributed)")

    @property
    def encoder(self) -> nn.Module:
        """The shared encoder."""
        return self.aux.encoder

    @property
    def lam(self) -> float:
        """The current auxiliary weight :math:`\\lambda`."""
        return self.fixed_weight if self.weight is None else self.weight.value

    def aux_images(self, batch: TaskBatch) -> torch.Tensor:
        """The episode images of ``batch`` and, if any, a draw of extra unlabeled ones.

        Shape:
            - returns: ``(T * (N*K + N*Q) + unlabeled_batch, C, H, W)``
        """
        images = [batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)]
        if self.unlabeled_batch:
            pick = torch.randperm(len(self.unlabeled), generator=self.generator)
            images.append(self.unlabeled[pick[: self.unlabeled_batch]].to(batch.support_x))
        return torch.cat(images)

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The learner's loss plus :math:`\\lambda` times the auxiliary loss."""
        primary, logs = self.learner.meta_loss(batch)
        aux_loss, aux_logs = self.aux.loss(self.aux_images(batch))
        out = {**logs, **prefixed("aux", {k: float(v) for k, v in aux_logs.items()}),
               "aux_weight": self.lam}
        if self.weight is not None:
            self.pending, meta_logs = self.hypergradient(batch)
            out.update({**prefixed("meta", meta_logs), "meta/hypergradient": self.pending})
        return primary + self.lam * aux_loss, out

    def hypergradient(self, batch: TaskBatch) -> tuple[float, dict[str, float]]:
        """:func:`lookahead_hypergradient` with one half of the batch as ``a`` and the other
        as ``b`` (:func:`halves`)."""
        a, b = halves(batch)
        learner_names = {id(p): n for n, p in self.learner.named_parameters()}
        params = dict(self.learner.named_parameters())
        aux_names = {}
        for n, p in self.aux.named_parameters():
            aux_names[n] = learner_names.get(id(p), f"aux/{n}")
            params.setdefault(aux_names[n], p)
        images_a = self.aux_images(a)

        loss_of = MetaLossModule(self.learner)  # functional_call calls forward: meta_loss here

        def primary(on: TaskBatch):
            return lambda p: functional_call(loss_of, {f"learner.{n}": p[n] for n in
                                                       learner_names.values()}, (on,))[0]

        def auxiliary(p):
            return functional_call(self.aux, {n: p[k] for n, k in aux_names.items()},
                                   (images_a,))[0]

        return lookahead_hypergradient(params, primary(a), auxiliary, primary(b),
                                       weight=self.lam, step_size=self.step_size)

    def after_step(self, step: int, total_steps: int) -> None:
        """Move :math:`\\lambda` by the last hypergradient; then the learner's own update."""
        if self.weight is not None and self.pending is not None:
            self.weight.step(self.pending)
            self.pending = None
        for part in (self.learner, self.aux):
            if callable(getattr(part, "after_step", None)):
                part.after_step(step, total_steps)

    def generators(self) -> dict[str, torch.Generator]:
        """The wrapper's own stream (extra images) and the learner's, prefixed."""
        return {"unlabeled": self.generator, **prefixed("learner", generators_of(self.learner))}

    def classify(self, episode: Episode) -> Any:
        """The learner's classifier: the auxiliary loss changes training only."""
        return self.learner.classify(episode)
