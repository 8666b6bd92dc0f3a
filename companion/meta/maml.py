r"""MAML, first-order MAML, ANIL and Proto-MAML, written with ``torch.func``.

**MAML** (Finn, Abbeel & Levine, 2017, Algorithm 2) meta-learns an initialisation
:math:`\theta` from which a few gradient steps on a task's support set give a good model
for that task. For each task :math:`T_i` of a meta-batch the *inner loop* takes SGD steps
on the support loss (repeated ``inner_steps`` times),

.. math:: \theta'_i = \theta - \alpha \nabla_\theta \mathcal{L}_{T_i}(f_\theta),

and the *outer loop* moves the initialisation to lower the query losses of the adapted
models (Adam with step size :math:`\beta` in the paper),

.. math:: \theta \leftarrow \theta - \beta \nabla_\theta \sum_i \mathcal{L}_{T_i}(f_{\theta'_i}).

:meth:`MAML.meta_loss` returns the *mean* of the query losses over the tasks (the sum
divided by the number of tasks ``T``, i.e. :math:`\beta` rescaled), as the paper's code does.

**Second vs first order.** :math:`\theta'_i` depends on :math:`\theta` through the inner
gradient, so the meta-gradient of one task is
:math:`(I - \alpha \nabla^2_\theta \mathcal{L}^{S}_{T_i}(\theta))\,
\nabla_{\theta'} \mathcal{L}^{Q}_{T_i}(\theta'_i)`: a Hessian-vector product per inner
step. ``first_order=True`` treats the inner gradients as constants (they are detached),
which drops the Hessian term: the meta-gradient is the query gradient at the adapted
parameters, applied to :math:`\theta` (Finn et al., sec. 5.2: nearly as accurate on
miniImageNet, about 33% faster).

**Implementation.** Everything is functional: a parameter dict goes in, a new dict of
``fast_params`` comes out (``torch.func.functional_call`` runs the model with it,
``torch.func.grad`` differentiates the support loss), so there is no module cloning. The
tasks of a meta-batch are either a Python loop or ``torch.func.vmap`` (``strategy``):
``"auto"`` uses ``vmap`` on CUDA and the loop on the CPU, where ``vmap`` turns the per-task
convolution weights into grouped convolutions and the per-task activations into large
tensors that no longer fit in cache (Conv-4, 5-way 1-shot 15-query, 32 tasks, 2 cores:
about 2.3 s per step looped, several times that with ``vmap``; ``bench/maml_speed.py``).
Both give the same meta-gradient when the norm layers are :class:`companion.nets.BatchNorm` (see
``tests/test_nets.py`` for why not ``nn.BatchNorm2d``).

**ANIL** (Raghu et al., 2020) adapts only the head in the inner loop
(``MAMLConfig(adapt="head")``: the parameters of the model's last module); the body is
still meta-learned in the outer loop. The body's features are computed once per task, so
the inner loop is a linear model's and the step is much cheaper.

**Proto-MAML** (Triantafillou et al., 2020, Meta-Dataset, sec. 3) initialises each task's
linear head from the prototypes :math:`c_k` (mean support embeddings of class :math:`k`):
:math:`W_k = 2 c_k, b_k = -\lVert c_k \rVert^2`, so the initial logits
:math:`2 c_k^\top z - \lVert c_k \rVert^2 = -\lVert z - c_k \rVert^2 + \lVert z \rVert^2` are
ProtoNet's up to a per-query constant (same softmax). Inner steps then adapt encoder and
head (or the head only), the head as a parameter of its own (as in Meta-Dataset's code, the
inner gradient does not flow back through the prototypes); the meta-gradient does flow
through the initialisation into the encoder, even first-order, which is how Meta-Dataset
trains it (``first_order=True``).

Shape:
    - params, fast_params: ``dict[str, Tensor]`` named as ``model.named_parameters()``
    - one task: support_x ``(N*K, *)``, support_y ``(N*K,)``, query_x ``(N*Q, *)``;
      ``predict`` gives logits ``(N*Q, N)``
    - a :class:`TaskBatch` stacks ``T`` tasks on a leading axis; ``meta_loss`` is a scalar

References:
    - Finn, Abbeel & Levine, Model-Agnostic Meta-Learning for Fast Adaptation of Deep
      Networks, ICML 2017 (Algorithm 2; hyper-parameters in sec. 5).
    - Raghu, Raghu, Bengio & Vinyals, Rapid Learning or Feature Reuse? Towards Understanding
      the Effectiveness of MAML, ICLR 2020 (ANIL).
    - Triantafillou et al., Meta-Dataset: A Dataset of Datasets for Learning to Learn from
      Few Examples, ICLR 2020 (Proto-MAML, sec. 3).

Example:
    >>> from companion.nets import Conv4, linear_head
    >>> maml = MAML(nn.Sequential(Conv4(1, hidden=8), linear_head(8, 5)))
    >>> y = torch.arange(5).repeat(2, 1)  # 2 tasks, 5-way 1-shot, 1 query per class
    >>> batch = TaskBatch(torch.rand(2, 5, 1, 28, 28), y, torch.rand(2, 5, 1, 28, 28), y)
    >>> loss, logs = maml.meta_loss(batch)
    >>> loss.backward()  # the meta-gradient; then Adam(maml.parameters(), lr=1e-3).step()
    >>> sorted(logs)
    ['accuracy', 'loss']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from companion.data.episodes import Episode, TaskBatch
from companion.meta.protonet import prototypes

Params = dict[str, torch.Tensor]
LOSSES = ("cross_entropy", "mse")
ADAPT = ("all", "head")
STRATEGIES = ("auto", "loop", "vmap")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


@dataclass(frozen=True)
class MAMLConfig:
    """Hyper-parameters of MAML; the defaults are Omniglot 5-way (Finn et al., sec. 5.2).

    For the sinusoid regression of sec. 5.1 use ``MAMLConfig(inner_lr=0.01, loss="mse")``
    with ``MLP(1, hidden=(40, 40), out_features=1)`` (meta-batch 25, K = 10 in the paper).
    """

    inner_lr: float = 0.4  # alpha, the inner SGD step (Omniglot; 0.01 for sinusoids)
    inner_steps: int = 1  # inner steps while meta-training (Omniglot 5-way: 1)
    inner_steps_test: int = 3  # inner steps at meta-test, same alpha (Omniglot: 3)
    meta_batch: int = 32  # tasks per meta-update (Omniglot 5-way: 32); read by the loop
    outer_lr: float = 1e-3  # beta, Adam's step size (the paper's code); read by the loop
    first_order: bool = False  # detach the inner gradients: first-order MAML (sec. 5.2)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"  # "mse": regression, sec. 5.1
    adapt: Literal["all", "head"] = "all"  # "head": ANIL, the inner loop adapts the head only
    strategy: Literal["auto", "loop", "vmap"] = "auto"  # tasks: vmap on CUDA, loop on CPU

    def __post_init__(self) -> None:
        for name in ("inner_lr", "outer_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number; got {value!r}")
        for name, minimum in (("inner_steps", 0), ("inner_steps_test", 0), ("meta_batch", 1)):
            _check_int(name, getattr(self, name), minimum)
        for name, allowed in (("loss", LOSSES), ("adapt", ADAPT), ("strategy", STRATEGIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        if not isinstance(self.first_order, bool):
            raise ValueError(f"first_order must be a bool; got {self.first_order!r}")


def task_loss(pred: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Cross-entropy of logits, or the mean squared error of ``(B,)``/``(B, D)`` outputs.

    Shape:
        - pred: ``(B, N)`` logits, or ``(B, D)`` predictions (``(B, 1)`` against ``(B,)`` ok)
        - y: ``(B,)`` int64 labels, or float targets ``(B,)``/``(B, D)``; returns a scalar
    """
    if loss == "cross_entropy":
        return F.cross_entropy(pred, y)
    if y.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
        pred = pred.squeeze(1)  # (B, 1) -> (B,)
    if pred.shape != y.shape:
        raise ValueError(f"mse: predictions {tuple(pred.shape)} != targets {tuple(y.shape)}")
    return F.mse_loss(pred, y)


def inner_sgd(
    loss_fn: Callable[[Params], torch.Tensor],
    params: Params,
    names: Sequence[str],
    *,
    lr: float,
    steps: int,
    create_graph: bool,
) -> Params:
    r"""``steps`` SGD steps :math:`\theta \leftarrow \theta - \alpha \nabla_\theta L(\theta)`
    on the entries ``names`` of ``params``; the others are passed through unchanged.

    ``create_graph=False`` detaches the gradients (first order); with ``True`` the new
    parameters stay differentiable functions of the old ones (second order).
    """
    rest = {k: v for k, v in params.items() if k not in names}  # not adapted (ANIL's body)
    for _ in range(steps):
        grads = grad(lambda fast: loss_fn({**rest, **fast}))({k: params[k] for k in names})
        if not create_graph:
            grads = {k: g.detach() for k, g in grads.items()}
        params = {**params, **{k: params[k] - lr * g for k, g in grads.items()}}
    return params


def _accuracy(pred: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss != "cross_entropy":
        return pred.new_zeros(())  # regression: no accuracy
    return (pred.argmax(-1) == y).to(pred.dtype).mean()


class _InnerLoopLearner(nn.Module):
    """Abstract: the meta-batch and evaluation shared by MAML and Proto-MAML. Each defines
    ``params() -> Params``, ``predict(params, x)`` and ``_adapt(params, x, y, steps,
    create_graph)`` (one task, no argument checks, so it is safe under ``vmap``)."""

    def __init__(self, config: MAMLConfig | None) -> None:
        super().__init__()
        config = MAMLConfig() if config is None else config
        if not isinstance(config, MAMLConfig):
            raise TypeError(f"config must be a MAMLConfig; got {type(config).__name__}")
        self.config = config

    def _check(self, x: torch.Tensor, y: torch.Tensor, name: str, lead: int = 1) -> None:
        """Labels match the inputs (``lead`` = 1 for a task, 2 for a :class:`TaskBatch`)."""
        if self.config.loss == "cross_entropy":
            ok = y.ndim == lead and not y.is_floating_point()
            want = f"int64 labels of shape {tuple(x.shape[:lead])}"
        else:
            ok = y.ndim in (lead, lead + 1) and y.is_floating_point()
            want = f"float targets of shape {tuple(x.shape[:lead])} or {tuple(x.shape[:lead])}+(D,)"
        if not ok or y.shape[:lead] != x.shape[:lead]:
            raise ValueError(
                f"{name}: expected {want} for {name}_x {tuple(x.shape)}; "
                f"got {name}_y {tuple(y.shape)} {y.dtype}"
            )

    def adapt(
        self,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int | None = None,
        *,
        create_graph: bool = True,
    ) -> Params:
        r"""Inner loop: :math:`\theta' = \theta - \alpha \nabla_\theta \mathcal{L}^S(\theta)`,
        ``steps`` times (default ``config.inner_steps``).

        The graph to ``params`` is kept (second order) when ``create_graph`` and not
        ``config.first_order``; otherwise the inner gradients are detached.

        Shape:
            - support_x: ``(N*K, *)``; support_y: ``(N*K,)`` (or ``(N*K, D)`` for mse)
            - returns: ``fast_params``, a new dict (keys as :meth:`params`; Proto-MAML adds
              ``head.weight`` ``(N, D)`` and ``head.bias`` ``(N,)``)
        """
        steps = self.config.inner_steps if steps is None else _check_int("steps", steps, 0)
        self._check(support_x, support_y, "support")
        keep = create_graph and not self.config.first_order
        return self._adapt(params, support_x, support_y, steps, keep)

    def meta_loss(
        self, batch: TaskBatch, params: Params | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        r"""Mean query loss after adaptation, :math:`\frac1T\sum_i\mathcal{L}_{T_i}(f_{\theta'_i})`.

        Its gradient with respect to ``params`` (default: this module's parameters) is the
        meta-gradient. Returns ``(loss, {"loss", "accuracy"})`` (no accuracy for mse).

        Shape:
            - batch: a :class:`TaskBatch` of ``T`` tasks; returns a scalar loss
        """
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"meta_loss expects a TaskBatch; got {type(batch).__name__}")
        self._check(batch.support_x, batch.support_y, "support", lead=2)
        self._check(batch.query_x, batch.query_y, "query", lead=2)
        params = self.params() if params is None else params
        cfg = self.config

        def one_task(support_x, support_y, query_x, query_y):
            keep = not cfg.first_order  # second order: keep the inner graph
            fast_params = self._adapt(params, support_x, support_y, cfg.inner_steps, keep)
            pred = self.predict(fast_params, query_x)
            return task_loss(pred, query_y, cfg.loss), _accuracy(pred.detach(), query_y, cfg.loss)

        data = (batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        strategy = cfg.strategy
        if strategy == "auto":
            strategy = "vmap" if batch.support_x.device.type == "cuda" else "loop"
        if strategy == "vmap":
            losses, accuracies = vmap(one_task)(*data)  # (T,), (T,)
        else:
            losses, accuracies = (torch.stack(v) for v in zip(*map(one_task, *data), strict=True))
        loss = losses.mean()
        logs = {"loss": loss.item()}
        if cfg.loss == "cross_entropy":
            logs["accuracy"] = accuracies.mean().item()
        return loss, logs

    def classify(self, episode: Episode) -> torch.Tensor:
        """Adapt on the support (``inner_steps_test`` steps) and score the queries.

        Works under ``torch.no_grad()`` (autograd is enabled inside); returns detached
        outputs.

        Shape:
            - returns: ``(N*Q, N)`` logits (``(N*Q, D)`` predictions for mse)
        """
        if not isinstance(episode, Episode):
            raise TypeError(f"classify expects an Episode; got {type(episode).__name__}")
        x, y, steps = episode.support_x, episode.support_y, self.config.inner_steps_test
        with torch.enable_grad():
            params = {k: v.detach() for k, v in self.params().items()}
            fast_params = self.adapt(params, x, y, steps, create_graph=False)
            return self.predict(fast_params, episode.query_x).detach()


class MAML(_InnerLoopLearner):
    """MAML (Finn et al., 2017), first-order MAML and ANIL around any model.

    Args:
        model: maps inputs to logits (or regression outputs), e.g.
            ``nn.Sequential(Conv4(1, 64), linear_head(64, ways))``. ANIL
            (``config.adapt="head"``) needs an ``nn.Sequential`` whose last module (the
            head) has parameters; the modules before it are the body.
        config: hyper-parameters (default :class:`MAMLConfig()`).

    Shape:
        - predict: x ``(B, *)`` -> ``(B, N)`` logits
    """

    def __init__(self, model: nn.Module, config: MAMLConfig | None = None) -> None:
        super().__init__(config)
        if self.config.adapt == "head":
            if not isinstance(model, nn.Sequential) or len(model) < 2:
                raise ValueError(
                    "adapt='head' (ANIL) needs an nn.Sequential(body..., head); "
                    f"got {type(model).__name__}"
                )
            if not list(model[-1].parameters()):
                raise ValueError(f"adapt='head': the last module {model[-1]!r} has no parameters")
        self.model = model

    def params(self) -> Params:
        """The meta-parameters :math:`\\theta`, by the model's parameter names."""
        return dict(self.model.named_parameters())

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """:math:`f_\\theta(x)` with the given parameters."""
        return functional_call(self.model, params, (x,))

    def _adapt(self, params, x, y, steps, create_graph):
        cfg = self.config
        if cfg.adapt == "all":
            names = list(params)

            def loss_fn(p: Params) -> torch.Tensor:
                return task_loss(self.predict(p, x), y, cfg.loss)
        else:  # ANIL: body features once, then the inner loop of a linear model
            prefix = f"{len(self.model) - 1}."  # the head's names in the Sequential
            names = [k for k in params if k.startswith(prefix)]
            body = {k: v for k, v in params.items() if not k.startswith(prefix)}
            z = functional_call(self.model[:-1], body, (x,))  # (B, D)

            def loss_fn(p: Params) -> torch.Tensor:
                head = {k.removeprefix(prefix): p[k] for k in names}
                return task_loss(functional_call(self.model[-1], head, (z,)), y, cfg.loss)

        return inner_sgd(
            loss_fn, params, names, lr=cfg.inner_lr, steps=steps, create_graph=create_graph
        )


class ProtoMAML(_InnerLoopLearner):
    """Proto-MAML (Triantafillou et al., 2020): MAML with a prototype-initialised head.

    Args:
        encoder: maps inputs ``(B, *)`` to embeddings ``(B, D)``.
        ways: classes per episode ``N`` (episodes must be class-first).
        config: hyper-parameters; ``adapt="head"`` adapts only the head in the inner loop.

    Shape:
        - predict: x ``(B, *)`` -> ``(B, N)`` logits ``z W^T + b``
    """

    HEAD = ("head.weight", "head.bias")

    def __init__(self, encoder: nn.Module, ways: int, config: MAMLConfig | None = None) -> None:
        super().__init__(config)
        if self.config.loss != "cross_entropy":
            raise ValueError(
                f"ProtoMAML classifies: loss must be 'cross_entropy'; got {self.config.loss!r}"
            )
        self.encoder = encoder
        self.ways = _check_int("ways", ways, 1)

    def params(self) -> Params:
        """The meta-parameters: the encoder's (the head is built per task)."""
        return dict(self.encoder.named_parameters())

    def _check(self, x, y, name, lead=1):
        super()._check(x, y, name, lead)
        shots = y.shape[-1] // self.ways
        expected = torch.arange(self.ways, device=y.device).repeat_interleave(shots)
        if name == "support" and (shots * self.ways != y.shape[-1] or not (y == expected).all()):
            raise ValueError(
                f"ProtoMAML needs class-first {self.ways}-way support labels "
                f"[0]*K + ... + [{self.ways - 1}]*K; got {y.tolist()}"
            )

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        encoder = {k: v for k, v in params.items() if k not in self.HEAD}
        z = functional_call(self.encoder, encoder, (x,))  # (B, D)
        return F.linear(z, params["head.weight"], params["head.bias"])  # (B, N)

    def _adapt(self, params, x, y, steps, create_graph):
        z = functional_call(self.encoder, params, (x,))  # (N*K, D), class-first
        c = prototypes(z, self.ways)  # (N, D), Snell et al. eq. 1
        params = {**params, "head.weight": 2 * c, "head.bias": -c.square().sum(-1)}
        cfg = self.config
        if cfg.adapt == "all":
            names = list(params)

            def loss_fn(p: Params) -> torch.Tensor:
                return F.cross_entropy(self.predict(p, x), y)
        else:  # the head only, on the features computed once
            names = list(self.HEAD)

            def loss_fn(p: Params) -> torch.Tensor:
                return F.cross_entropy(F.linear(z, p["head.weight"], p["head.bias"]), y)

        return inner_sgd(
            loss_fn, params, names, lr=cfg.inner_lr, steps=steps, create_graph=create_graph
        )
