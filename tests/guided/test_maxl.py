"""MAXL (Liu, Davison & Johns, 2019): hierarchical masked labels, and one backward pass that
gives each network exactly its own gradient of Algorithm 1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from companion.guided.maxl import (
    MAXL,
    LabelledBatch,
    MAXLConfig,
    hierarchy_mask,
    masked_softmax,
    soft_cross_entropy,
)

K, PSI, D = 3, 2, 5


def test_the_mask_keeps_each_primary_class_its_own_psi_auxiliary_classes():
    mask = hierarchy_mask(torch.tensor([0, 2, 1]), K, PSI)
    assert mask.int().tolist() == [[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0]]
    p = masked_softmax(torch.randn(3, K * PSI), mask)
    torch.testing.assert_close(p.sum(1), torch.ones(3))
    assert (p[~mask] == 0).all()


def _model(aux: str = "maxl") -> MAXL:
    torch.manual_seed(0)
    return MAXL(nn.Sequential(nn.Linear(4, D), nn.Tanh()),
                nn.Sequential(nn.Linear(4, D), nn.Tanh()), D, K, fine_classes=7,
                config=MAXLConfig(labels=aux, psi=PSI, inner_lr=0.3,
                                  entropy_weight=0.2)).double()


def _batch() -> LabelledBatch:
    g = torch.Generator().manual_seed(1)
    return LabelledBatch(torch.randn(8, 4, generator=g, dtype=torch.float64),
                         torch.randint(K, (8,), generator=g), torch.randint(7, (8,), generator=g))


def _reference(model: MAXL, batch: LabelledBatch):
    """Algorithm 1 written out with plain tensors: theta_1's and theta_2's gradients."""
    w1, b1 = model.encoder[0].weight, model.encoder[0].bias
    wp, bp = model.primary_head.weight, model.primary_head.bias
    wa, ba = model.aux_head.weight, model.aux_head.bias
    theta1 = [w1, b1, wp, bp, wa, ba]
    theta2 = list(model.label_encoder.parameters()) + list(model.label_head.parameters())

    def multitask(t, target):
        z = torch.tanh(batch.x @ t[0].T + t[1])
        loss = F.cross_entropy(z @ t[2].T + t[3], batch.primary)
        return loss + soft_cross_entropy(z @ t[4].T + t[5], target)

    logits = model.label_head(model.label_encoder(batch.x))
    target = masked_softmax(logits, hierarchy_mask(batch.primary, K, PSI))
    g1 = torch.autograd.grad(multitask(theta1, target.detach()), theta1)
    grads = torch.autograd.grad(multitask(theta1, target), theta1, create_graph=True)
    plus = [t - 0.3 * g for t, g in zip(theta1, grads, strict=True)]
    z = torch.tanh(batch.x @ plus[0].T + plus[1])
    mean = target.mean(0)
    meta = F.cross_entropy(z @ plus[2].T + plus[3], batch.primary) + 0.2 * (
        mean * torch.log(mean + 1e-12)).sum()
    g2 = torch.autograd.grad(meta, theta2)
    return g1, g2


def test_one_backward_gives_each_network_its_own_gradient():
    model, batch = _model(), _batch()
    loss, logs = model.meta_loss(batch)
    loss.backward()
    g1, g2 = _reference(model, batch)
    theta1 = [model.encoder[0].weight, model.encoder[0].bias, model.primary_head.weight,
              model.primary_head.bias, model.aux_head.weight, model.aux_head.bias]
    for p, g in zip(theta1, g1, strict=True):
        torch.testing.assert_close(p.grad, g)
    theta2 = list(model.label_encoder.parameters()) + list(model.label_head.parameters())
    for p, g in zip(theta2, g2, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert any(g.abs().sum() > 0 for g in g2)  # the labels do get a meta-gradient
    assert set(logs) == {"loss", "accuracy", "meta_loss", "aux_entropy"}


def test_the_baselines_share_the_network_and_differ_only_in_the_auxiliary_target():
    batch = _batch()
    human, none = _model("human"), _model("none")
    assert human.aux_head.out_features == 7 and none.aux_head is None
    assert not hasattr(human, "label_head")
    z = human.encoder(batch.x)
    expected = F.cross_entropy(human.primary_head(z), batch.primary) + F.cross_entropy(
        human.aux_head(z), batch.fine)
    torch.testing.assert_close(human.meta_loss(batch)[0], expected)
    torch.testing.assert_close(none.meta_loss(batch)[0],
                               F.cross_entropy(none.primary_logits(batch.x), batch.primary))


def test_maxl_needs_a_label_network():
    with pytest.raises(ValueError, match="label_encoder"):
        MAXL(nn.Linear(4, D), None, D, K, 7)
    with pytest.raises(ValueError, match="unknown labels"):
        MAXLConfig(labels="teacher")


def test_the_hierarchy_numbers_fine_classes_inside_their_primary_class():
    from companion.data import load_dataset
    from companion.guided.maxl import HierarchyBatches, hierarchy_split

    glyphs = load_dataset("glyphs", "train", alphabets=3, drawings=4)
    subset, train, test = hierarchy_split(glyphs, per_group=5)
    assert subset.num_classes == 15 and len(train) == len(test) == 30
    assert set(train.tolist()).isdisjoint(test.tolist())
    primary = subset.groups.unique(return_inverse=True)[1]
    assert primary.tolist() == torch.arange(15).div(5, rounding_mode="floor").tolist()
    for c in range(15):  # the first five characters of each alphabet, in order
        name = subset.class_names[c]
        assert name.endswith(f"char{c % 5:02d}") and name.startswith(
            glyphs.class_names[int((glyphs.groups == glyphs.groups.unique()[c // 5]).nonzero()[0])
                               ].split("/")[0])
    batch = HierarchyBatches(subset, train, seed=0).sample_batch(64)
    assert hierarchy_mask(batch.primary, 3, 5)[torch.arange(64), batch.fine].all()
    assert set(batch.fine.tolist()) <= {int(subset.labels[i]) for i in train}
    with pytest.raises(ValueError, match="at least 2 groups with 50 classes"):
        hierarchy_split(glyphs, per_group=50)


def test_primary_accuracy_counts_the_predicted_groups():
    from companion.data import load_dataset
    from companion.guided.maxl import hierarchy_split, primary_accuracy

    subset, _, test = hierarchy_split(load_dataset("glyphs", "train", alphabets=2, drawings=2),
                                      per_group=2)
    model = MAXL(nn.Flatten(), None, 28 * 28, 2, 4, MAXLConfig(labels="none"))
    with torch.no_grad():
        model.primary_head.weight.zero_()
        model.primary_head.bias.copy_(torch.tensor([1.0, 0.0]))  # always "group 0"
    assert primary_accuracy(model, subset, test) == 0.5  # half the test images are group 0
