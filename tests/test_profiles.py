"""Profiles: the environment variable, the default, and overrides."""

import pytest

from companion.profiles import PROFILES, default_profile_name, get_profile


def test_environment_picks_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPANION_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    monkeypatch.setenv("COMPANION_PROFILE", "FULL")
    assert get_profile().name == "full"
    monkeypatch.setenv("COMPANION_PROFILE", "laptop")
    with pytest.raises(ValueError, match="allowed: smoke, cpu, full"):
        default_profile_name()


def test_default_depends_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPANION_PROFILE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert default_profile_name() == "full"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert default_profile_name() == "cpu"


def test_profiles_shrink_from_full_to_smoke() -> None:
    smoke, cpu, full = PROFILES["smoke"], PROFILES["cpu"], PROFILES["full"]
    assert smoke.time_budget_s <= 60 < cpu.time_budget_s <= 300
    assert smoke.train_steps < cpu.train_steps <= full.train_steps
    assert cpu.eval_episodes == full.eval_episodes == 600


def test_overrides() -> None:
    assert get_profile("cpu", width=32).width == 32
    with pytest.raises(ValueError, match="unknown profile fields"):
        get_profile("cpu", depth=3)
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        get_profile("gpu")
