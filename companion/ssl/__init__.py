"""Self-supervised learners: each trains an **encoder** (any ``nn.Module`` mapping images
``(B, C, H, W)`` to vectors ``(B, D)``) from unlabeled images.

Generative: autoencoders (AE, denoising AE, VAE), a masked autoencoder, rotation
prediction. Contrastive and non-contrastive: SimCLR (NT-Xent), MoCo v2, BYOL, SimSiam,
Barlow Twins. Losses are pure functions of tensors; state such as a MoCo queue or a BYOL
target network is an explicit object the training loop updates.

Every method is an ``nn.Module`` with the same four entry points:

- ``forward(*views, *draws)``, the **pure loss**: ``(loss, logs)`` from the parameters,
  the buffers and the inputs only, with the logs as detached 0-dim tensors (no ``float()``
  or ``.item()``). It mutates nothing and draws nothing: a method that needs random numbers
  takes them as arguments (the denoising autoencoder's corruption ``u``, the VAE's ``eps``,
  the MAE's masking ``noise``). So ``torch.func.functional_call(method, params_and_buffers,
  args)`` runs it, and ``torch.func.vmap`` batches it over independent batches, equal to a
  Python loop over them (``tests/ssl/test_pure_losses.py``). MoCo's also returns the keys
  it would enqueue.
- ``loss(*views)``, the **training loss**: draws those random numbers from the method's
  ``torch.Generator``, calls ``forward`` and, for MoCo, records the keys for
  ``after_step``.
- ``after_step(step, total_steps)``, called by the training loop after optimiser step
  ``step`` of ``total_steps`` (:mod:`companion.protocols`): MoCo's momentum update and
  enqueue, BYOL's scheduled EMA of the target; nothing for the others.
- ``generators()``, where a method draws random numbers: its streams by name.

:class:`~companion.ssl.learner.SelfSupervised` wraps a method for the training loop and
turns the logs into Python floats there, at the logging boundary.
"""
