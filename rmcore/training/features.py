"""Head mode's trunk features: each response's last-token hidden state, computed once and cached.

With the trunk frozen, the reward is a linear function of these features, so head-mode training
runs the trunk once over the data and then trains the neuron on the cached vectors for as many
epochs and runs as it likes (rmcore.model.feature_cache keeps them on disk, per prompt).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from safetensors.torch import load_file

from rmcore.data.encoding import EncodedGroup
from rmcore.model.batching import pack_groups
from rmcore.model.feature_cache import FeatureCache, group_key
from rmcore.model.reward_model import PackedRewardModel


class FeaturesStopped(Exception):
    """A stop request (or the time budget) ended the feature computation before it was done."""


@torch.no_grad()
def compute_features(
    packed: PackedRewardModel, encoded: list[EncodedGroup], pad_id: int, device, batch_size: int,
    autocast, on_progress: Callable[[int, int, float], None] | None = None,
) -> list[torch.Tensor]:
    """Last-token hidden states of each group's responses (K, H), in group order, float32 on the CPU.

    Groups run shortest first, so `on_progress(done, total, token_share)` also gives the share of
    tokens done: that, not the share of prompts, is the share of the time.
    """
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].num_tokens)
    per_group: list[torch.Tensor] = [torch.zeros(0)] * len(encoded)
    total_tokens = max(1, sum(g.num_tokens for g in encoded))
    done_tokens = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pack_groups([encoded[i] for i in idx], pad_id).to(device)
        with autocast():
            feats = packed(batch, features_only=True)  # (N, H)
        feats = feats.float().cpu()
        for i, part in zip(idx, feats.split(batch.group_sizes)):
            per_group[i] = part
        done_tokens += batch.real_tokens
        if on_progress:
            on_progress(min(start + batch_size, len(order)), len(order), done_tokens / total_tokens)
    return per_group


def trunk_features(config, model_path: str, packed: PackedRewardModel, encoded: list[EncodedGroup],
                   encoded_eval: list[EncodedGroup], pad_id: int, accelerator, phase: Callable,
                   should_stop: Callable[[], bool]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Trunk features of every train and eval response, (N_train, H) and (N_eval, H) or None.

    Groups already in the feature cache are read from it and only the others are computed; the
    whole set is stored for the next run. `phase(text, progress, eta_s)` reports progress, and
    `should_stop()` is asked after every batch (raising FeaturesStopped).
    """
    everything = encoded + encoded_eval
    cache = FeatureCache.for_model(model_path, accelerator.mixed_precision)
    exact = cache.shard_path([group_key(g) for g in everything])
    if accelerator.is_main_process and not (config.cache_features and exact.is_file()):
        per_group = cache.load(everything) if config.cache_features else [None] * len(everything)
        missing = [i for i, f in enumerate(per_group) if f is None]
        if len(missing) < len(everything):
            phase(f"trunk features of {len(everything) - len(missing)} of {len(everything)} prompts found "
                  "in the cache")
        if missing:
            started = time.perf_counter()

            def progress(done: int, total: int, share: float) -> None:
                left = (time.perf_counter() - started) * (1 - share) / share if share > 0 and done < total else None
                phase(f"computing trunk features ({done}/{total} prompts)", share, left)
                if should_stop() and done < total:
                    raise FeaturesStopped

            computed = compute_features(packed, [everything[i] for i in missing], pad_id, accelerator.device,
                                        config.batch_size, accelerator.autocast, progress)
            for i, part in zip(missing, computed):
                per_group[i] = part
        cache.save(everything, per_group)
    elif accelerator.is_main_process:
        phase("trunk features found in the cache")
    accelerator.wait_for_everyone()
    feats = load_file(str(exact))["features"]
    n_train = sum(len(g.response_ids) for g in encoded)
    return feats[:n_train], (feats[n_train:] if encoded_eval else None)


def response_offsets(encoded: list[EncodedGroup]) -> list[int]:
    """Row of each group's first response in the stacked features."""
    offsets, total = [], 0
    for group in encoded:
        offsets.append(total)
        total += len(group.response_ids)
    return offsets
