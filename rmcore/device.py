"""Pick the compute device in one place: CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import os

import torch


def autodetect_device() -> str:
    """Return "cuda", "mps" or "cpu"; RMCORE_DEVICE overrides (e.g. to force the CPU)."""
    forced = os.environ.get("RMCORE_DEVICE")
    if forced:
        return forced
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def mixed_precision_for(device: str) -> str:
    """bf16 autocast on CUDA; float32 elsewhere, so a CPU run gives the same model on every CPU.

    (bf16 on a CPU depends on the chip: with AVX512-BF16, as here, a matmul runs about 2x faster;
    without it, many times slower. Scoring offers it as an option: RewardModel's `dtype`.)
    """
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"
