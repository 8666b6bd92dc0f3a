"""Test-wide settings: headless matplotlib, the smoke profile, and where real data lives."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("COMPANION_PROFILE", "smoke")
