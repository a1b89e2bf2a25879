"""Training a reward model: settings, the loss, modes, trunk features, checkpoints, the time budget, ensembles."""
