"""Meta-learners: metric-based (ProtoNet, Matching Networks) and gradient-based (MAML,
first-order MAML, ANIL, Proto-MAML, Reptile).

Every learner is an ``nn.Module`` with the same two methods, which is all the training
loop (:mod:`companion.train`) and the evaluation (:mod:`companion.evaluate`) need:

- ``meta_loss(batch: TaskBatch) -> (loss, logs)``: the meta-training objective of one
  meta-batch of tasks, a scalar whose gradient with respect to the module's parameters is
  the method's meta-update direction; ``logs`` is a ``dict[str, float]`` (at least
  ``"accuracy"`` for classification).
- ``classify(episode: Episode) -> logits``: adapt to the support set and score the queries,
  shape ``(N*Q, N)``. Gradient-based learners enable autograd inside it themselves.
"""
