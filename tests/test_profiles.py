"""Profiles: the environment variable, the default, and overrides."""

import pytest

from companion.profiles import PROFILE_NAMES, PROFILES, default_profile_name, get_profile


def test_environment_picks_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPANION_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    monkeypatch.setenv("COMPANION_PROFILE", "FULL")
    assert get_profile().name == "full"
    monkeypatch.setenv("COMPANION_PROFILE", "laptop")
    with pytest.raises(ValueError, match="allowed: smoke, cpu, gpu, full"):
        default_profile_name()


def test_default_depends_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPANION_PROFILE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert default_profile_name() == "gpu"  # minutes on Colab's GPU, not the papers' hours
    assert get_profile().name == "gpu"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert default_profile_name() == "cpu"
    assert get_profile().name == "cpu"


def test_full_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setenv("COMPANION_PROFILE", "full")
    assert get_profile().name == "full"
    monkeypatch.setenv("COMPANION_PROFILE", "cpu")  # a GPU machine can still ask for cpu
    assert get_profile().name == "cpu"


def test_profiles_shrink_from_full_to_smoke() -> None:
    smoke, cpu, gpu, full = (PROFILES[n] for n in PROFILE_NAMES)
    assert tuple(PROFILES) == PROFILE_NAMES
    assert smoke.time_budget_s <= 60 < cpu.time_budget_s <= 300 < gpu.time_budget_s <= 600
    assert gpu.time_budget_s < full.time_budget_s
    assert smoke.train_steps < cpu.train_steps < gpu.train_steps <= full.train_steps
    assert cpu.meta_batch < gpu.meta_batch <= full.meta_batch
    assert cpu.eval_episodes == gpu.eval_episodes == full.eval_episodes == 600
    assert gpu.width == full.width == 64


def test_overrides() -> None:
    assert get_profile("cpu", width=32).width == 32
    with pytest.raises(ValueError, match="unknown profile fields"):
        get_profile("cpu", depth=3)
    with pytest.raises(ValueError, match="unknown profile 'tpu'; allowed: smoke, cpu, gpu, full"):
        get_profile("tpu")
