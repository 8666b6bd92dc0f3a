r"""Reptile: meta-learning by moving the initialisation towards the adapted weights.

Nichol, Achiam & Schulman (2018), *On First-Order Meta-Learning Algorithms*,
arXiv:1803.02999.

**The update** (their Algorithm 2, the batched version). For each task :math:`\tau_i` of a
meta-batch of :math:`n`, start from the meta-parameters :math:`\theta`, take :math:`k` steps
of SGD or Adam on the task's loss, :math:`\phi_i = U^k_{\tau_i}(\theta)`, then

.. math:: \theta \leftarrow \theta + \epsilon \Big(\frac{1}{n}\sum_{i=1}^n \phi_i - \theta\Big)
    = \theta + \epsilon (\bar\phi - \theta).  \qquad (1)

No second derivatives, no backpropagation through the inner loop, not even a query set.
With :math:`k = 1`, :math:`\phi_i = \theta - \alpha \nabla L_{\tau_i}(\theta)` and (1) is
SGD on the expected loss (joint training), which does not learn to adapt; :math:`k \ge 2`
does.

**Why it works** (Sec. 5.1). Let :math:`\bar g_j, \bar H_j` be the gradient and Hessian at
:math:`\theta` of the loss on the :math:`j`-th inner minibatch. To first order in the inner
step size :math:`\alpha`, step :math:`j` follows :math:`g_j = \bar g_j - \alpha \bar H_j
\sum_{i<j} \bar g_i + O(\alpha^2)`, and :math:`\theta - \phi = \alpha \sum_j g_j`, so

.. math:: E\Big[\frac{\theta - \phi}{\alpha}\Big] = k\, E[\bar g]
    - \tfrac{1}{2} k(k-1)\, \alpha\, E[\bar H_2 \bar g_1] + O(\alpha^2), \qquad
    E[\bar H_2 \bar g_1] = \tfrac{1}{2} \nabla_\theta E[\bar g_1 \cdot \bar g_2].  \qquad (2)

The first term (AvgGrad) descends the expected loss; the second (AvgGradInner) *ascends*
the inner product of gradients on different minibatches of the same task, so that a step on
one minibatch also lowers the loss on the others: the initialisation learns to generalise
within a task after a few steps. MAML's meta-gradient has the same two terms with other
coefficients.

**As a loss.** The training loop runs ``loss.backward(); optimizer.step()``, so
:meth:`Reptile.meta_loss` returns the surrogate (``sg``: stop-gradient; a sum over tensors)

.. math:: \mathcal{L}(\theta) = \tfrac{1}{2} \lVert \theta - \mathrm{sg}(\bar\phi) \rVert^2,
    \qquad \nabla_\theta \mathcal{L} = \theta - \bar\phi,  \qquad (3)

and ``torch.optim.SGD(lr=epsilon)`` (no momentum, no weight decay) performs (1) exactly.
Nichol et al. (Sec. 3) suggest treating :math:`\theta - \phi` as a gradient for Adam; their
released code (openai/supervised-reptile) always interpolates, i.e. plain SGD with
:math:`\epsilon` annealed linearly from 1 to 0. We do the same; the outer loop is the
training loop's (:class:`companion.train.TrainConfig` with ``optimizer="sgd"``, ``lr=1.0``,
``schedule="linear"``: the preset of :mod:`companion.methods`), and Adam on the surrogate is
one optimizer away. Their 5-way Omniglot runs take 5 tasks per meta-step (the loop's
``meta_batch``) for 100,000 meta-steps (``steps``), on training episodes of 10 shots per
class (the episode sampler's ``shots``).

Deviations from that code: Adam's moments restart for every task (the TF code restores
only the trainable variables between tasks, so they carry over); the inner loop sees the
support set only (the query set serves the logs), so the training episodes' support sets
hold the inner loop's data: more shots per class than the test episodes have, so that the
minibatches of a task differ (see (2)); BatchNorm is transductive, as in MAML.

Shape:
    - classification: support_x ``(N*K, C, H, W)``, support_y ``(N*K,)`` int64, logits
      ``(N*Q, N)``
    - regression: x ``(K, *)``, y ``(K,)`` float, predictions ``(K,)``
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, grad

from companion.checks import check_choice, check_int, check_positive
from companion.data.episodes import Episode, TaskBatch
from companion.meta.maml import LOSSES, Params, task_loss


@dataclass(frozen=True)
class ReptileConfig:
    """Reptile's hyper-parameters; defaults are Nichol et al.'s 5-way Omniglot runs (the
    paper's table and the README commands of openai/supervised-reptile; later READMEs list
    values tuned per setting).

    The outer loop's settings are the training loop's (:class:`companion.train.TrainConfig`
    and the presets of :mod:`companion.methods`), not fields here: Nichol et al. interpolate
    with epsilon = 1 annealed linearly to 0 (``optimizer="sgd"``, ``lr=1.0``,
    ``schedule="linear"``) over 100,000 meta-iterations (``steps``) of 5 tasks
    (``meta_batch``), and train on 10 shots per class (the episode sampler's shots).
    """

    inner_steps: int = 5  # k: inner iterations per task in meta-training
    inner_lr: float = 1e-3  # alpha: the inner optimizer's learning rate (Adam's, in the paper)
    inner_optimizer: str = "adam"  # "adam" (paper, Omniglot/Mini-ImageNet) or "sgd"
    adam_betas: tuple[float, float] = (0.0, 0.999)  # beta1 = 0: no momentum (their code)
    adam_eps: float = 1e-8  # Adam's epsilon (TF's and PyTorch's default)
    inner_batch: int | None = 10  # examples per inner step, cycling through the shuffled
    #   support set without replacement; None = the whole support set every step
    eval_inner_steps: int = 50  # inner iterations at test time (classify)
    eval_inner_batch: int | None = 5  # inner batch size at test time
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"  # "mse": regression (an
    #   output (B, 1) is squeezed to (B,)), with float targets

    def __post_init__(self) -> None:
        check_int("inner_steps", self.inner_steps)
        check_int("eval_inner_steps", self.eval_inner_steps)
        check_int("inner_batch", self.inner_batch, optional=True)
        check_int("eval_inner_batch", self.eval_inner_batch, optional=True)
        check_positive("inner_lr", self.inner_lr)
        check_positive("adam_eps", self.adam_eps)
        check_choice("inner_optimizer", self.inner_optimizer, ("adam", "sgd"))
        check_choice("loss", self.loss, LOSSES)
        betas = self.adam_betas
        if (not isinstance(betas, tuple | list) or len(betas) != 2
                or not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"adam_betas must be two numbers in [0, 1); got {betas!r}")


def minibatch_indices(
    n: int, batch: int | None, steps: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices of ``steps`` inner minibatches cycling through shuffled epochs of ``n``.

    As ``_mini_batches`` in the reference code: shuffle, cut into batches, reshuffle when the
    data run out (a batch may straddle epochs). ``batch`` ``None`` or ``>= n``: all, in order.

    Shape:
        - returns: ``(steps, min(batch, n))`` int64
    """
    b = n if batch is None else min(batch, n)
    if b == n or steps == 0:
        return torch.arange(n).expand(steps, n)[:, :b]
    epochs = math.ceil(steps * b / n)
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])
    return order[: steps * b].view(steps, b)


class Reptile(nn.Module):
    """Reptile around any network ``net`` that maps inputs to logits or predictions.

    Args:
        net: e.g. ``nn.Sequential(Conv4(), linear_head(64, 5))`` or
            ``MLP(1, (40, 40), out_features=1)``. Its trainable parameters are theta;
            frozen ones (``requires_grad=False``) and buffers are used as they are.
        config: hyper-parameters (default :class:`ReptileConfig()`); ``config.loss``
            chooses classification (int64 labels) or regression (float targets).
        seed, generator: randomness of the inner minibatches (``generator`` wins; the
            default is seed 0). :meth:`generators` returns it for the training loop's
            checkpoints.
    """

    # fit's mixed precision leaves Reptile in float32: its gradient theta - mean(phi) is the
    # small difference of two parameter sets, whose direction bfloat16 autocast in the inner
    # loop turns the most of all methods (bench/amp_numerics.py; companion.train's docstring).
    amp_safe = False

    def __init__(
        self,
        net: nn.Module,
        config: ReptileConfig | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        config = ReptileConfig() if config is None else config
        if not isinstance(config, ReptileConfig):
            raise TypeError(f"config must be a ReptileConfig; got {type(config).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        self.net, self.config = net, config
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        self.generator = generator

    def generators(self) -> dict[str, torch.Generator]:
        """The random stream of the inner minibatches, by name (saved in checkpoints)."""
        return {"minibatches": self.generator}

    def params(self) -> Params:
        """theta: the trainable parameters of ``net`` by name (the live tensors)."""
        return {k: p for k, p in self.net.named_parameters() if p.requires_grad}

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``net`` with ``params`` in place of its trainable parameters."""
        fixed = {k: p for k, p in self.net.named_parameters() if not p.requires_grad}
        fixed |= dict(self.net.named_buffers())
        out = functional_call(self.net, (params, fixed), (x,))
        if self.config.loss == "mse" and out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]  # (B, 1) -> (B,)
        return out

    def criterion(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (classification) or squared error (regression)."""
        return task_loss(out, y, self.config.loss)

    def task_loss(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task's loss of ``net`` with ``params``: ``criterion(predict(params, x), y)``."""
        return self.criterion(self.predict(params, x), y)

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        *,
        steps: int | None = None,
        test: bool = False,
    ) -> Params:
        """phi = U^k(theta): ``k`` inner SGD/Adam steps on the support set from ``params``.

        Args:
            params: the starting point (detached here: Reptile is first-order).
            support_x, support_y: the task's training data.
            steps: override ``k`` (``0`` returns ``params``, detached).
            test: the test-time settings, ``eval_inner_steps``/``eval_inner_batch``
                instead of ``inner_steps``/``inner_batch``.

        Returns:
            a new dict of detached tensors.
        """
        cfg = self.config
        x, y = support_x, support_y
        batch = cfg.eval_inner_batch if test else cfg.inner_batch
        if steps is None:
            steps = cfg.eval_inner_steps if test else cfg.inner_steps
        check_int("steps", steps, minimum=0)
        self._check_targets(y)
        idx = minibatch_indices(len(y), batch, steps, self.generator).to(y.device)
        grad_fn = grad(self.task_loss)  # (params, x, y) -> dict of gradients
        phi = {k: p.detach() for k, p in params.items()}
        m = {k: torch.zeros_like(p) for k, p in phi.items()}  # Adam's moments
        v = {k: torch.zeros_like(p) for k, p in phi.items()}
        (b1, b2), eps, lr = cfg.adam_betas, cfg.adam_eps, cfg.inner_lr
        for t, rows in enumerate(idx, start=1):
            g = grad_fn(phi, x[rows], y[rows])
            if cfg.inner_optimizer == "sgd":
                phi = {k: phi[k] - lr * g[k] for k in phi}
                continue
            # Adam (Kingma & Ba, 2015, Algorithm 1), written as torch.optim.Adam does.
            m = {k: b1 * m[k] + (1 - b1) * g[k] for k in phi}
            v = {k: b2 * v[k] + (1 - b2) * g[k].square() for k in phi}
            c1, c2 = 1 - b1**t, math.sqrt(1 - b2**t)
            phi = {k: phi[k] - (lr / c1) * m[k] / (v[k].sqrt() / c2 + eps) for k in phi}
        return phi

    def meta_loss(self, batch: TaskBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The surrogate (3), whose gradient is ``theta - mean_i phi_i``, and query logs.

        Returns:
            the scalar surrogate and ``{"loss", "accuracy"}``: the mean query loss and
            (classification only) accuracy after adaptation.
        """
        theta = self.params()
        if not theta:
            raise ValueError("Reptile needs at least one trainable parameter in net")
        phis, losses, accs = [], [], []
        for episode in batch:  # a Python loop over tasks (no vmap: minibatches differ)
            phi = self.adapt(theta, episode.support_x, episode.support_y)
            phis.append(phi)
            with torch.no_grad():
                out = self.predict(phi, episode.query_x)
                losses.append(self.criterion(out, episode.query_y))
                if self.config.loss == "cross_entropy":
                    accs.append((out.argmax(-1) == episode.query_y).float().mean())
        phi_bar = {k: torch.stack([p[k] for p in phis]).mean(0) for k in theta}  # mean_i phi_i
        surrogate = 0.5 * sum((theta[k] - phi_bar[k]).square().sum() for k in theta)  # (3)
        logs = {"loss": torch.stack(losses).mean().item()}
        if accs:
            logs["accuracy"] = torch.stack(accs).mean().item()
        return surrogate, logs

    def classify(self, episode: Episode) -> torch.Tensor:
        """Adapt on the support set with the test-time settings; score the queries.

        Shape:
            - returns: logits ``(N*Q, N)`` (or predictions ``(Q,)`` for ``"mse"``), detached
        """
        with torch.enable_grad():
            phi = self.adapt(self.params(), episode.support_x, episode.support_y, test=True)
        with torch.no_grad():
            return self.predict(phi, episode.query_x).detach()

    def _check_targets(self, y: torch.Tensor) -> None:
        loss = self.config.loss
        if (loss == "mse") != y.is_floating_point():
            want = "float targets" if loss == "mse" else "int64 class labels"
            raise TypeError(f"loss={loss!r} needs {want}; got y of dtype {y.dtype}")
