"""rmcore: train, score and probe reward models from ranked human preferences."""

import importlib
from importlib.metadata import PackageNotFoundError, version

from rmcore.core.errors import DataError, ModelError, RmcoreError, TrainingError
from rmcore.data import PreferenceData, RankedGroup, read_preferences, split_groups


def _installed_version() -> str:
    """The version in the package metadata (pyproject.toml), the one place it is written."""
    try:
        return version("rmcore")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

# Names whose modules import torch (seconds): resolved on first use, so `import rmcore.data` (the app's
# first page, `rmcore validate --no-tokenize`) does not pay for torch and transformers.
_LAZY = {
    "EvalResult": "rmcore.analysis.evaluate",
    "evaluate": "rmcore.analysis.evaluate",
    "bradley_terry_loss": "rmcore.training.loss",
    "RewardModel": "rmcore.model.reward_model",
    "ScoreResult": "rmcore.model.reward_model",
    "preference_matrix": "rmcore.model.reward_model",
    "TrainConfig": "rmcore.training.train",
    "TrainResult": "rmcore.training.train",
    "train": "rmcore.training.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'rmcore' has no attribute {name!r}")


__all__ = [
    "DataError",
    "EvalResult",
    "ModelError",
    "PreferenceData",
    "RankedGroup",
    "RewardModel",
    "RmcoreError",
    "ScoreResult",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "bradley_terry_loss",
    "evaluate",
    "preference_matrix",
    "read_preferences",
    "split_groups",
    "train",
]
