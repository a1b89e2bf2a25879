"""Head mode's trunk features: each response's last-token hidden state, computed once and cached.

With the trunk frozen, the reward is a linear function of these features, so head-mode training
runs the trunk once over the data and then trains the neuron on the cached vectors for as many
epochs and runs as it likes (rmcore.model.feature_cache keeps them on disk, per prompt).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from rmcore.data.encoding import EncodedGroup
from rmcore.model.batching import pack_groups
from rmcore.model.feature_cache import FeatureCache, group_key
from rmcore.model.reward_model import PackedRewardModel
from rmcore.training.budget import Deadline, Plan, now


class FeaturesStopped(Exception):
    """A stop request ended the feature computation before it was done (what was computed is cached)."""

    def __init__(self, done: int = 0, total: int = 0):
        super().__init__(f"stopped after the trunk features of {done} of {total} prompts")
        self.done, self.total = done, total


@dataclass
class PlannedFeatures:
    """The trunk features a budget allowed: the groups kept (indices into the given lists) and theirs."""

    train: torch.Tensor  # (responses of the kept training groups, H), in `train_kept` order
    eval: torch.Tensor | None  # (responses of the kept held-out groups, H), in `eval_kept` order
    train_kept: list[int]
    eval_kept: list[int]
    planned: int  # training groups the plan expected to compute features for


@torch.no_grad()
def compute_features(
    packed: PackedRewardModel, encoded: list[EncodedGroup], pad_id: int, device, batch_size: int,
    autocast, on_progress: Callable[[int, int, float], None] | None = None, lower=None,
) -> list[torch.Tensor]:
    """Last-token hidden states of each group's responses (K, H), in group order, float32 on the CPU.

    Groups run shortest first, so `on_progress(done, total, token_share)` also gives the share of
    tokens done: that, not the share of prompts, is the share of the time. `lower`
    (rmcore.training.lower_blocks) keeps the hidden state entering the top blocks on the way, for
    --mode auto's second stage.
    """
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].num_tokens)
    per_group: list[torch.Tensor] = [torch.zeros(0)] * len(encoded)
    total_tokens = max(1, sum(g.num_tokens for g in encoded))
    done_tokens = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = pack_groups([encoded[i] for i in idx], pad_id).to(device)
        with autocast(), lower.keeping([encoded[i] for i in idx]) if lower is not None else contextlib.nullcontext():
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
                   should_stop: Callable[[], bool], lower=None) -> tuple[torch.Tensor, torch.Tensor | None]:
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
                                        config.batch_size, accelerator.autocast, progress, lower)
            for i, part in zip(missing, computed):
                per_group[i] = part
        cache.save(everything, per_group)
    elif accelerator.is_main_process:
        phase("trunk features found in the cache")
    accelerator.wait_for_everyone()
    feats = load_file(str(exact))["features"]
    n_train = sum(len(g.response_ids) for g in encoded)
    return feats[:n_train], (feats[n_train:] if encoded_eval else None)


def planned_features(config, model_path: str, packed: PackedRewardModel, encoded: list[EncodedGroup],
                     encoded_eval: list[EncodedGroup], plan: Plan, deadline: Deadline, pad_id: int, accelerator,
                     phase: Callable, should_stop: Callable[[], bool], lower=None) -> PlannedFeatures:
    """Trunk features within a time budget: the plan's held-out sample first, then training groups in
    the plan's order (cached ones first) until `deadline`, however many the plan expected.

    A faster machine than measured gets more training groups, a slower one fewer, and the phase
    line says so. Everything computed is added to the feature cache, also when a stop request ends
    the computation (FeaturesStopped): a rerun starts from there.
    """
    cache = FeatureCache.for_model(model_path, accelerator.mixed_precision)
    train_order = plan.feature_order  # usable training groups, cached first, then in a seeded random order
    eval_kept = list(plan.eval_indices)
    cached_train = cache.load([encoded[i] for i in train_order]) if config.cache_features else [None] * len(train_order)
    cached_eval = cache.load([encoded_eval[i] for i in eval_kept]) if config.cache_features else [None] * len(eval_kept)
    new: list[tuple[EncodedGroup, torch.Tensor]] = []
    chunk = max(1, config.batch_size)

    def compute(groups: list[EncodedGroup], have: list) -> None:
        todo = [k for k, f in enumerate(have) if f is None]
        if todo:
            for k, part in zip(todo, compute_features(packed, [groups[k] for k in todo], pad_id, accelerator.device,
                                                      config.batch_size, accelerator.autocast, lower=lower)):
                have[k] = part
                new.append((groups[k], part))

    try:
        for start in range(0, len(eval_kept), chunk):  # the held-out sample: small, and needed whole
            part = slice(start, start + chunk)
            compute([encoded_eval[i] for i in eval_kept[part]], have := cached_eval[part])
            cached_eval[part] = have
            _check_stop(should_stop, 0, len(train_order))
        done, pace = 0, _Pace(plan.rates_forward)
        while done < len(train_order):
            size = pace.groups_that_fit([encoded[i] for i in train_order[done:]], cached_train[done:], deadline)
            if size == 0 and done > 0:
                break  # the next prompt would end after the deadline
            part = slice(done, done + max(1, size))
            started = now()
            compute([encoded[i] for i in train_order[part]], have := cached_train[part])
            pace.record([encoded[i] for i in train_order[part]], [f is None for f in cached_train[part]],
                        now() - started)
            cached_train[part] = have
            done = min(len(train_order), part.stop)
            _report(phase, done, plan.train_prompts, len(train_order), deadline)
            _check_stop(should_stop, done, len(train_order))
    finally:
        if new and config.cache_features and accelerator.is_main_process:
            cache.save([g for g, _ in new], [f for _, f in new])
    kept = train_order[:done]
    _say_how_the_plan_went(phase, done, plan.train_prompts, len(train_order))
    return PlannedFeatures(torch.cat(cached_train[:done]), torch.cat(cached_eval) if eval_kept else None, kept,
                           eval_kept, plan.train_prompts)


class _Pace:
    """Seconds per token of the feature computation, as measured so far (the probe's to start with),
    and how many of the next groups end before a deadline: a chunk is a few seconds of work, so a
    slower machine is noticed within one chunk, and no group is started that would overrun."""

    CHUNK_S = 3.0  # the longest chunk between two looks at the clock

    def __init__(self, seconds_per_token: float):
        self.rate = seconds_per_token
        self.seconds = self.tokens = 0.0

    def record(self, groups: list[EncodedGroup], computed: list[bool], seconds: float) -> None:
        tokens = sum(g.num_tokens for g, c in zip(groups, computed) if c)
        if tokens:
            self.seconds, self.tokens = self.seconds + seconds, self.tokens + tokens
            self.rate = max(self.rate, seconds / tokens)  # the last chunk's pace, or the mean if that was faster
            self.rate = min(self.rate, max(seconds / tokens, self.seconds / self.tokens))

    def groups_that_fit(self, groups: list[EncodedGroup], cached: list, deadline: Deadline) -> int:
        left = deadline.left()
        room = self.CHUNK_S if left is None else min(self.CHUNK_S, left)
        taken, total = 0, 0.0
        for group, feature in zip(groups, cached):
            cost = 0.0 if feature is not None else group.num_tokens * self.rate
            if total + cost > room and (taken or (left is not None and cost > left)):
                break
            taken, total = taken + 1, total + cost
        return taken


def _check_stop(should_stop: Callable[[], bool], done: int, total: int) -> None:
    if should_stop():
        raise FeaturesStopped(done, total)


def _report(phase: Callable, done: int, planned: int, total: int, deadline: Deadline) -> None:
    left = deadline.left()
    phase(f"computing trunk features ({done}/{planned} planned prompts of {total})",
          min(1.0, done / max(1, planned)), max(0.0, left) if left is not None else None)


def _say_how_the_plan_went(phase: Callable, done: int, planned: int, total: int) -> None:
    if done < planned:
        phase(f"trunk features of {done} of the {planned} planned training prompts (of {total}): the machine is "
              "slower than measured, so the plan shrank to end on time")
    elif done > 1.05 * planned + 1:
        phase(f"trunk features of {done} training prompts of {total}, {done - planned} more than planned: there "
              "was time left")


def response_offsets(encoded: list[EncodedGroup]) -> list[int]:
    """Row of each group's first response in the stacked features."""
    offsets, total = [], 0
    for group in encoded:
        offsets.append(total)
        total += len(group.response_ids)
    return offsets
