"""rmcore: train, score and probe reward models from ranked human preferences."""

from rmcore.data import PreferenceData, RankedGroup, read_preferences, split_groups
from rmcore.errors import DataError, ModelError, RmcoreError, TrainingError
from rmcore.evaluate import EvalResult, evaluate
from rmcore.loss import bradley_terry_loss
from rmcore.model import RewardModel, ScoreResult, preference_matrix
from rmcore.train import TrainConfig, TrainResult, train

__version__ = "0.1.0"

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
