r"""The weight of an auxiliary loss, learned by a hypergradient through one inner step.

An auxiliary loss :math:`\mathcal L_\text{aux}` (rotation prediction, say) helps a primary
task only if its gradient points somewhere useful for that task, and how much to weigh it
is a hyper-parameter, :math:`\lambda` in
:math:`\mathcal L_\text{train}(\theta) = \mathcal L_\text{pri}(\theta) + \lambda\,
\mathcal L_\text{aux}(\theta)`. Meta-learning sets it the way MAML sets an initialisation
(chapter 3): take one gradient step on the training loss and ask how the *primary* loss on
held-out data, after that step, depends on :math:`\lambda`. With step size :math:`\alpha`,

.. math::

    \theta'(\lambda) = \theta - \alpha \big(\nabla \mathcal L_\text{pri}^{a}(\theta)
        + \lambda \nabla \mathcal L_\text{aux}^{a}(\theta)\big), \qquad
    \frac{\partial \mathcal L_\text{pri}^{b}(\theta'(\lambda))}{\partial \lambda}
    = -\alpha\, \nabla \mathcal L_\text{pri}^{b}(\theta')^\top
      \nabla \mathcal L_\text{aux}^{a}(\theta),

where ``a`` is the data the step trains on and ``b`` held-out data of the primary task (the
halves the code's ``_a`` and ``_b`` arguments name). The hypergradient is exact for one step
and needs no Hessian, only two gradients: the weight grows when the auxiliary gradient
agrees with the held-out primary gradient and shrinks when it disagrees. This is the
one-step special case of the bilevel view of auxiliary learning (Navon et al., 2021,
*Auxiliary Learning by Implicit Differentiation*; Raghu et al., 2021, *Meta-Learning to
Improve Pre-Training*, which learn pre-training hyper-parameters the same way);
gradient-similarity weighting (Du et al., 2018) is its sign.

:func:`lookahead_hypergradient` computes it with ``torch.func.functional_call``, for any
losses written as functions of a parameter dict. :class:`LogWeight` keeps
:math:`\lambda = e^{s}` positive and takes a plain gradient step on :math:`s`, a buffer, so
a checkpoint resumes it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from companion.checks import check_positive

Params = dict[str, torch.Tensor]


def lookahead_hypergradient(params: Params, primary_a: Callable[[Params], torch.Tensor],
                            auxiliary_a: Callable[[Params], torch.Tensor],
                            primary_b: Callable[[Params], torch.Tensor], *, weight: float,
                            step_size: float) -> tuple[float, dict[str, float]]:
    r"""``d L_pri^b(theta'(lambda)) / d lambda`` at ``weight``, after one SGD step on ``a``.

    Args:
        params: the parameters :math:`\theta` the step moves (tensors with
            ``requires_grad``; parameters a loss does not use get a zero gradient).
        primary_a, auxiliary_a: the primary and auxiliary losses on the training data ``a``,
            as functions of a parameter dict.
        primary_b: the primary loss on held-out data ``b``.
        weight: :math:`\lambda`; step_size: :math:`\alpha`.

    Returns:
        The hypergradient, and logs: the held-out loss before and after the step, and the
        cosine between the held-out primary and the auxiliary gradients.
    """
    check_positive("step_size", step_size)
    names = list(params)
    tensors = [params[n] for n in names]

    def gradient(loss: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
        return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]

    g_pri = gradient(primary_a(params), tensors)
    g_aux = gradient(auxiliary_a(params), tensors)
    moved = {n: (t - step_size * (gp + weight * ga)).detach().requires_grad_(True)
             for n, t, gp, ga in zip(names, tensors, g_pri, g_aux, strict=True)}
    loss_b = primary_b(moved)
    g_val = gradient(loss_b, [moved[n] for n in names])
    dot = sum((gv * ga).sum() for gv, ga in zip(g_val, g_aux, strict=True))
    norms = math.sqrt(float(sum(g.pow(2).sum() for g in g_val))) * math.sqrt(
        float(sum(g.pow(2).sum() for g in g_aux)))
    with torch.no_grad():
        before = float(primary_b({n: t.detach() for n, t in params.items()}))
    return -step_size * float(dot), {"val_loss_before": before,
                                     "val_loss_after": float(loss_b.detach()),
                                     "grad_cosine": float(dot) / norms if norms else 0.0}


class LogWeight(nn.Module):
    r"""A positive weight :math:`\lambda = e^{s}` moved by gradient steps on :math:`s`.

    :math:`\partial / \partial s = \lambda\, \partial / \partial \lambda`, so a step is
    :math:`s \leftarrow s - \eta \lambda\, h` for a hypergradient :math:`h`. ``s`` is a
    buffer: saved in ``state_dict`` and untouched by the model's optimiser.

    Args:
        start: the initial :math:`\lambda`.
        lr: the step size :math:`\eta` on :math:`s`.
    """

    log_weight: torch.Tensor

    def __init__(self, start: float, lr: float) -> None:
        super().__init__()
        self.register_buffer("log_weight", torch.tensor(math.log(check_positive("start", start))))
        self.lr = check_positive("lr", lr)

    @property
    def value(self) -> float:
        """The current :math:`\\lambda`."""
        return float(self.log_weight.exp())

    def step(self, hypergradient: float) -> None:
        """One gradient step on :math:`s` for the hypergradient in :math:`\\lambda`."""
        self.log_weight -= self.lr * self.value * hypergradient
