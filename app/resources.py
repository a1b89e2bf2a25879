"""Models loaded once per server (st.cache_resource) and only ever used for inference.

A cached model is shared by every session, so nothing here trains or changes it: training loads
its own copy in the job's thread, and the time estimate loads a throwaway copy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from app import settings
from rmcore.training.config import TrainConfig

if TYPE_CHECKING:
    from rmcore.model.reward_model import RewardModel

_ML_LOCK = threading.Lock()
_ml_ready = False


def ml_ready() -> bool:
    """Whether torch and transformers are loaded (ensure_ml has run in this server)."""
    return _ml_ready


def ensure_ml() -> None:
    """Import torch and resolve transformers' lazy names once, before the first model is loaded.

    transformers resolves these names lazily, and two threads doing that for the first time at once
    get "ImportError: cannot import name ..." (a page's run and a training job, or two sessions). So
    every path that loads a model or starts training calls this first; the lock lets one thread do it
    while the others wait. It is not done at import: torch and transformers take seconds to import,
    and the app's first paint needs neither.
    """
    global _ml_ready
    if _ml_ready:
        return
    with _ML_LOCK:
        if _ml_ready:
            return
        import torch  # noqa: F401  (the deliberate warm-up: seconds to import, not on the first paint)
        from transformers import (  # noqa: F401
            AttentionInterface,
            AttentionMaskInterface,
            AutoModelForCausalLM,
            AutoModelForSequenceClassification,
            AutoTokenizer,
            LlamaForCausalLM,
            LlamaForSequenceClassification,
        )

        import rmcore.model.reward_model  # noqa: F401
        _ml_ready = True


@dataclass(frozen=True)
class ModelChoice:
    """What a model picker returns: a trained model in the models folder, or a base model's untrained head."""

    kind: str  # "trained", "ensemble" (rmcore.training.ensemble, on the Probe and Evaluate pages) or "untrained"
    name: str  # the folder name in the models folder, or the base model ("embedded" or a folder)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        if self.kind == "untrained":
            return f"untrained head on {settings.base_model_label(self.name)} (for comparison)"
        return self.name

    def path(self) -> Path | None:
        return settings.model_path(self.name) if self.kind in ("trained", "ensemble") else None


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_reward_model(source: str, stamp: float) -> RewardModel:
    """`stamp` (the folder's config mtime) makes a replaced model load afresh."""
    ensure_ml()
    from rmcore.model.reward_model import RewardModel  # torch: after ensure_ml

    return RewardModel.load(source)


def reward_model(choice: ModelChoice) -> RewardModel:
    if choice.kind == "untrained":
        return _load_reward_model(choice.name, 0.0)
    path = settings.model_path(choice.name)
    return _load_reward_model(str(path), (path / "config.json").stat().st_mtime)


@st.cache_resource(show_spinner=False, max_entries=2)
def _load_ensemble(source: str, stamp: float):
    """`stamp` (ensemble.json's mtime) makes a replaced ensemble load afresh."""
    ensure_ml()
    from rmcore.training.ensemble import Ensemble  # torch: after ensure_ml

    return Ensemble.load(source)


def ensemble(choice: ModelChoice):
    """The rmcore.training.ensemble.Ensemble of an "ensemble" choice, loaded once per server."""
    from rmcore.training.ensemble import ENSEMBLE_FILE  # torch: only the pages that load models (ML loaded) get here

    path = settings.model_path(choice.name)
    return _load_ensemble(str(path), (path / ENSEMBLE_FILE).stat().st_mtime)


@st.cache_resource(show_spinner=False, max_entries=1)
def generator(name: str):
    ensure_ml()
    from rmcore.policy.generate import Generator  # torch: after ensure_ml

    return Generator(name)


@st.cache_resource(show_spinner=False, max_entries=4)
def tokenizer(name: str):
    """The tokenizer of a base model, as rmcore prepares it (for counting tokens and truncation)."""
    ensure_ml()
    from rmcore.model.reward_model import choose_pad_token, load_tokenizer, resolve_model_path  # torch: after ensure_ml

    path, _ = resolve_model_path(name)
    tok = load_tokenizer(path)
    choose_pad_token(tok)
    return tok


@st.cache_data(show_spinner=False, ttl=3600, max_entries=16)
def step_rates(model: str, mode: str, max_length: int, batch_size: int, lora_r: int, trainable_layers: int,
               _groups):
    """Seconds per token of `model` in `mode` here, measured once per settings (rmcore.training.estimate)."""
    ensure_ml()
    from rmcore.training.estimate import measure_rates  # torch: after ensure_ml

    config = TrainConfig(model=model, mode=mode, max_length=max_length, batch_size=batch_size, lora_r=lora_r,
                         trainable_layers=trainable_layers)
    return measure_rates(config, _groups)
