"""Checkpoints of a run: the trainable weights, the optimizer's state and the run's own state.

One mechanism for every run that trains (reward models, and policies in rejection sampling). A
checkpoint lives in `OUT/checkpoint/`: `trainable.safetensors` (only the parameters that train),
`optimizer.pt` (the optimizer and schedule, tensors and plain containers only) and `state.json`
(the step, the history, whatever else the run needs to go on). It is written to a hidden temporary
folder and swapped in by rename, so a run killed while writing one keeps the previous one
(`rmcore.core.folders` puts a half-swapped one back). It is tied to its run by a key (model weights,
data, every option that changes the result), so `--resume` never continues another run.
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
from safetensors.torch import load_file, save_file

from rmcore.core.errors import ModelError, TrainingError
from rmcore.core.folders import read_json_object
from rmcore.data.encoding import EncodedGroup
from rmcore.model.feature_cache import model_key
from rmcore.training.config import TrainConfig

WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
# Options that do not change the model a run trains (or are fixed by the data in the key already).
NOT_IN_KEY = ("epochs", "checkpoint_every", "eval_every", "max_tokens", "time_budget_s", "eval_fraction")


def run_key(config: TrainConfig, model_path: str, encoded: list[EncodedGroup]) -> str:
    """What a reward model's checkpoint must match to be resumed: model, data, every option that changes
    the result."""
    digest = hashlib.sha256(model_key(model_path).encode())
    for group in encoded:
        digest.update(json.dumps([group.prompt_ids, group.response_ids]).encode())
    options = {k: v for k, v in asdict(config).items() if k not in NOT_IN_KEY}
    options["lora_alpha"] = config.lora_scaling_alpha()
    return digest.hexdigest()[:32] + ":" + json.dumps(options, sort_keys=True)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of the parameters that train (a head, LoRA adapters, the top blocks)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(folder: Path, model: torch.nn.Module, state: dict[str, Any],
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """Write a checkpoint to `folder`, replacing the previous one only once complete. `state` must hold
    the run's key as "run_key"; `optimizer_state` holds state dicts (optimizer, schedule) to restore."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(tmp / WEIGHTS_FILE))
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, default=str))
    old = folder.with_name(f".{folder.name}.old")
    if old.exists():  # only while `folder` is complete: a killed swap is put back before a run starts
        shutil.rmtree(old)
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model: torch.nn.Module, key: str, mismatch: str) -> tuple[dict[str, Any], dict]:
    """Restore the trainable weights into `model`; returns (state, optimizer state, {} if none saved).

    A checkpoint of another run is refused: `mismatch` says what the user must keep the same."""
    folder = Path(folder)
    state = read_json_object(folder / STATE_FILE)  # a regular file of sane size, or one line naming it
    if state.get("run_key") != key:
        raise TrainingError(f"{folder}: this checkpoint was made with another {mismatch}, or train into a new "
                            "--out folder")
    weights = load_file(str(folder / WEIGHTS_FILE))
    missing = set(weights) - set(model.state_dict())
    if missing:
        raise ModelError(f"{folder}: the checkpoint does not fit this model ({sorted(missing)[:3]} ...)")
    model.load_state_dict(weights, strict=False)
    if not (folder / OPTIMIZER_FILE).is_file():
        return state, {}
    # our own file, written by save_checkpoint: tensors and plain containers only
    return state, torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
