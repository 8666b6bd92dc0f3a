"""The command line's tasks without labels (``--tasks``) and trained encoders (``--encoder``)."""

from __future__ import annotations

import json

import pytest
import torch

from companion import methods
from companion.__main__ import main
from companion.guided import WithAuxiliary
from companion.tasks import LASIUM, UMTRA, CACTUs
from tests.test_cli import planned_run

SMOKE = ["--dataset", "digits", "--profile", "smoke", "--quiet", "--width", "4"]


@pytest.fixture(scope="module")
def simclr_checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("simclr")
    assert main(["train", "simclr", *SMOKE, "--steps", "2", "--no-eval", "--out", str(out)]) == 0
    return str(out / "checkpoint.pt")


def test_umtra_trains_a_meta_learner_and_says_so_in_the_spec(monkeypatch):
    run = planned_run(["train", "protonet", "--tasks", "umtra", *SMOKE, "--no-eval",
                       "--task-set", "augment_support=True"], monkeypatch)
    assert isinstance(run["train"], UMTRA) and run["train"].augment_support
    data = run["spec"]["data"]
    assert (data["tasks"], data["task_options"], data["encoder"]) == (
        "umtra", {"augment_support": True}, None)


def test_cactus_clusters_the_encoders_features_and_starts_from_its_weights(
        simclr_checkpoint, monkeypatch):
    run = planned_run(["train", "protonet", "--tasks", "cactus", "--encoder", simclr_checkpoint,
                       "--task-set", "clusters=20", "--task-set", "partitions=2", *SMOKE,
                       "--no-eval"], monkeypatch)
    source = run["train"]
    assert isinstance(source, CACTUs) and len(source.partitions) == 2
    trained = methods.encoder_of(methods.learner_from_checkpoint(
        torch.load(simclr_checkpoint, weights_only=True)))
    start = methods.encoder_of(run["learner"])
    for (name, p), q in zip(start.named_parameters(), trained.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert run["spec"]["data"]["encoder"] == simclr_checkpoint


def test_a_cactus_run_trains_and_evaluates_end_to_end(simclr_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "maml", "--tasks", "cactus", "--encoder", simclr_checkpoint,
                 "--task-set", "clusters=20", "--task-set", "partitions=1", *SMOKE,
                 "--steps", "2", "--meta-batch", "2", "--episodes", "4", "--out", str(out)]) == 0
    assert "accuracy = " in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["method"] == "maml"
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "4",
                 "--quiet"]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "protonet", "--tasks", "cactus"], "--tasks cactus clusters the features of a "
                                                 "trained encoder; give --encoder CHECKPOINT"),
    (["train", "simclr", "--tasks", "umtra"], "simclr trains on unlabeled images (drop --tasks)"),
    (["train", "protonet", "--task-set", "clusters=3"], "give --tasks too"),
    (["train", "protonet", "--tasks", "umtra", "--task-set", "clusterz=3"],
     "--tasks umtra: "),
    (["train", "protonet", "--encoder", "nowhere.pt"], "no checkpoint at nowhere.pt"),
])
def test_bad_task_requests_exit_2(argv, message, capsys):
    assert main([*argv, *SMOKE]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_encoder_of_another_width_is_refused(simclr_checkpoint, capsys):
    assert main(["train", "protonet", "--encoder", simclr_checkpoint, *SMOKE[:-1], "8"]) == 2
    assert "the encoders differ in " in capsys.readouterr().err


def test_unlabeled_adds_sources_per_task_or_pooled(monkeypatch):
    argv = ["train", "protonet", "--tasks", "umtra", "--unlabeled", "glyphs", *SMOKE,
            "--no-eval"]
    per_task = planned_run(argv, monkeypatch)
    assert set(per_task["train"].sources) == {"digits", "glyphs"}
    assert per_task["spec"]["data"]["unlabeled"] == ["glyphs"]
    pool = planned_run([*argv, "--mix", "pool"], monkeypatch)["train"]
    assert isinstance(pool, UMTRA) and len(pool.images) == 901 + 19380  # digits + glyphs train


def test_lasium_draws_tasks_from_a_vae_checkpoint(simclr_checkpoint, tmp_path, monkeypatch,
                                                  capsys):
    vae = tmp_path / "vae"
    assert main(["train", "vae", *SMOKE, "--steps", "2", "--no-eval", "--out", str(vae)]) == 0
    run = planned_run(["train", "protonet", "--tasks", "lasium", "--generator",
                       str(vae / "checkpoint.pt"), "--task-set", "variant='oc'", *SMOKE,
                       "--no-eval"], monkeypatch)
    source = run["train"]
    assert isinstance(source, LASIUM) and source.variant == "oc"
    assert source.anchors.shape == (901, 20)  # one code per digits/train image
    batch = source.sample_batch(2)
    assert batch.support_x.shape[-3:] == (1, 28, 28) and 0 <= batch.support_x.min()
    assert main(["train", "protonet", "--tasks", "lasium", "--generator", simclr_checkpoint,
                 *SMOKE]) == 2
    assert "is not a vae checkpoint" in capsys.readouterr().err


def test_aux_weight_meta_plans_a_meta_learned_weight(monkeypatch):
    run = planned_run(["train", "protonet", "--aux", "rotation", "--aux-weight", "meta", *SMOKE,
                       "--no-eval"], monkeypatch)
    assert isinstance(run["learner"], WithAuxiliary) and run["learner"].weight is not None
    assert run["spec"]["learner"]["aux"] == "rotation"


def test_aux_adds_a_self_supervised_loss_that_eval_rebuilds(tmp_path, capsys):
    out = tmp_path / "aux"
    assert main(["train", "protonet", "--aux", "rotation", "--aux-weight", "0.5", *SMOKE,
                 "--steps", "2", "--episodes", "4", "--out", str(out)]) == 0
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "4",
                 "--quiet"]) == 0
    assert "protonet on digits/test" in capsys.readouterr().out
    assert main(["train", "simclr", "--aux", "rotation", *SMOKE]) == 2
    assert "joins an episodic learner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "protonet", "--aux-weight", "-1"])


def test_maxl_trains_on_alphabets_and_is_tested_on_held_out_drawings(tmp_path, capsys):
    out = tmp_path / "maxl"
    glyphs = ["--dataset", "glyphs", "--profile", "smoke", "--quiet", "--width", "4"]
    assert main(["train", "maxl", *glyphs, "--steps", "2", "--meta-batch", "8",
                 "--val-split", "none", "--out", str(out)]) == 0
    assert "primary task on held-out drawings (4 alphabets, 200 images)" in (
        capsys.readouterr().out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["probe"], metrics["classes"], metrics["fine_classes"]) == ("primary", 4, 20)
    accuracy = metrics["accuracy"]  # a binomial interval over the 200 held-out drawings
    assert metrics["ci95"] == pytest.approx(1.96 * (accuracy * (1 - accuracy) / 200) ** 0.5)
    assert metrics["spec"]["learner"]["ways"] == 4
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "4",
                 "--quiet", "--out", str(tmp_path / "fewshot")]) == 0  # its encoder's probe
    assert "maxl on glyphs/test, 5-way 1-shot" in capsys.readouterr().out
    assert main(["train", "maxl", *glyphs, "--set", "labels='human'", "--steps", "1",
                 "--meta-batch", "4", "--val-split", "none", "--out", str(tmp_path / "h")]) == 0
    for argv, message in ((["--dataset", "digits"], "needs classes grouped into alphabets"),
                          (["--tasks", "umtra"], "maxl trains on images labelled twice")):
        assert main(["train", "maxl", *glyphs, *argv]) == 2
        assert message in capsys.readouterr().err
