"""A reward model at work on a policy: sampling, best-of-n, rejection sampling and GRPO."""
