"""The reward model: device, the embedded base model, packed attention, batching, caches, loading, saving, card."""
