"""The compute device and its precision, decided in one place: CUDA, then Apple MPS, then CPU.

Training, the time estimate, scoring and the head-mode feature cache all ask here, so they never
pick different precisions on the same machine (a head-mode model's cached trunk features are keyed
by the precision they were computed in, and would be thrown away if scoring chose another).
"""

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
    """accelerate's name for the autocast precision on `device`: "bf16" on CUDA that supports it, else "no".

    On a CPU training stays float32, so a CPU run gives the same model on every CPU: bfloat16
    matmuls depend on the chip (with AVX512-BF16, as on this project's machines, about 2x faster;
    without it many times slower). Scoring offers bfloat16 as an explicit option instead
    (RewardModel's `dtype`), which changes the stored weights, not the autocast.
    """
    return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"


def autocast(device: str):
    """The autocast context for `device`, matching `mixed_precision_for` (used outside accelerate)."""
    if mixed_precision_for(device) == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
