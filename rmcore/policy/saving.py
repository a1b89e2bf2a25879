"""Where a policy run writes: the output folder's checks, the saved policy with rmcore_policy.json, and
the checkpoint of a stopped run with the key that a resumed run must match.

The saved policy is a plain HF causal-LM folder (LoRA merged) with its tokenizer, written atomically
by rmcore.core.folders.save_folder; the checkpoint is rmcore.training.checkpoint's, in OUT/checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rmcore import __version__
from rmcore.core.errors import TrainingError
from rmcore.core.folders import (
    CHECKPOINT_DIR,
    POLICY_METADATA_FILE,
    check_output_folder,
    read_json_object,
    save_folder,
)
from rmcore.core.outputs import atomic_write_text
from rmcore.policy.config import RLHFConfig
from rmcore.policy.models import merged_copy
from rmcore.training.checkpoint import STATE_FILE, load_checkpoint, save_checkpoint

# what a resumed run must keep, in the refusal of another run's checkpoint
RESUME_MISMATCH = "policy, reward model, prompts or options; resume with the same ones (only --rounds may change)"


def check_policy_output(out_dir: Path, resume: bool, config: RLHFConfig, inputs: tuple = ()) -> bool:
    """Refuse an output folder where saving would lose something; True when it holds a finished policy.

    The same rules as a reward model's folder (rmcore.core.folders): only what rmcore wrote is replaced,
    and the output is none of the models the run reads (nor lies inside one) and none of `inputs`."""
    models = (config.reward_model, config.gold_model, config.policy)
    return check_output_folder(out_dir, resume, metadata_file=POLICY_METADATA_FILE, what="policy",
                               inputs=inputs, read_folders=models)


def save_policy(model, tokenizer, out_dir: str | os.PathLike, metadata: dict[str, Any],
                keep: tuple[str, ...] = (), on_note: Callable[[str], None] | None = None) -> Path:
    """Save a plain HF causal-LM folder (LoRA merged into a copy, the live model is left as is) with the
    tokenizer and rmcore_policy.json, atomically (rmcore.core.folders.save_folder). `keep` names entries
    of the existing folder carried over (the checkpoint of a stopped run); `on_note` hears what the save
    cleaned up or kept."""
    def write(tmp: Path) -> None:
        plain = merged_copy(model)
        plain.config.pad_token_id = tokenizer.pad_token_id
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return save_folder(out_dir, write, metadata, metadata_file=POLICY_METADATA_FILE, keep=keep, on_note=on_note)


def save_policy_checkpoint(out_dir: Path, model, optimizer, state: dict[str, Any]) -> None:
    """The run's checkpoint in OUT/checkpoint (rmcore.training.checkpoint): LoRA weights, optimizer, `state`."""
    save_checkpoint(Path(out_dir) / CHECKPOINT_DIR, model, state,
                    {"optimizer": optimizer.state_dict()} if optimizer is not None else None)


def load_policy_checkpoint(out_dir: Path, model, optimizer, key: str) -> dict[str, Any]:
    """Restore what save_policy_checkpoint wrote; refuse a checkpoint of another run."""
    state, saved = load_checkpoint(Path(out_dir) / CHECKPOINT_DIR, model, key, RESUME_MISMATCH)
    if optimizer is not None and "optimizer" in saved:
        optimizer.load_state_dict(saved["optimizer"])
    return state


def write_run_state(folder: Path, state: dict[str, Any]) -> None:
    """rmcore's half of a checkpoint whose weights another library saves (TRL's checkpoint-N/ beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / STATE_FILE, json.dumps(state, default=str))


def read_run_state(folder: Path, key: str) -> dict[str, Any]:
    """What write_run_state wrote; refuse the state of another run, as load_policy_checkpoint does."""
    state = read_json_object(folder / STATE_FILE)  # a regular file of sane size, or one line naming it
    if state.get("run_key") != key:
        raise TrainingError(f"{folder}: this checkpoint was made with another {RESUME_MISMATCH}, or use a new "
                            "--out folder")
    return state


def run_key(config: RLHFConfig, policy_path: str, train_prompts: list, eval_prompts: list) -> str:
    """What a checkpoint must match to be resumed: every option but the number of rounds, and the prompts."""
    options = {k: v for k, v in asdict(config).items() if k != "rounds"}
    options["policy_path"] = policy_path
    digest = hashlib.sha256(json.dumps([train_prompts, eval_prompts], sort_keys=True).encode()).hexdigest()[:16]
    return digest + ":" + json.dumps(options, sort_keys=True, default=str)


def policy_metadata(config: RLHFConfig, policy_name: str, *, steps: int, total_steps: int, stopped: bool,
                    history: list[dict[str, Any]], before_after_rows: list[dict[str, Any]],
                    train_prompts: int, eval_prompts: int, kl_handling: str) -> dict[str, Any]:
    """rmcore_policy.json: what produced the policy, how it went, and its answers before and after."""
    return {
        "rmcore_version": __version__, "kind": "policy", "method": config.method, "base_policy": policy_name,
        "reward_model": config.reward_model, "gold_model": config.gold_model, "config": asdict(config),
        "kl_handling": kl_handling, "prompts": {"train": train_prompts, "eval": eval_prompts},
        "steps": steps, "total_steps": total_steps, "stopped": stopped,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "history": history, "before_after": before_after_rows,
    }
