"""The bottom layer: errors, caches, output files and model folders, progress; no torch, numpy or transformers."""
