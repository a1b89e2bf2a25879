"""The reward model: device, the embedded base model, packed attention and batching, caches, loading, saving, the card."""
