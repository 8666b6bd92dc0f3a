"""The command line: `python -m companion data info|episode`, `train` and `eval`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from companion.__main__ import main
from companion.train import CHECKPOINT_FORMAT


def test_data_info_digits_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "digits", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["split"] for r in rows] == ["train", "val", "test", "all"]
    assert rows[-1]["classes"] == 10 and rows[-1]["images"] == 1797


def test_data_info_glyphs_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", "glyphs", "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "test" in out and "1x28x28" in out and "generated" in out


def test_data_episode_writes_a_png(tmp_path) -> None:
    out = tmp_path / "episode.png"
    # A subprocess, as a user runs it: `python -m companion ...`.
    done = subprocess.run(
        [sys.executable, "-m", "companion", "data", "episode", "digits", "--ways", "5",
         "--shots", "1", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "5-way 1-shot" in done.stdout
    with Image.open(out) as image:
        assert image.size[0] > 100 and image.size[1] > 100


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "episode", "digits", "--ways", "6"], "only 5 classes"),
        (["data", "episode", "digits", "--ways", "25"], "at most 20 ways"),
        (["data", "info", "digits", "--split", "dev"], "unknown split 'dev'"),
    ],
)
def test_bad_requests_exit_2_with_a_message(argv, message, capsys, tmp_path) -> None:
    assert main([*argv, *(["--out", str(tmp_path / "e.png")] if "episode" in argv else [])]) == 2
    assert message in capsys.readouterr().err


def test_argument_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "episode", "digits", "--shots", "0"])
    assert exit_info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_omniglot_without_data_names_the_files(tmp_path, monkeypatch, capsys) -> None:
    import companion.data.archives as archives

    def offline(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(archives, "download_file", offline)
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    assert main(["data", "info", "omniglot"]) == 2
    err = capsys.readouterr().err
    assert "images_background.zip" in err and "images_evaluation.zip" in err
    assert str(tmp_path / "omniglot") in err


def test_omniglot_info_from_the_cache(omniglot_root, monkeypatch, capsys) -> None:
    monkeypatch.setenv("COMPANION_DATA", str(omniglot_root))
    assert main(["data", "info", "omniglot", "--json"]) == 0
    rows = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["background"]["classes"] == 964 and rows["evaluation"]["classes"] == 659
    assert rows["background"]["images_per_class"] == 20 == rows["evaluation"]["images_per_class"]


def test_cifar_fs_without_data_names_the_archive(tmp_path, monkeypatch, capsys) -> None:
    import companion.data.archives as archives

    def offline(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(archives, "download_file", offline)
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    assert main(["data", "info", "cifar_fs", "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "cifar-100-python.tar.gz" in err and str(tmp_path / "cifar_fs") in err
    assert err.count("\n") == 1


@pytest.fixture
def cifar_fs_root(tmp_path, monkeypatch):
    """A data root with CIFAR-FS caches built from a small synthetic CIFAR-100 archive."""
    import companion.data.archives as archives
    from companion.data.cifar_fs import ARCHIVE_NAME, build_cifar_fs_cache
    from tests.data.test_cifar_fs import fail_download, make_parts, write_archive

    monkeypatch.setattr(archives, "download_file", fail_download)
    (tmp_path / "cifar_fs").mkdir()
    md5 = write_archive(tmp_path / "cifar_fs" / ARCHIVE_NAME, make_parts())
    build_cifar_fs_cache(tmp_path, known_hash=md5)
    return tmp_path


def test_cifar_fs_info_from_the_cache(cifar_fs_root, capsys) -> None:
    assert main(["data", "info", "cifar_fs", "--root", str(cifar_fs_root), "--json"]) == 0
    rows = {r["split"]: r for r in json.loads(capsys.readouterr().out)}
    assert {s: r["classes"] for s, r in rows.items()} == {"train": 64, "val": 16, "test": 20}
    assert all(r["image_shape"] == [3, 32, 32] and r["images_per_class"] == 3
               for r in rows.values())
    assert main(["data", "info", "cifar_fs", "--root", str(cifar_fs_root)]) == 0
    assert "images are RGB in [0, 1]" in capsys.readouterr().out


def test_train_on_cifar_fs_keeps_32x32_colour(cifar_fs_root, monkeypatch) -> None:
    run = planned_run(["train", "protonet", "--dataset", "cifar_fs", "--root",
                       str(cifar_fs_root), "--profile", "smoke", "--no-eval", "--quiet",
                       "--shots", "1", "--queries", "2"], monkeypatch)
    learner, data = run["spec"]["learner"], run["spec"]["data"]
    assert (learner["image_size"], learner["in_channels"]) == (32, 3)  # not the profile's 28
    assert (data["train_split"], data["val_split"], data["test_split"]) == ("train", "val",
                                                                            "test")
    assert run["train"].dataset.image_shape == (3, 32, 32)


# `python -m companion train|eval`, with a toy learner patched in so that these tests need
# none of the method modules.

def toy_learner(method, *, ways, image_size, in_channels, width, **kwargs):
    from tests.test_train import ToyProtoNet

    return ToyProtoNet(in_features=in_channels * image_size * image_size, dim=width)


TRAIN = ["train", "protonet", "--dataset", "digits", "--ways", "3", "--shots", "2",
         "--queries", "5", "--profile", "smoke", "--steps", "6", "--val-every", "3",
         "--episodes", "30", "--quiet"]


def test_train_then_eval_reproduces_the_accuracy(tmp_path, monkeypatch, capsys) -> None:
    import companion.methods

    monkeypatch.setattr(companion.methods, "build_learner", toy_learner)
    monkeypatch.chdir(tmp_path)
    assert main(TRAIN) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^accuracy = \d+\.\d\d \+- \d+\.\d\d % \(30 episodes\)$", printed, re.M)
    out = tmp_path / "runs" / "protonet-digits-3w2s"  # the default --out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json"]
    trained = json.loads((out / "metrics.json").read_text())
    assert (trained["method"], trained["dataset"], trained["split"]) == ("protonet", "digits",
                                                                         "test")
    assert (trained["ways"], trained["shots"], trained["episodes"]) == (3, 2, 30)
    assert 1 / 3 < trained["accuracy"] <= 1 and 0 < trained["ci95"] < 0.2  # fractions
    assert trained["train_seconds"] > 0 and trained["history"]["train"][-1]["step"] == 6
    assert f"accuracy = {100 * trained['accuracy']:.2f} +- {100 * trained['ci95']:.2f} %" in printed

    # The same seed gives the same test episodes, so the rebuilt learner scores the same.
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "30",
                 "--quiet", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert (again["accuracy"], again["ci95"]) == (trained["accuracy"], trained["ci95"])
    assert (again["steps"], again["history"]) == (6, trained["history"])
    assert f"{100 * trained['accuracy']:.2f} +- " in capsys.readouterr().out

    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "5",
                 "--ways", "2", "--quiet"]) == 0  # metrics.json next to the checkpoint
    other = json.loads((out / "metrics.json").read_text())
    assert (other["ways"], other["shots"], other["episodes"]) == (2, 2, 5)

    assert main([*TRAIN, "--lr", "0.5"]) == 2  # the checkpoint in runs/ is another run's
    assert "lr: 0.001 -> 0.5" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "snail"], "unknown method 'snail'; allowed: protonet, matchingnet, maml"),
        (["train", "protonet", "--ways", "1"], "--ways must be at least 2"),
        (["train", "protonet", "--dataset", "digits", "--ways", "6"], "only 5 classes"),
        (["train", "protonet", "--shots", "10", "--queries", "15"], "shots + queries = 10 + 15"),
        (["train", "protonet", "--rotations"], "--rotations applies to omniglot only"),
        (["eval", "--checkpoint", "missing/checkpoint.pt"], "no checkpoint at missing"),
        (["eval", "--checkpoint", "metrics.json"], "is not a checkpoint written by"),
        (["eval", "--checkpoint", "maml.pt", "--ways", "3"], "tests only on 5-way episodes"),
        (["train", "maml", "--set", "inner_step=2"],
         "maml has no config field 'inner_step'; allowed: adapt, first_order, inner_lr"),
        (["eval", "--checkpoint", "maml.pt", "--set", "metric=cosine"],
         "maml has no config field 'metric'"),
    ],
)
def test_bad_train_and_eval_requests_exit_2(argv, message, tmp_path, monkeypatch,
                                            capsys) -> None:
    import companion.methods

    monkeypatch.setattr(companion.methods, "build_learner", toy_learner)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    learner = {"method": "maml", "ways": 5, "image_size": 28, "in_channels": 1, "width": 8}
    torch.save({"format": CHECKPOINT_FORMAT, "spec": {"learner": learner, "data": {}}},
               tmp_path / "maml.pt")
    assert main([*argv, "--profile", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_argument_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "protonet", "--shots", "0"])
    assert exit_info.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


def test_set_overrides_a_config_field_in_train_and_eval(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "maml", "--dataset", "digits", "--ways", "3", "--queries", "2",
            "--profile", "smoke", "--steps", "2", "--meta-batch", "2", "--episodes", "4",
            "--width", "4", "--set", "inner_steps_test=2", "--set", "first_order=True",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    spec = torch.load(out / "checkpoint.pt", weights_only=True)["spec"]["learner"]
    assert (spec["width"], spec["inner_steps_test"], spec["first_order"]) == (4, 2, True)
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "4",
                 "--set", "inner_steps_test=0", "--quiet"]) == 0
    assert "maml on digits/test, 3-way 1-shot: accuracy = " in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "4",
                 "--set", "inner_lr=-1", "--quiet"]) == 2
    assert "inner_lr must be a positive number; got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "maml", "--set", "inner_steps_test"])
    assert "expected FIELD=VALUE" in capsys.readouterr().err


class Stop(Exception):
    """Raised by a stand-in for fit, so a test sees what train would have run."""


def planned_run(argv, monkeypatch) -> dict:
    """What ``python -m companion train ...`` hands to fit: learner, sampler, config."""
    import companion.__main__ as cli

    seen = {}

    def fake_fit(learner, train, config, **kwargs):
        seen.update(learner=learner, train=train, config=config, spec=kwargs["spec"])
        raise Stop

    monkeypatch.setattr(cli, "fit", fake_fit)
    with pytest.raises(Stop):
        main(argv)
    return seen


@pytest.mark.parametrize("method", ["protonet", "maml", "reptile"])
def test_cpu_defaults_are_the_registry_presets(method, monkeypatch) -> None:
    from companion import methods

    preset = methods.get(method).preset("cpu")
    run = planned_run(["train", method, "--dataset", "digits", "--profile", "cpu",
                       "--no-eval", "--quiet", "--val-split", "none"], monkeypatch)
    config, train = run["config"], run["train"]
    assert (config.steps, config.meta_batch) == (preset["steps"], preset["meta_batch"])
    assert config.schedule == preset.get("schedule", methods.get(method).training["schedule"])
    # digits/train has 5 classes: a preset's higher way (protonet's 20) is capped there
    assert (train.ways, train.shots, train.queries) == (
        min(preset.get("train_ways", 5), 5), preset.get("train_shots", 1),
        preset["train_queries"])
    for field, value in preset.get("set", {}).items():
        assert getattr(run["learner"].config, field) == value
    assert run["spec"]["data"]["rotations"] is False  # digits has no rotated classes


def test_flags_override_the_preset(monkeypatch) -> None:
    run = planned_run(["train", "maml", "--dataset", "digits", "--profile", "cpu", "--no-eval",
                       "--quiet", "--val-split", "none", "--steps", "7", "--lr", "0.1",
                       "--train-queries", "2", "--set", "inner_steps_test=4"], monkeypatch)
    assert (run["config"].steps, run["config"].lr, run["train"].queries) == (7, 0.1, 2)
    assert run["learner"].config.inner_steps_test == 4


def test_set_accepts_only_config_fields(capsys) -> None:
    assert main(["train", "protonet", "--set", "lr=0.1", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "protonet has no config field 'lr'; allowed: learn_scale, metric, scale" in err
    assert "--lr" in err  # and where the learning rate is set instead


def test_fast_path_flags_reach_the_training_config(monkeypatch) -> None:
    argv = ["train", "protonet", "--dataset", "digits", "--profile", "smoke", "--no-eval",
            "--quiet", "--val-split", "none"]
    plain = planned_run(argv, monkeypatch)["config"]
    assert (plain.amp, plain.channels_last, plain.compile) == (False, False, False)
    fast = planned_run([*argv, "--amp", "--channels-last", "--compile"], monkeypatch)["config"]
    assert (fast.amp, fast.channels_last, fast.compile) == (True, True, True)


def test_full_profile_on_cifar_fs_builds_resnet12(cifar_fs_root, monkeypatch) -> None:
    """MetaOptNet's backbone on CIFAR-FS in the full profile; Conv-4 elsewhere, and a flag
    chooses either."""
    from companion.nets import Conv4, ResNet12

    def plan(*flags):
        run = planned_run(["train", "protonet", "--dataset", "cifar_fs", "--root",
                           str(cifar_fs_root), "--no-eval", "--quiet", "--shots", "1",
                           "--queries", "2", "--train-ways", "5", "--train-queries", "2",
                           *flags], monkeypatch)
        return run["spec"]["learner"]["backbone"], run["learner"].encoder

    backbone, encoder = plan("--profile", "full", "--width", "4")
    assert backbone == "resnet12" and isinstance(encoder, ResNet12)
    assert encoder.channels == (4, 10, 20, 40)  # 1 : 2.5 : 5 : 10, as 64-160-320-640
    backbone, encoder = plan("--profile", "smoke")
    assert backbone == "conv4" and isinstance(encoder, Conv4)
    backbone, encoder = plan("--profile", "full", "--width", "4", "--backbone", "conv4")
    assert backbone == "conv4" and isinstance(encoder, Conv4)


def test_a_resnet12_run_trains_and_evaluates_from_its_checkpoint(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "protonet", "--dataset", "digits", "--ways", "3", "--queries", "2",
                 "--profile", "smoke", "--steps", "2", "--episodes", "4", "--width", "2",
                 "--backbone", "resnet12", "--val-split", "none", "--quiet",
                 "--out", str(out)]) == 0
    spec = torch.load(out / "checkpoint.pt", weights_only=True)["spec"]["learner"]
    assert spec["backbone"] == "resnet12"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--episodes", "4",
                 "--quiet"]) == 0  # rebuilt as a ResNet-12, or its weights would not load
    assert "protonet on digits/test, 3-way 1-shot: accuracy = " in capsys.readouterr().out
    assert main(["train", "mae", "--dataset", "digits", "--backbone", "resnet12",
                 "--profile", "smoke", "--quiet", "--out", str(tmp_path / "mae")]) == 2
    assert "mae builds its own network; --backbone resnet12 applies to every other" in (
        capsys.readouterr().err)


def test_simclr_on_cifar_fs_trains_with_simclrs_colour_distortion(cifar_fs_root, tmp_path,
                                                                  capsys) -> None:
    """Colour images get SimCLR's CIFAR recipe (colour jitter, grayscale, flips): one
    step on the synthetic CIFAR-FS, then its test probe."""
    from companion.data.augment import AugmentConfig
    from companion.methods import learner_from_checkpoint

    out = tmp_path / "simclr"
    assert main(["train", "simclr", "--dataset", "cifar_fs", "--root", str(cifar_fs_root),
                 "--profile", "smoke", "--steps", "1", "--meta-batch", "8", "--shots", "1",
                 "--queries", "2", "--episodes", "2", "--val-split", "none", "--quiet",
                 "--out", str(out)]) == 0
    assert "trained simclr on cifar_fs/train for 1 steps" in capsys.readouterr().out
    learner = learner_from_checkpoint(torch.load(out / "checkpoint.pt", weights_only=True))
    assert learner.augment_config == AugmentConfig.rgb()
    assert learner.augment_config.jitter_p > 0 and learner.augment_config.grayscale_p > 0
