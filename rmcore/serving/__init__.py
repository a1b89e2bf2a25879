"""`rmcore serve`: a reward model as an HTTP service."""
