"""Shared fixtures: the real trace sample shipped with the package, and ../shared/data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "curate" / "data" / "samples"
SHARED = Path(os.environ.get("CURATE_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def math500_sample() -> Path:
    return SAMPLES / "skythought_correct5k27b_math500.jsonl"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not present (real public data beside the repo)")
    return SHARED
