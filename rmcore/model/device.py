"""The compute device and its precision, decided in one place: CUDA, then Apple MPS, then CPU.

Training, the time estimate, scoring and the head-mode feature cache all ask here, so they never
pick different precisions on the same machine (a head-mode model's cached trunk features are keyed
by the precision they were computed in, and would be thrown away if scoring chose another).
"""

from __future__ import annotations

import os
from pathlib import Path

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


_FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU instructions that make bfloat16 matmuls fast


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True on CPUs with AVX512-BF16 or AMX (read from /proc/cpuinfo's flags; False where it is absent).

    Without them a CPU emulates bfloat16 matmuls, many times slower than float32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in _FAST_BF16_FLAGS)


def mixed_precision_for(device: str, precision: str = "auto") -> str:
    """accelerate's name for the autocast precision of a training run: "bf16" or "no" (float32).

    "auto" takes bfloat16 where it is fast: CUDA that supports it, and CPUs with AVX512-BF16 or AMX
    (on this project's machines a training step and the trunk features run faster, and held-out
    accuracy stays within a standard error of float32: bench/precision.py, README). "float32" and
    "bfloat16" force one. The head-mode feature cache is keyed by the precision the features were
    computed in (rmcore.model.feature_cache), so runs at different precisions never mix them.
    """
    if precision == "float32":
        return "no"
    if precision == "bfloat16":
        return "bf16"
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if device == "cpu" and cpu_has_fast_bf16() else "no"


def scoring_precision(device: str) -> str:
    """Scoring keeps float32 on a CPU, so rewards equal transformers' pipeline on the same folder;
    `--dtype bfloat16` (RewardModel's dtype) is the explicit faster choice. On CUDA, bfloat16 autocast."""
    return mixed_precision_for(device, "auto") if device == "cuda" else "no"


def autocast(device: str, mixed_precision: str | None = None):
    """The autocast context for `device`: `mixed_precision` ("bf16" or "no"), by default scoring's."""
    mixed = scoring_precision(device) if mixed_precision is None else mixed_precision
    if mixed == "bf16":
        return torch.autocast("cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
