"""A self-supervised auxiliary loss beside an episodic learner (Gidaris et al., 2019)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from companion import methods
from companion.data import load_dataset
from companion.data.episodes import EpisodeSampler, TaskBatch
from companion.guided import WithAuxiliary
from companion.guided.ssl_aux import halves
from companion.ssl.pretext import RotationPrediction
from companion.train import TrainConfig, fit


@pytest.fixture(scope="module")
def data():
    return load_dataset("glyphs", "train", alphabets=2, image_size=16)


def _wrapped(weight, seed: int = 0, **kwargs) -> WithAuxiliary:
    torch.manual_seed(seed)
    learner = methods.build_learner("protonet", ways=3, image_size=16, in_channels=1, width=4)
    encoder = methods.encoder_of(learner)
    aux = RotationPrediction(encoder, encoder.out_features(16))
    return WithAuxiliary(learner, aux, weight, **kwargs)


def _batch(data, tasks: int = 2) -> TaskBatch:
    return EpisodeSampler(data, 3, 1, 2, seed=0).sample_batch(tasks)


def test_the_loss_is_the_learners_plus_lambda_times_the_auxiliary(data):
    model = _wrapped(0.3)
    batch = _batch(data)
    loss, logs = model.meta_loss(batch)
    primary, _ = model.learner.meta_loss(batch)
    images = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
    aux, _ = model.aux.loss(images)
    torch.testing.assert_close(loss, primary + 0.3 * aux)
    assert logs["aux_weight"] == 0.3 and "aux/accuracy" in logs
    episode = batch[0]
    torch.testing.assert_close(model.classify(episode), model.learner.classify(episode))


def test_the_meta_weight_follows_the_finite_difference_of_the_held_out_loss(data):
    """Independent reference: take the lookahead SGD step on a copy of the model for
    lambda +- eps, measure the second half's loss, difference it (float64)."""
    model = _wrapped("meta", start=0.5, step_size=0.05).double()
    batch = _batch(data, tasks=4).to(dtype=torch.float64)
    _, logs = model.meta_loss(batch)
    a, b = (TaskBatch(*(getattr(batch, f)[s] for f in ("support_x", "support_y", "query_x",
                                                       "query_y")))
            for s in (slice(0, 2), slice(2, 4)))

    def held_out_after_step(lam: float) -> float:
        m = copy.deepcopy(model)
        params = list(dict.fromkeys(m.parameters()))  # the shared encoder once
        images = torch.cat([a.support_x.flatten(0, 1), a.query_x.flatten(0, 1)])
        loss = m.learner.meta_loss(a)[0] + lam * m.aux.loss(images)[0]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p -= 0.05 * g
            return float(m.learner.meta_loss(b)[0])

    eps = 1e-4
    numeric = (held_out_after_step(0.5 + eps) - held_out_after_step(0.5 - eps)) / (2 * eps)
    assert abs(numeric) > 1e-6  # a real signal, not two zeros
    assert logs["meta/hypergradient"] == pytest.approx(numeric, rel=1e-4, abs=1e-9)
    model.after_step(1, 10)
    assert model.lam == pytest.approx(0.5 * math.exp(-0.05 * 0.5 * numeric), rel=1e-4)


def test_a_meta_weighted_run_resumes_exactly(data, tmp_path):
    config = TrainConfig(steps=4, meta_batch=2, lr=1e-3, log_every=1, val_every=100,
                         checkpoint_every=2, device="cpu")
    straight = _wrapped("meta", unlabeled=data, unlabeled_batch=4)
    fit(straight, EpisodeSampler(data, 3, 1, 2, seed=0), config, out_dir=tmp_path / "a",
        progress=False)
    fit(_wrapped("meta", unlabeled=data, unlabeled_batch=4),
        EpisodeSampler(data, 3, 1, 2, seed=0), config, out_dir=tmp_path / "b", progress=False,
        stop_after=2)
    resumed = _wrapped("meta", seed=5, unlabeled=data, unlabeled_batch=4)
    fit(resumed, EpisodeSampler(data, 3, 1, 2, seed=0), config, out_dir=tmp_path / "b",
        progress=False)
    assert straight.lam != 1.0 and resumed.lam == straight.lam
    for (key, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(),
                           strict=True):
        assert torch.equal(p, q), key


def test_bad_combinations_are_refused(data):
    learner = methods.build_learner("protonet", ways=3, image_size=16, in_channels=1, width=4)
    other = methods.build_learner("protonet", ways=3, image_size=16, in_channels=1, width=4)
    aux = RotationPrediction(other.encoder, other.encoder.out_features(16))
    with pytest.raises(ValueError, match="share the learner's encoder"):
        WithAuxiliary(learner, aux)
    with pytest.raises(ValueError, match="positive number or 'meta'"):
        _wrapped("learned")
    one_query = EpisodeSampler(data, 3, 1, 1, seed=0).sample_batch(1)
    with pytest.raises(ValueError, match="at least 2 tasks per step"):
        _wrapped("meta").meta_loss(one_query)


def test_one_task_is_split_into_two_halves_of_its_queries(data):
    batch = EpisodeSampler(data, 3, 1, 5, seed=0).sample_batch(1)
    a, b = halves(batch)
    assert torch.equal(a.support_x, batch.support_x) and torch.equal(b.support_y, batch.support_y)
    assert a.query_y[0].tolist() == [0, 0, 1, 1, 2, 2]
    assert b.query_y[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    together = torch.cat([a.query_x[0].view(3, 2, -1), b.query_x[0].view(3, 3, -1)], 1)
    assert torch.equal(together.flatten(0, 1), batch.query_x[0].flatten(1))
    _, logs = _wrapped("meta").meta_loss(batch)
    assert "meta/hypergradient" in logs
