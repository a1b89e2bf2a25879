"""Shared fixtures: a tiny random model built offline, paths to the demo and the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from rmcore.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def demo_path() -> Path:
    from rmcore.data import demo_data_path

    return demo_data_path()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (CI has ../shared beside the project)")
    return SHARED_DATA


@pytest.fixture()
def private_cache(tmp_path, monkeypatch) -> Path:
    """A fresh RMCORE_CACHE for tests that look at caching; the embedded model is not needed there."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RMCORE_CACHE", str(cache))
    return cache
