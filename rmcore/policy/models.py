"""The models of a policy run: the policy (a causal LM) with its LoRA adapters, and the reward models
that judge it (the proxy it is pushed toward, and an optional gold judge).

With LoRA the starting policy is the same network with its adapters disabled: the reference of the
KL term needs no second copy, and a saved policy is the adapters merged into a copy of the weights.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from rmcore.core.errors import ModelError
from rmcore.model.device import autodetect_device
from rmcore.model.reward_model import (
    RewardModel,
    check_finite_weights,
    check_tokenizer_file,
    check_vocabulary,
    from_pretrained_safely,
    is_reward_model_folder,
    load_tokenizer,
    resolve_model_path,
)
from rmcore.policy.config import RLHFConfig

# What a policy folder's generation_config.json may give generation: its special tokens. Every other
# setting (num_beams, num_return_sequences, max_length, penalties, ...) comes from rmcore's options.
GENERATION_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
_UNSAID_KEYS = {"transformers_version", "_from_model_config", "use_cache", "output_attentions",
                "output_hidden_states", "output_logits"}  # settings that change no answer: left out unsaid
_MAX_END_TOKENS = 64


def load_policy(name: str | os.PathLike | None = None, *, device: str | None = None):
    """(model, tokenizer, display name) of a causal LM: "embedded" or a local HF folder."""
    from transformers import AutoModelForCausalLM  # transformers: half a second to import; only loading needs it

    path, display = resolve_model_path(name)
    if is_reward_model_folder(path):
        raise ModelError(f"{path}: is a reward model (a sequence classifier), not a policy that writes text; "
                         "pass a causal LM folder or 'embedded'")
    check_tokenizer_file(path)
    tokenizer = load_tokenizer(path)
    model = from_pretrained_safely(AutoModelForCausalLM, path, dtype=torch.float32)
    check_finite_weights(model, path)
    check_vocabulary(model, tokenizer, path, trained=True)  # a policy is never resized: refused on a mismatch
    own_generation_config(model, path)
    model.to(device or autodetect_device()).eval()
    return model, tokenizer, display


def own_generation_config(model, path: str) -> dict[str, Any]:
    """Give the model a generation config holding only its folder's special tokens, so that sampling
    takes every setting from rmcore's options: a folder's `num_beams: 1000` would turn sampling into a
    beam search, a huge `max_length` or `num_return_sequences` would fill the memory. Returns the
    settings left out, and says them in one `[rmcore]` line."""
    from transformers import GenerationConfig  # transformers: loaded already, with the model

    folder = getattr(model, "generation_config", None)
    if folder is None:
        return {}
    kept = {key: _token_ids(getattr(folder, key, None)) for key in GENERATION_TOKEN_KEYS}
    kept = {key: value for key, value in kept.items() if value is not None}
    left_out = {key: value for key, value in folder.to_diff_dict().items()
                if key not in GENERATION_TOKEN_KEYS and key not in _UNSAID_KEYS}
    model.generation_config = GenerationConfig(**kept)
    if left_out:
        shown = ", ".join(f"{key}={value!r}"[:60] for key, value in list(left_out.items())[:6])
        more = f" and {len(left_out) - 6} more" if len(left_out) > 6 else ""
        logging.getLogger("rmcore").info(
            f"{Path(path) / 'generation_config.json'}: ignored {shown}{more}; sampling takes its settings from "
            "rmcore's options (--n, --temperature, --top-p, --max-new-tokens)")
    return left_out


def _token_ids(value):
    """A special-token setting as generation can use it: an id or a short list of ids, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, list) and 0 < len(value) <= _MAX_END_TOKENS and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        return value
    return None


def check_reward_model_folder(path: str, what: str = "reward model") -> str:
    """The folder of a trained reward model; refuse one that is not (a base LM would score at random)."""
    folder, _ = resolve_model_path(path)
    if not is_reward_model_folder(folder):
        raise ModelError(f"{path}: not a reward model folder (no trained *ForSequenceClassification with one "
                         f"output); train one with `rmcore train`, then pass its folder as the {what}")
    return folder


def load_reward_model(path: str | None, what: str = "reward model") -> RewardModel | None:
    """A trained rmcore reward model (None for None), refusing a folder that is not one."""
    if path is None:
        return None
    return RewardModel.load(check_reward_model_folder(path, what))


def lora_config(config: RLHFConfig):
    """The LoRA adapters of a policy run: every linear layer, rank and alpha from the config."""
    from peft import LoraConfig, TaskType  # peft: two seconds to import; only a run that trains needs it

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=0.0, target_modules="all-linear")


def add_lora(model, config: RLHFConfig):
    """LoRA adapters on every linear layer of the policy; with them disabled it is the starting policy."""
    from peft import get_peft_model  # peft: two seconds to import; only a run that trains needs it

    with warnings.catch_warnings():  # peft calls a transformers method renamed in v5: noise for our users
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora_config(config))


def merged_copy(model):
    """The policy as a plain transformers model: LoRA adapters merged into a copy of the weights."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload().float()
    return model.float()


def sampling_policy(model):
    """What to sample from: a LoRA policy whose adapters have moved is merged into a copy first
    (weights W + BA), because live adapters add two small matmuls to every linear layer at every new
    token: 1.1x the generation time on 2 CPU cores (64 answers of 64 tokens, measured). The copy
    costs one policy's memory for as long as the sampling lasts."""
    if hasattr(model, "merge_and_unload") and adapters_moved(model):
        return merged_copy(model).eval()
    return model


def adapters_moved(model) -> bool:
    """False while every LoRA B matrix is still zero (the policy is exactly the starting one)."""
    return any(p.abs().sum().item() > 0 for n, p in model.named_parameters() if "lora_B" in n)
