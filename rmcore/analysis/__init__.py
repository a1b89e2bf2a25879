"""What a reward model says: evaluation, counterfactual probes, scoring files of prompts."""
