"""Kept so that code written against earlier rmcore keeps working (the README documents this path);
the home of these names is `rmcore.training.ensemble`."""

from rmcore.training.ensemble import Ensemble, EnsembleScore, evaluate_ensemble, is_ensemble, train_ensemble

__all__ = ["Ensemble", "EnsembleScore", "evaluate_ensemble", "is_ensemble", "train_ensemble"]
