"""Two-dimensional toy problems that make the book's geometry visible.

Small enough to solve in closed form or in a few milliseconds, so a chapter can draw them
and a widget can redraw them as a slider moves:

- :class:`QuadraticTasks`: tasks whose losses are quadratics in two parameters. MAML's
  objective after ``k`` inner gradient steps is then a quadratic too, so its minimiser,
  the *initialisation* MAML looks for, has a closed form (:meth:`QuadraticTasks.maml_init`)
  to set beside the minimiser of the average loss (:meth:`QuadraticTasks.average_init`,
  what pretraining on all tasks finds).
- :func:`contrastive_toy`: points in the plane embedded on the unit circle by a tiny shared
  encoder, trained with NT-Xent (alignment of two views *and* uniformity) or with the
  alignment term alone, which collapses every point to one place.

Example:
    >>> tasks = QuadraticTasks.default()
    >>> theta = tasks.maml_init(alpha=0.3, steps=1)
    >>> bool(tasks.maml_loss(theta, 0.3, 1) <= tasks.maml_loss(tasks.average_init(), 0.3, 1))
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from companion.checks import check_int, check_positive
from companion.ssl.simclr import nt_xent


@dataclass(frozen=True)
class QuadraticTasks:
    """Tasks ``L_i(theta) = 1/2 (theta - a_i)^T A_i (theta - a_i)`` over ``theta`` in R^2.

    Args:
        optima: each task's minimiser ``a_i``.
        curvatures: each task's symmetric positive-definite ``A_i``.

    Shape:
        - optima: ``(T, 2)``
        - curvatures: ``(T, 2, 2)``
    """

    optima: torch.Tensor
    curvatures: torch.Tensor

    def __post_init__(self) -> None:
        t = self.optima.shape[0]
        if self.optima.shape != (t, 2) or self.curvatures.shape != (t, 2, 2):
            raise ValueError(f"optima must be (T, 2) and curvatures (T, 2, 2); got "
                             f"{tuple(self.optima.shape)} and {tuple(self.curvatures.shape)}")

    @classmethod
    def default(cls) -> QuadraticTasks:
        """Three tasks with optima far apart and curvatures along different directions."""
        optima = torch.tensor([[-1.5, 1.0], [1.5, 1.2], [0.2, -1.6]], dtype=torch.float64)
        def rotated(angle: float, big: float, small: float) -> torch.Tensor:
            c, s = torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))
            r = torch.stack([torch.stack([c, -s]), torch.stack([s, c])]).double()
            return r @ torch.diag(torch.tensor([big, small], dtype=torch.float64)) @ r.T
        curvatures = torch.stack([rotated(0.3, 2.5, 0.4), rotated(-0.8, 2.0, 0.5),
                                  rotated(1.4, 3.0, 0.3)])
        return cls(optima, curvatures)

    @property
    def tasks(self) -> int:
        return self.optima.shape[0]

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """Every task's loss at ``theta``; ``theta`` ``(..., 2)`` gives ``(..., T)``."""
        d = theta.unsqueeze(-2) - self.optima  # (..., T, 2)
        return 0.5 * torch.einsum("...ti,tij,...tj->...t", d, self.curvatures, d)

    def adapt(self, theta: torch.Tensor, alpha: float, steps: int) -> torch.Tensor:
        """``steps`` gradient steps of size ``alpha`` on each task from ``theta``.

        Returns each task's path, ``(T, steps + 1, 2)``, starting at ``theta``.

        The gradient of task ``i`` is ``A_i (theta - a_i)``, so a step is exact, no autograd.
        """
        check_int("steps", steps, 0)
        path = [theta.expand(self.tasks, 2).clone()]
        for _ in range(steps):
            d = path[-1] - self.optima
            path.append(path[-1] - alpha * torch.einsum("tij,tj->ti", self.curvatures, d))
        return torch.stack(path, dim=1)

    def maml_loss(self, theta: torch.Tensor, alpha: float, steps: int) -> torch.Tensor:
        """MAML's objective: the mean task loss after ``steps`` inner steps from ``theta``."""
        adapted = self.adapt(theta, alpha, steps)[:, -1]  # (T, 2)
        d = adapted - self.optima
        return 0.5 * torch.einsum("ti,tij,tj->t", d, self.curvatures, d).mean()

    def _step_matrices(self, alpha: float, steps: int) -> torch.Tensor:
        """``W_i = M_i^T A_i M_i`` with ``M_i = (I - alpha A_i)^steps``: ``(T, 2, 2)``."""
        eye = torch.eye(2, dtype=self.curvatures.dtype)
        m = torch.linalg.matrix_power(eye - alpha * self.curvatures, steps)
        return m.transpose(-1, -2) @ self.curvatures @ m

    def maml_init(self, alpha: float, steps: int = 1) -> torch.Tensor:
        """The minimiser of :meth:`maml_loss`, in closed form.

        After ``k`` steps ``theta_k - a_i = M_i (theta - a_i)``, so the objective is
        ``1/2T sum_i (theta - a_i)^T W_i (theta - a_i)`` with ``W_i`` from
        :meth:`_step_matrices`, minimised at ``(sum W_i)^-1 sum W_i a_i``.
        """
        check_positive("alpha", alpha)
        w = self._step_matrices(alpha, check_int("steps", steps, 0))
        return torch.linalg.solve(w.sum(0), torch.einsum("tij,tj->i", w, self.optima))

    def average_init(self) -> torch.Tensor:
        """The minimiser of the average loss (no adaptation): what pretraining finds."""
        a = self.curvatures
        return torch.linalg.solve(a.sum(0), torch.einsum("tij,tj->i", a, self.optima))


def contrastive_toy(*, loss: str = "nt_xent", points: int = 12, steps: int = 300,
                    temperature: float = 0.5, noise: float = 0.15, seed: int = 0
                    ) -> dict[str, torch.Tensor]:
    """Train a tiny encoder ``z = normalise(W x + b)`` on two noisy views of 2-D points.

    ``loss="nt_xent"`` pulls each point's two views together and pushes other points away
    (chapter 5's loss); ``loss="align"`` only pulls views together,
    ``mean ||z1 - z2||^2``, and nothing stops every point from landing in one place.

    Returns:
        ``{"x": (P, 2) inputs, "before": (P, 2), "after": (P, 2)}``: the embeddings of the
        clean inputs, on the unit circle, before and after training.
    """
    if loss not in ("nt_xent", "align"):
        raise ValueError(f"loss must be 'nt_xent' or 'align'; got {loss!r}")
    check_int("points", points, 2)
    check_int("steps", steps, 0)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(points, 2, generator=g)
    hidden = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        for p in hidden.parameters():
            p.copy_(0.8 * torch.randn(p.shape, generator=g))

    def embed(v: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(hidden(v), dim=1)

    with torch.no_grad():
        before = embed(x)
    optimiser = torch.optim.Adam(hidden.parameters(), lr=0.03)
    threads = torch.get_num_threads()
    # Tensors this small: one thread beats several waiting for each other (on a busy 2-core
    # machine 200 steps took 17.6 s on two threads, 2.1 s on one).
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            v1 = x + noise * torch.randn(x.shape, generator=g)
            v2 = x + noise * torch.randn(x.shape, generator=g)
            z1, z2 = embed(v1), embed(v2)
            value = (nt_xent(z1, z2, temperature=temperature) if loss == "nt_xent"
                     else (z1 - z2).pow(2).sum(1).mean())
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        after = embed(x)
    return {"x": x, "before": before, "after": after}
