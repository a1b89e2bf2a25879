"""Shared fixtures: a tiny random model built offline, paths to the demo and the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RMCORE_SLOW_SECONDS", "120")  # "loading..." notices would add lines to one-line errors

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


class SimulatedMachine:
    """A machine whose clock moves only when the trunk works: `cost` seconds per token of a forward pass,
    three times that when gradients flow (forward and backward), times `slowdown` once `slow_after`
    seconds have passed. Reading the clock costs nothing, so a test measures the budget's arithmetic,
    not how often the code looks at the time. Replace `rmcore.training.budget._clock` with it and wrap
    `PackedRewardModel.forward` with `wrap`."""

    def __init__(self, cost: float, slow_after: float | None = None, slowdown: float = 3.0):
        self.now = 1000.0
        self.start = self.now
        self.cost, self.slow_after, self.slowdown = cost, slow_after, slowdown
        self.forwards = 0

    def __call__(self) -> float:
        self.now += 1e-4
        return self.now

    def work(self, tokens: int, training: bool) -> None:
        slow = self.slow_after is not None and self.now - self.start >= self.slow_after
        self.now += tokens * self.cost * (3 if training else 1) * (self.slowdown if slow else 1)
        self.forwards += 1

    def wrap(self, forward):
        import torch

        def timed(module, batch, *args, **kwargs):
            self.work(int(batch.real_tokens), torch.is_grad_enabled())
            return forward(module, batch, *args, **kwargs)

        return timed


@pytest.fixture()
def simulated_machine(monkeypatch):
    """Install a SimulatedMachine: call the returned function with its settings (before training)."""
    import rmcore.training.budget as budget
    from rmcore.model.reward_model import PackedRewardModel

    def install(cost: float, slow_after: float | None = None, slowdown: float = 3.0) -> SimulatedMachine:
        machine = SimulatedMachine(cost, slow_after, slowdown)
        monkeypatch.setattr(budget, "_clock", machine)
        monkeypatch.setattr(PackedRewardModel, "forward", machine.wrap(PackedRewardModel.forward))
        return machine

    return install
