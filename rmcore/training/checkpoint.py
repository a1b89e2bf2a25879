"""Training checkpoints: the trainable weights, optimizer and schedule at a step, so a run can resume.

A checkpoint lives in `OUT/checkpoint/` and is written to a hidden temporary folder, then renamed
into place, so a run killed while writing one keeps the previous one. It is tied to its run by a
key (model weights, exact token ids, every option that changes the result), so `--resume` never
continues a run on other data or settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rmcore.core.errors import ModelError, TrainingError
from rmcore.data.encoding import EncodedGroup
from rmcore.model.feature_cache import model_key
from rmcore.training.config import TrainConfig

# Options that do not change the model a run trains (or are fixed by the data in the key already).
NOT_IN_KEY = ("epochs", "checkpoint_every", "eval_every", "max_tokens", "time_budget_s", "eval_fraction")


def run_key(config: TrainConfig, model_path: str, encoded: list[EncodedGroup]) -> str:
    """What a checkpoint must match to be resumed: model, data, and every option that changes the result."""
    digest = hashlib.sha256(model_key(model_path).encode())
    for group in encoded:
        digest.update(json.dumps([group.prompt_ids, group.response_ids]).encode())
    options = {k: v for k, v in asdict(config).items() if k not in NOT_IN_KEY}
    options["lora_alpha"] = config.lora_scaling_alpha()
    return digest.hexdigest()[:32] + ":" + json.dumps(options, sort_keys=True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler, step: int,
                    history: list[dict[str, Any]], key: str) -> None:
    """Write the checkpoint of `step` to `folder` (replacing the previous one only once complete)."""
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "run_key": key, "history": history}))
    old = folder.with_name(f".{folder.name}.old")
    if old.exists():  # only while `folder` is complete: a killed swap is put back before a run starts
        shutil.rmtree(old)
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, scheduler,
                    key: str) -> tuple[int, list[dict[str, Any]]]:
    """Restore weights, optimizer and schedule; returns the step and the history so far."""
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    if state.get("run_key") != key:
        raise TrainingError(
            f"{folder}: this checkpoint was made with another model, data or options; resume with the same "
            "ones (only --epochs and --time-budget may change), or train into a new --out folder"
        )
    weights = load_file(str(folder / "trainable.safetensors"))
    missing = set(weights) - set(model.state_dict())
    if missing:
        raise ModelError(f"{folder}: the checkpoint does not fit this model/mode ({sorted(missing)[:3]} ...)")
    model.load_state_dict(weights, strict=False)
    # Our own file, written by save_checkpoint: it holds only tensors and plain containers.
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return int(state["step"]), list(state.get("history", []))
