"""Self-supervised learners: each trains an **encoder** (any ``nn.Module`` mapping images
``(B, C, H, W)`` to vectors ``(B, D)``) from unlabeled images.

Generative: autoencoders (AE, denoising AE, VAE), a masked autoencoder, rotation
prediction. Contrastive and non-contrastive: SimCLR (NT-Xent), MoCo v2, BYOL, SimSiam,
Barlow Twins. Losses are pure functions of tensors; state such as a MoCo queue or a BYOL
target network is an explicit object the training loop updates.
"""
