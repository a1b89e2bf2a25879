"""rmcore: train, score and probe reward models from ranked human preferences."""

import importlib
import sys
import types

from rmcore.data import PreferenceData, RankedGroup, read_preferences, split_groups
from rmcore.errors import DataError, ModelError, RmcoreError, TrainingError


def _installed_version() -> str:
    """The version in the package metadata (pyproject.toml), the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rmcore")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()

# Names whose modules import torch (seconds): resolved on first use, so `import rmcore.data` (the app's
# first page, `rmcore validate --no-tokenize`) does not pay for torch and transformers.
_LAZY = {
    "EvalResult": "rmcore.evaluate",
    "evaluate": "rmcore.evaluate",
    "bradley_terry_loss": "rmcore.loss",
    "RewardModel": "rmcore.model",
    "ScoreResult": "rmcore.model",
    "preference_matrix": "rmcore.model",
    "TrainConfig": "rmcore.train",
    "TrainResult": "rmcore.train",
    "train": "rmcore.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'rmcore' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing the submodule rmcore.train (or rmcore.evaluate) sets the package's attribute `train` to
    that module; the package keeps `rmcore.train` the function, as when it was imported eagerly."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
