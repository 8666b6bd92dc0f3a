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
The outer loop itself (the optimiser, :math:`\beta`, the meta-batch size) belongs to the
training loop, :class:`companion.train.TrainConfig`, and its per-method presets in
:mod:`companion.methods`.

**Second vs first order.** :math:`\theta'_i` depends on :math:`\theta` through the inner
gradient, so the meta-gradient of one task is
:math:`(I - \alpha \nabla^2_\theta \mathcal{L}^{S}_{T_i}(\theta))\,
\nabla_{\theta'} \mathcal{L}^{Q}_{T_i}(\theta'_i)`: a Hessian-vector product per inner
step. ``first_order=True`` treats the inner gradients as constants, which drops the Hessian
term: the meta-gradient is the query gradient at the adapted parameters, applied to
:math:`\theta` (Finn et al., sec. 5.2, report it nearly as accurate on miniImageNet and
faster). The inner gradients are then taken at *detached* parameters, so no graph from
them to :math:`\theta` is built at all.

**The support loss is a callable.** The inner loop descends
``support_loss(predict, params, x, y)``, by default the task's own loss of
``predict(params, x)`` (cross-entropy, or the squared error for regression). Any scalar
function of the same fast parameters can replace it, for example the task loss plus a
self-supervised term on the support images (a rotation or a mirror-image prediction), so
that self-supervision joins the inner loop. Such a term may need a head of its own: extra
modules passed as ``heads`` are part of :math:`\theta` (named ``heads.<name>.<param>``),
adapted in the inner loop with the rest and meta-learned by the outer loop; only the
support loss uses them. With second order they receive a meta-gradient through their
effect on the adapted model; with first order the query loss does not depend on them.

**Implementation.** Everything is functional: a parameter dict goes in, a new dict of
``fast_params`` comes out (``torch.func.functional_call`` runs the model with it,
``torch.func.grad`` differentiates the support loss), so there is no module cloning. The
tasks of a meta-batch are either a Python loop or ``torch.func.vmap`` (``strategy``):
``"auto"`` uses ``vmap`` on CUDA and the loop on the CPU, where ``vmap`` turns the per-task
convolution weights into grouped convolutions and the per-task activations into large
tensors that no longer fit in cache (``bench/maml_speed.py`` measures both). Both give the
same meta-gradient when the norm layers are :class:`companion.nets.BatchNorm` (see
``tests/test_nets.py`` for why not ``nn.BatchNorm2d``).

**ANIL** (Raghu et al., 2020) adapts only the head in the inner loop
(``MAMLConfig(adapt="head")``: the parameters of the model's last module, and the extra
``heads``); the body is still meta-learned in the outer loop. The body's features of the
support images are computed once per task, so the inner loop is a linear model's and the
step is much cheaper.

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
    - params, fast_params: ``dict[str, Tensor]`` named as ``model.named_parameters()``,
      plus ``heads.<name>.<param>`` for the extra heads
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

    A self-supervised term in the inner loop: the body also learns to tell the support
    images from their mirror images, with a head of its own that MAML adapts and
    meta-learns with the rest.

    >>> body, head = Conv4(1, hidden=8), linear_head(8, 5)
    >>> mirror = nn.Linear(8, 2)
    >>> def support_loss(predict, params, x, y):
    ...     both = torch.cat([x, x.flip(-1)])  # (2B, C, H, W): original, then mirrored
    ...     is_mirrored = torch.arange(2).repeat_interleave(len(x))  # (2B,)
    ...     z = functional_call(body, subparams(params, "0."), (both,))  # (2B, D)
    ...     logits = functional_call(mirror, subparams(params, "heads.mirror."), (z,))
    ...     return F.cross_entropy(predict(params, x), y) + F.cross_entropy(logits, is_mirrored)
    >>> maml = MAML(nn.Sequential(body, head), heads={"mirror": mirror},
    ...             support_loss=support_loss)
    >>> sorted(k for k in maml.params() if k.startswith("heads."))
    ['heads.mirror.bias', 'heads.mirror.weight']
    >>> loss, logs = maml.meta_loss(batch)
    >>> loss.backward()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from companion.checks import check_choice, check_int, check_positive
from companion.data.episodes import Episode, TaskBatch
from companion.meta.protonet import prototypes

Params = dict[str, torch.Tensor]
"""Parameters by name, as ``module.named_parameters()`` gives them (shared by Reptile)."""
Predict = Callable[[Params, torch.Tensor], torch.Tensor]
"""A learner's forward pass with the given parameters: ``predict(params, x) -> outputs``."""
SupportLoss = Callable[[Predict, Params, torch.Tensor, torch.Tensor], torch.Tensor]
"""The inner loop's loss of one task: ``support_loss(predict, params, x, y) -> scalar``."""
LOSSES = ("cross_entropy", "mse")
ADAPT = ("all", "head")
STRATEGIES = ("auto", "loop", "vmap")
HEADS_PREFIX = "heads."  # the prefix of the extra heads' parameter names


@dataclass(frozen=True)
class MAMLConfig:
    """Hyper-parameters of MAML; the defaults are Omniglot 5-way (Finn et al., sec. 5.2).

    For the sinusoid regression of sec. 5.1 use ``MAMLConfig(inner_lr=0.01, loss="mse")``
    with ``MLP(1, hidden=(40, 40), out_features=1)``.

    The outer loop's settings are the training loop's (:class:`companion.train.TrainConfig`
    and the presets of :mod:`companion.methods`), not fields here. Finn et al. use Adam with
    :math:`\\beta = 10^{-3}` (``lr``) and 32 tasks per meta-update for Omniglot 5-way, 25 for
    the sinusoids (``meta_batch``), K = 10 sinusoid points.
    """

    inner_lr: float = 0.4  # alpha, the inner SGD step (Omniglot; 0.01 for sinusoids)
    inner_steps: int = 1  # inner steps while meta-training (Omniglot 5-way: 1)
    inner_steps_test: int = 3  # inner steps at meta-test, same alpha (Omniglot: 3)
    first_order: bool = False  # inner gradients as constants: first-order MAML (sec. 5.2)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"  # "mse": regression, sec. 5.1
    adapt: Literal["all", "head"] = "all"  # "head": ANIL, the inner loop adapts the head only
    strategy: Literal["auto", "loop", "vmap"] = "auto"  # tasks: vmap on CUDA, loop on CPU

    def __post_init__(self) -> None:
        check_positive("inner_lr", self.inner_lr)
        check_int("inner_steps", self.inner_steps, minimum=0)
        check_int("inner_steps_test", self.inner_steps_test, minimum=0)
        for name, allowed in (("loss", LOSSES), ("adapt", ADAPT), ("strategy", STRATEGIES)):
            check_choice(name, getattr(self, name), allowed)
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


def supervised_loss(
    predict: Predict, params: Params, x: torch.Tensor, y: torch.Tensor, *, loss: str
) -> torch.Tensor:
    """The default support loss: the task's own loss, ``task_loss(predict(params, x), y, loss)``.

    Shape:
        - x: ``(B, *)``; y: ``(B,)`` labels or ``(B,)``/``(B, D)`` targets; returns a scalar
    """
    return task_loss(predict(params, x), y, loss)


def subparams(params: Params, prefix: str) -> Params:
    """The entries of ``params`` whose names start with ``prefix``, with it removed.

    For running one part with ``functional_call``: ``subparams(params, "heads.rotation.")``
    are the parameters of the extra head ``rotation``, ``subparams(params, "0.")`` those of
    the first module of an ``nn.Sequential`` model.
    """
    return {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}


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

    ``create_graph=True`` (second order): the new parameters are differentiable functions of
    the old ones, through the gradients too. ``False`` (first order): each gradient is taken
    at detached copies of the parameters, so it is a constant with no graph to the old ones
    (``loss_fn`` must then not close over tensors that carry one); the update
    :math:`\theta - \alpha g` itself stays differentiable in :math:`\theta`.
    """
    for _ in range(steps):
        at = params if create_graph else {k: v.detach() for k, v in params.items()}
        rest = {k: v for k, v in at.items() if k not in names}  # not adapted (ANIL's body)
        grads = grad(lambda fast, rest=rest: loss_fn({**rest, **fast}))({k: at[k] for k in names})
        params = {**params, **{k: params[k] - lr * g for k, g in grads.items()}}
    return params


def _accuracy(pred: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss != "cross_entropy":
        return pred.new_zeros(())  # regression: no accuracy
    return (pred.argmax(-1) == y).to(pred.dtype).mean()


class _InnerLoopLearner(nn.Module):
    """Abstract: the meta-batch, evaluation, extra heads and support loss shared by MAML and
    Proto-MAML. Each defines ``_own_params() -> Params``, ``predict(params, x)`` and
    ``_adapt(params, x, y, steps, create_graph)`` (one task, no argument checks, so it is
    safe under ``vmap``)."""

    def __init__(
        self,
        config: MAMLConfig | None,
        heads: Mapping[str, nn.Module] | None,
        support_loss: SupportLoss | None,
    ) -> None:
        super().__init__()
        config = MAMLConfig() if config is None else config
        if not isinstance(config, MAMLConfig):
            raise TypeError(f"config must be a MAMLConfig; got {type(config).__name__}")
        self.config = config
        heads = {} if heads is None else heads
        if not isinstance(heads, Mapping) or not all(
            isinstance(h, nn.Module) for h in heads.values()
        ):
            raise TypeError(f"heads must map names to nn.Modules; got {heads!r}")
        self.heads = nn.ModuleDict(heads)
        if support_loss is None:
            support_loss = partial(supervised_loss, loss=config.loss)
        elif not callable(support_loss):
            raise TypeError(f"support_loss must be callable; got {type(support_loss).__name__}")
        self.support_loss = support_loss

    def params(self) -> Params:
        r"""The meta-parameters :math:`\theta`: the model's by name, then the extra heads'
        as ``heads.<name>.<param>``."""
        heads = {HEADS_PREFIX + k: v for k, v in self.heads.named_parameters()}
        return {**self._own_params(), **heads}

    def _check_names(self, own: Params) -> None:
        clash = [k for k in own if k.startswith(HEADS_PREFIX)] if len(self.heads) else []
        if clash:
            raise ValueError(f"parameter names {clash} clash with the extra heads' prefix "
                             f"{HEADS_PREFIX!r}; rename the module that holds them")

    def _without_heads(self, params: Params) -> Params:
        """The entries of ``params`` that are not the extra heads'."""
        if not len(self.heads):
            return params
        return {k: v for k, v in params.items() if not k.startswith(HEADS_PREFIX)}

    def _head_names(self, params: Params) -> list[str]:
        return [k for k in params if len(self.heads) and k.startswith(HEADS_PREFIX)]

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
        *,
        steps: int | None = None,
        test: bool = False,
    ) -> Params:
        r"""Inner loop: :math:`\theta' = \theta - \alpha \nabla_\theta \mathcal{L}^S(\theta)`,
        ``steps`` times, on ``support_loss``.

        Args:
            params: the starting point :math:`\theta` (e.g. :meth:`params`).
            support_x, support_y: the task's support set.
            steps: inner steps (default ``config.inner_steps``, or ``inner_steps_test``
                with ``test``).
            test: the test-time settings: ``inner_steps_test`` steps and no graph through
                the inner gradients. Otherwise the graph to ``params`` is kept (second
                order) unless ``config.first_order``.

        Shape:
            - support_x: ``(N*K, *)``; support_y: ``(N*K,)`` (or ``(N*K, D)`` for mse)
            - returns: ``fast_params``, a new dict (keys as :meth:`params`; Proto-MAML adds
              ``head.weight`` ``(N, D)`` and ``head.bias`` ``(N,)``)
        """
        cfg = self.config
        if steps is None:
            steps = cfg.inner_steps_test if test else cfg.inner_steps
        check_int("steps", steps, minimum=0)
        self._check(support_x, support_y, "support")
        keep = not test and not cfg.first_order
        return self._adapt(params, support_x, support_y, steps, keep)

    def meta_loss(
        self, batch: TaskBatch, params: Params | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        r"""Mean query loss after adaptation, :math:`\frac1T\sum_i\mathcal{L}_{T_i}(f_{\theta'_i})`.

        Its gradient with respect to ``params`` (default: :meth:`params`) is the
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
        with torch.enable_grad():
            params = {k: v.detach() for k, v in self.params().items()}
            fast_params = self.adapt(params, episode.support_x, episode.support_y, test=True)
            return self.predict(fast_params, episode.query_x).detach()


class MAML(_InnerLoopLearner):
    """MAML (Finn et al., 2017), first-order MAML and ANIL around any model.

    Args:
        model: maps inputs to logits (or regression outputs), e.g.
            ``nn.Sequential(Conv4(1, 64), linear_head(64, ways))``. ANIL
            (``config.adapt="head"``) needs an ``nn.Sequential`` whose last module (the
            head) has parameters; the modules before it are the body.
        config: hyper-parameters (default :class:`MAMLConfig()`).
        heads: extra modules (e.g. a rotation head for a self-supervised support term),
            registered as ``self.heads``; their parameters join :meth:`params` as
            ``heads.<name>.<param>``, are adapted in the inner loop (ANIL too) and
            meta-learned by the outer loop. Only ``support_loss`` uses them.
        support_loss: the inner loop's loss of one task, ``support_loss(predict, params,
            x, y) -> scalar``, where ``predict(params, x)`` is :meth:`predict` and
            ``params`` the current fast parameters (heads included). Default: the task
            loss, :func:`supervised_loss` with ``config.loss``. It runs under ``vmap``
            with the ``"vmap"`` strategy, so it must be free of data-dependent Python
            control flow. Under ANIL, ``predict(params, x)`` on the support images
            themselves reuses the body features computed once per task; other inputs go
            through the body.

    Shape:
        - predict: x ``(B, *)`` -> ``(B, N)`` logits
    """

    def __init__(
        self,
        model: nn.Module,
        config: MAMLConfig | None = None,
        *,
        heads: Mapping[str, nn.Module] | None = None,
        support_loss: SupportLoss | None = None,
    ) -> None:
        super().__init__(config, heads, support_loss)
        if self.config.adapt == "head":
            if not isinstance(model, nn.Sequential) or len(model) < 2:
                raise ValueError(
                    "adapt='head' (ANIL) needs an nn.Sequential(body..., head); "
                    f"got {type(model).__name__}"
                )
            if not list(model[-1].parameters()):
                raise ValueError(f"adapt='head': the last module {model[-1]!r} has no parameters")
        self.model = model
        self._check_names(self._own_params())

    def _own_params(self) -> Params:
        return dict(self.model.named_parameters())

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """:math:`f_\\theta(x)` with the given parameters (the extra heads' are ignored)."""
        return functional_call(self.model, self._without_heads(params), (x,))

    def _adapt(self, params, x, y, steps, create_graph):
        cfg = self.config
        predict = self.predict
        if cfg.adapt == "all":
            names = list(params)
        else:  # ANIL: body features once, then the inner loop of a linear model
            prefix = f"{len(self.model) - 1}."  # the head's names in the Sequential
            names = [k for k in params if k.startswith(prefix)] + self._head_names(params)
            at = params if create_graph else {k: v.detach() for k, v in params.items()}
            body = {k: v for k, v in self._without_heads(at).items() if not k.startswith(prefix)}
            z = functional_call(self.model[:-1], body, (x,))  # (B, D), computed once

            def predict(p: Params, inputs: torch.Tensor) -> torch.Tensor:
                if inputs is x:  # the support images: their features are z
                    return functional_call(self.model[-1], subparams(p, prefix), (z,))
                return self.predict(p, inputs)

        def loss_fn(p: Params) -> torch.Tensor:
            return self.support_loss(predict, p, x, y)

        return inner_sgd(
            loss_fn, params, names, lr=cfg.inner_lr, steps=steps, create_graph=create_graph
        )


class ProtoMAML(_InnerLoopLearner):
    """Proto-MAML (Triantafillou et al., 2020): MAML with a prototype-initialised head.

    Args:
        encoder: maps inputs ``(B, *)`` to embeddings ``(B, D)``.
        ways: classes per episode ``N`` (episodes must be class-first).
        config: hyper-parameters; ``adapt="head"`` adapts only the head (and the extra
            ``heads``) in the inner loop.
        heads, support_loss: as for :class:`MAML` (the default support loss is the
            cross-entropy of :meth:`predict`); ``params`` given to the support loss hold
            the task's head as ``head.weight`` and ``head.bias``. With ``adapt="head"``,
            ``predict(params, x)`` on the support images reuses their embeddings.

    Shape:
        - predict: x ``(B, *)`` -> ``(B, N)`` logits ``z W^T + b``
    """

    HEAD = ("head.weight", "head.bias")

    def __init__(
        self,
        encoder: nn.Module,
        ways: int,
        config: MAMLConfig | None = None,
        *,
        heads: Mapping[str, nn.Module] | None = None,
        support_loss: SupportLoss | None = None,
    ) -> None:
        super().__init__(config, heads, support_loss)
        if self.config.loss != "cross_entropy":
            raise ValueError(
                f"ProtoMAML classifies: loss must be 'cross_entropy'; got {self.config.loss!r}"
            )
        self.encoder = encoder
        self.ways = check_int("ways", ways)
        self._check_names(self._own_params())

    def _own_params(self) -> Params:
        """The encoder's parameters (the head is built per task)."""
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

    def _encoder_params(self, params: Params) -> Params:
        return {k: v for k, v in self._without_heads(params).items() if k not in self.HEAD}

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        z = functional_call(self.encoder, self._encoder_params(params), (x,))  # (B, D)
        return F.linear(z, params["head.weight"], params["head.bias"])  # (B, N)

    def _adapt(self, params, x, y, steps, create_graph):
        z = functional_call(self.encoder, self._encoder_params(params), (x,))  # (N*K, D)
        c = prototypes(z, self.ways)  # (N, D), class-first; Snell et al. eq. 1
        # The init keeps its graph to the encoder, first order too (Meta-Dataset).
        params = {**params, "head.weight": 2 * c, "head.bias": -c.square().sum(-1)}
        predict = self.predict
        if self.config.adapt == "all":
            names = list(params)
        else:  # the head only, on the embeddings computed once
            names = [*self.HEAD, *self._head_names(params)]
            z_inner = z if create_graph else z.detach()

            def predict(p: Params, inputs: torch.Tensor) -> torch.Tensor:
                if inputs is x:  # the support images: their embeddings are z
                    return F.linear(z_inner, p["head.weight"], p["head.bias"])
                return self.predict(p, inputs)

        def loss_fn(p: Params) -> torch.Tensor:
            return self.support_loss(predict, p, x, y)

        return inner_sgd(
            loss_fn, params, names, lr=self.config.inner_lr, steps=steps,
            create_graph=create_graph,
        )
