"""Compute profiles: one notebook, four sizes.

Every chapter reads its sizes from a :class:`Profile` so the same code runs as a test, on a
laptop and on a GPU:

=========  ============================================  ===================================
profile    where                                         budget
=========  ============================================  ===================================
``smoke``  the test suite and CI                         each chapter under 60 s on 2 cores
``cpu``    a reader's laptop (``make book`` on CPU)      each chapter under 5 min on 2 cores
``gpu``    one mid-range GPU (Colab's T4, a desktop)     each chapter under 10 min
``full``   a GPU (a workstation, a cluster), on purpose  the papers' protocols: hours
=========  ============================================  ===================================

The profile comes from the ``COMPANION_PROFILE`` environment variable; without it, ``gpu``
when CUDA is available and ``cpu`` otherwise. ``full`` runs only when asked for: a reader
who opens a chapter on Colab's GPU runtime gets minutes of training, not hours.

The ``gpu`` budget is an estimate until a GPU run measures it: ``bench/profile_costs.py``
predicts each chapter's time on a T4 from FLOP and operation counts, and
``python bench/chapter_times.py --profile gpu`` on a GPU measures it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

PROFILE_NAMES = ("smoke", "cpu", "gpu", "full")
GPU_STEPS = 4
"""The ``gpu`` presets of :mod:`companion.methods` and :mod:`companion.tasks` train the
``cpu`` recipe this many times as long: the profile's sizes scaled up where more training
teaches more, with the same episode shapes and optimiser so the tables' recipes stay
comparable."""


@dataclass(frozen=True)
class Profile:
    """Sizes a chapter may read. Chapters use what they need and ignore the rest.

    Attributes:
        name: ``smoke``, ``cpu``, ``gpu`` or ``full``.
        eval_episodes: test episodes behind every reported accuracy (600 is the papers').
        glyph_alphabets: alphabets of the ``glyphs`` train split to generate (``None``: all).
        train_steps: optimisation steps of a chapter's main training run.
        meta_batch: tasks per meta-update.
        epochs: passes over the data for self-supervised training.
        batch_size: images per step for self-supervised training.
        image_size: side of the square images.
        width: channels of the convolutional backbones (64 in the papers).
        time_budget_s: seconds one chapter may take end to end on this profile.
    """

    name: str
    eval_episodes: int = 600
    glyph_alphabets: int | None = None
    train_steps: int = 2_000
    meta_batch: int = 32
    epochs: int = 100
    batch_size: int = 256
    image_size: int = 28
    width: int = 64
    time_budget_s: float = 3_600.0


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        "smoke", eval_episodes=40, glyph_alphabets=4, train_steps=20, meta_batch=4,
        epochs=1, batch_size=64, width=16, time_budget_s=60.0,
    ),
    "cpu": Profile(
        "cpu", eval_episodes=600, train_steps=600, meta_batch=8, epochs=10,
        batch_size=256, width=64, time_budget_s=300.0,
    ),
    # The cpu sizes scaled up where more training teaches more (see bench/profile_costs.py
    # for the estimate of what a chapter then costs on a T4).
    "gpu": Profile(
        "gpu", eval_episodes=600, train_steps=2_000, meta_batch=16, batch_size=256, width=64,
        time_budget_s=600.0,
    ),
    "full": Profile("full"),
}


def default_profile_name() -> str:
    """``$COMPANION_PROFILE`` if set, else ``gpu`` with CUDA and ``cpu`` without (``full``
    only when asked for by name)."""
    name = os.environ.get("COMPANION_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(
                f"COMPANION_PROFILE={name!r} is not a profile; allowed: {', '.join(PROFILES)}"
            )
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str | None = None, **overrides: object) -> Profile:
    """The named profile (default: :func:`default_profile_name`), with fields overridden.

    Example:
        >>> get_profile("smoke").eval_episodes
        40
        >>> get_profile("cpu", eval_episodes=100).eval_episodes
        100
    """
    name = default_profile_name() if name is None else name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    profile = PROFILES[name]
    unknown = set(overrides) - set(Profile.__dataclass_fields__)
    if unknown:
        raise ValueError(
            f"unknown profile fields {sorted(unknown)}; allowed: "
            f"{', '.join(Profile.__dataclass_fields__)}"
        )
    return replace(profile, **overrides) if overrides else profile
