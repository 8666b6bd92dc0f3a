r"""Sinusoid regression: the toy few-shot problem of MAML (Finn et al., 2017, Sec. 5.1).

A *task* is one sine wave

.. math:: y = A \sin(x - \varphi), \qquad A \sim U[0.1, 5.0], \quad
    \varphi \sim U[0, \pi], \quad x \sim U[-5, 5],

and a *K-shot* episode gives ``K`` points ``(x, y)`` of it to adapt on (the support set;
Finn et al. evaluate ``K = 5, 10, 20``) and further points of the same wave to be scored on
(the query set; their code draws ``2K`` points and splits them ``K``/``K``). The loss is the
mean squared error. Amplitude and phase are never shown to the learner: it must infer the
wave from ``K`` points, which a learner that has seen many waves can do from very few
(MAML's Figure 2) and a network trained from scratch on ``K`` points cannot.

An episode is an :class:`~companion.data.episodes.Episode` with float labels:
``support_x (K, 1)``, ``support_y (K,)``, so gradient-based meta-learners use the same code
for sinusoids and images. :meth:`SinusoidTasks.sample_with_params` also returns the
:class:`SinusoidTask`, whose :meth:`~SinusoidTask.curve` gives the true wave for plots.

Example:
    >>> tasks = SinusoidTasks(shots=10, queries=10, seed=0)
    >>> episode, task = tasks.sample_with_params()
    >>> episode.support_x.shape, episode.query_y.shape
    (torch.Size([10, 1]), torch.Size([10]))
    >>> bool(torch.allclose(episode.support_y, task(episode.support_x[:, 0])))
    True

Reference: Finn, Abbeel & Levine, Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks, ICML 2017, Sec. 5.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from companion.checks import check_int
from companion.data.episodes import Episode, TaskBatch

AMPLITUDE: tuple[float, float] = (0.1, 5.0)
"""Range of the amplitude ``A`` (uniform)."""
PHASE: tuple[float, float] = (0.0, math.pi)
"""Range of the phase ``phi`` (uniform)."""
INPUT: tuple[float, float] = (-5.0, 5.0)
"""Range of the inputs ``x`` (uniform)."""


@dataclass(frozen=True)
class SinusoidTask:
    """One sine wave ``y = amplitude * sin(x - phase)``."""

    amplitude: float
    phase: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The wave at ``x`` (any shape; same shape, dtype and device out)."""
        return self.amplitude * torch.sin(x - self.phase)

    def curve(
        self, points: int = 200, *, dtype: torch.dtype = torch.float32, device=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The wave on an evenly spaced grid over the input range ``[-5, 5]``, for plots.

        Shape:
            - returns: ``x (points,)`` and ``y (points,)``
        """
        check_int("points", points, 2)
        x = torch.linspace(*INPUT, points, dtype=dtype, device=device)
        return x, self(x)


class SinusoidTasks:
    """Draws K-shot sinusoid regression episodes (Finn et al., 2017, Sec. 5.1).

    Every episode is a fresh wave: ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``, then
    ``shots + queries`` inputs ``x ~ U[-5, 5]`` (the first ``shots`` are the support).

    Args:
        shots: support points ``K`` per task (Finn et al.: 5, 10 or 20).
        queries: query points per task (``K`` in Finn et al.'s code; 0 allowed).
        seed: seed of the sampler's own generator (ignored if ``generator`` is given).
        generator: a CPU ``torch.Generator`` to draw from.
        dtype: floating dtype of ``x`` and ``y``.

    Shape:
        - support_x: ``(shots, 1)``, support_y: ``(shots,)``
        - query_x: ``(queries, 1)``, query_y: ``(queries,)``

    Raises:
        TypeError: ``shots`` or ``queries`` is not an int.
        ValueError: ``shots < 1``, ``queries < 0`` or ``dtype`` not floating point.
    """

    def __init__(
        self,
        shots: int,
        queries: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.shots = check_int("shots", shots)
        self.queries = check_int("queries", queries, 0)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        self.dtype = dtype
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.generator = generator

    def generators(self) -> dict[str, torch.Generator]:
        """The sampler's one random stream (:class:`companion.protocols.TaskSource`)."""
        return {"tasks": self.generator}

    def sample_task(self) -> SinusoidTask:
        """Draw one wave (its amplitude and phase)."""
        u_a, u_phi = torch.rand(2, generator=self.generator, dtype=torch.float64).tolist()
        amplitude = AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * u_a
        phase = PHASE[0] + (PHASE[1] - PHASE[0]) * u_phi
        return SinusoidTask(amplitude, phase)

    def sample_with_params(self) -> tuple[Episode, SinusoidTask]:
        """Draw one episode and the wave it came from."""
        task = self.sample_task()
        n = self.shots + self.queries
        u = torch.rand(n, 1, generator=self.generator, dtype=torch.float64)
        x = (INPUT[0] + (INPUT[1] - INPUT[0]) * u).to(self.dtype)  # (K + Q, 1)
        y = task(x[:, 0])  # (K + Q,)
        k = self.shots
        return Episode(x[:k], y[:k], x[k:], y[k:]), task

    def sample(self) -> Episode:
        """Draw one episode."""
        return self.sample_with_params()[0]

    def sample_batch(self, tasks: int) -> TaskBatch:
        """Draw ``tasks`` episodes stacked into a :class:`TaskBatch` (``T`` leading)."""
        check_int("tasks", tasks)
        return TaskBatch.stack([self.sample() for _ in range(tasks)])
