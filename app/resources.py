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

from app import settings, waiting
from rmcore.core.paths import cache_dir
from rmcore.model.embedded import EMBEDDED_ALIASES, EMBEDDED_NAME
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


# Loading a model on a quiet 2-core machine: a second or two, plus reading its weights; the embedded model's
# first use on a machine converts it (rmcore.model.embedded) first.
LOAD_S, READ_BYTES_PER_S, CONVERT_EMBEDDED_S = 1.5, 250e6, 25.0
ML_IMPORT_S = 6.0  # importing torch and transformers, once per server


def load_seconds(source: str) -> float:
    """About how long loading the model in `source` (a folder, or the embedded model) takes on a quiet machine."""
    if str(source).lower() in EMBEDDED_ALIASES:
        weights = cache_dir() / "base" / EMBEDDED_NAME / "model.safetensors"
        if not weights.is_file():
            return LOAD_S + 540e6 / READ_BYTES_PER_S + CONVERT_EMBEDDED_S
        return LOAD_S + weights.stat().st_size / READ_BYTES_PER_S
    folder = Path(source)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0
    return LOAD_S + size / READ_BYTES_PER_S


def ensure_ml_shown() -> None:
    """ensure_ml, with a bar and the time left while it imports (seconds, once per server)."""
    if not _ml_ready:
        waiting.wait_for(ensure_ml, "Loading torch and transformers (once per server)", ML_IMPORT_S, "ml")


def reward_model(choice: ModelChoice) -> RewardModel:
    """The reward model of a picker's choice, loaded once per server; the page shows a bar while it loads."""
    if choice.kind == "untrained":
        source, stamp = choice.name, 0.0
    else:
        path = settings.model_path(choice.name)
        source, stamp = str(path), (path / "config.json").stat().st_mtime
    return waiting.wait_for(lambda: _load_reward_model(source, stamp),
                            f"Loading the reward model {choice.label} (once per server)", load_seconds(source), "load")


@st.cache_resource(show_spinner=False, max_entries=2)
def _load_ensemble(source: str, stamp: float):
    """`stamp` (ensemble.json's mtime) makes a replaced ensemble load afresh."""
    ensure_ml()
    from rmcore.training.ensemble import Ensemble  # torch: after ensure_ml

    return Ensemble.load(source)


def ensemble(choice: ModelChoice):
    """The rmcore.training.ensemble.Ensemble of an "ensemble" choice, loaded once per server."""
    from rmcore.training.ensemble import ENSEMBLE_FILE, member_folders  # torch: pages that load models (ML loaded)

    path = settings.model_path(choice.name)
    stamp = (path / ENSEMBLE_FILE).stat().st_mtime
    quiet = sum(load_seconds(str(member)) for member in member_folders(path)) or load_seconds(str(path))
    return waiting.wait_for(lambda: _load_ensemble(str(path), stamp),
                            f"Loading the ensemble {choice.name} (once per server)", quiet, "load")


@st.cache_resource(show_spinner=False, max_entries=1)
def _load_generator(name: str):
    ensure_ml()
    from rmcore.policy.generate import Generator  # torch: after ensure_ml

    return Generator(name)


def generator(name: str):
    """The instruct LLM that samples answers, loaded once per server; the page shows a bar while it loads."""
    return waiting.wait_for(lambda: _load_generator(name),
                            f"Loading the instruct model {settings.base_model_label(name)} (once per server)",
                            load_seconds(name), "generator")


@st.cache_resource(show_spinner=False, max_entries=4)
def tokenizer(name: str):
    """The tokenizer of a base model, as rmcore prepares it (for counting tokens and truncation)."""
    ensure_ml()
    from rmcore.model.reward_model import choose_pad_token, load_tokenizer, resolve_model_path  # torch: after ensure_ml

    path, _ = resolve_model_path(name)
    tok = load_tokenizer(path)
    choose_pad_token(tok)
    return tok


def tokenizer_shown(name: str, why: str = "Loading the tokenizer"):
    """tokenizer(name), with a bar and the time left while it loads (torch and transformers first, once)."""
    quiet = 1.0 + (0.0 if _ml_ready else ML_IMPORT_S)
    return waiting.wait_for(lambda: tokenizer(name), why, quiet, "tokenizer")


@st.cache_data(show_spinner=False, ttl=3600, max_entries=16)
def step_rates(model: str, mode: str, max_length: int, batch_size: int, lora_r: int, trainable_layers: int,
               _groups):
    """Seconds per token of `model` in `mode` here, measured once per settings (rmcore.training.estimate)."""
    ensure_ml()
    from rmcore.training.estimate import measure_rates  # torch: after ensure_ml

    config = TrainConfig(model=model, mode=mode, max_length=max_length, batch_size=batch_size, lora_r=lora_r,
                         trainable_layers=trainable_layers)
    return measure_rates(config, _groups)
