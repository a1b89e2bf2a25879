"""Estimate how long a training run will take on this machine, by timing one batch before it starts.

The cost of a run is almost all token work, so we time one real batch of the user's data in the
chosen mode (forward only for head mode, whose trunk runs once to cache features; forward,
backward and an optimizer step for lora and full), turn it into seconds per token, and multiply by
the tokens the run will see:

    head:      load + (train + eval tokens) x forward s/token + steps x (tiny head step)
    lora/full: load + epochs x train tokens x train s/token + (epochs + 1) x eval tokens x forward s/token

The rates depend on the model, the mode and the device, not on the data set, so a caller (the app)
can measure them once and reuse them while the user changes epochs, batch size or the data.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from rmcore.core.errors import TrainingError
from rmcore.core.progress import format_duration
from rmcore.data import RankedGroup
from rmcore.data.encoding import EncodedGroup, encode_groups, encode_last_turns
from rmcore.model.batching import ROW_TOKENS, pack_groups
from rmcore.model.device import autocast, autodetect_device
from rmcore.model.feature_cache import FeatureCache, group_key
from rmcore.model.reward_model import load_sequence_classifier, load_tokenizer, resolve_model_path
from rmcore.training.auto import top_blocks_may_follow
from rmcore.training.budget import (
    HEAD_STEP_S,
    SAVE_BYTES_PER_S,
    Plan,
    Rates,
    choose_cut,
    margin_seconds,
    mark_cut,
    now,
    plan_run,
    save_seconds,
)
from rmcore.training.config import TrainConfig
from rmcore.training.modes import decoder_blocks, setup_mode

PROBE_S = 3.0  # the few seconds a budgeted run spends measuring its speed before it plans
PROBE_TOKENS = 1024  # tokens of the probe's batch: about 1.5 s forward and 6 s for a full step (SmolLM2, 2 cores)


@dataclass
class StepRates:
    """Seconds per token of one model in one mode on one device (what `measure_rates` timed)."""

    model: str
    mode: str
    device: str
    load_s: float  # loading the model and adding the reward neuron
    forward_s_per_token: float  # inference (features, held-out evaluation)
    train_s_per_token: float  # forward + backward + optimizer step (0 for head mode: it trains on features)
    parameters: int  # parameters saved at the end (for the save time)
    blocks: int = 0  # the trunk's transformer blocks (0: not found), for --mode auto's top blocks


@dataclass
class TimeEstimate:
    seconds: float
    parts: dict[str, float] = field(default_factory=dict)  # load, features, training, evaluation, save
    steps: int = 0
    train_tokens: int = 0  # packed tokens of one epoch (each prompt once, then its K responses)
    eval_tokens: int = 0
    cached_features: bool = False  # head mode: the trunk features are already in the cache
    device: str = "cpu"

    def describe(self) -> str:
        """One line for people: "about 1 min 20 s on cpu (features 50 s, training 25 s, ...)"."""
        parts = ", ".join(f"{k} {format_duration(v)}" for k, v in self.parts.items() if v >= 0.5)
        cached = "; trunk features already cached" if self.cached_features else ""
        return f"about {format_duration(self.seconds)} on {self.device} ({parts}{cached})"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _sample_batch(encoded: list[EncodedGroup], batch_size: int) -> list[EncodedGroup]:
    """A batch of typical length: `batch_size` groups around the median packed length."""
    order = sorted(encoded, key=lambda g: g.num_tokens)
    middle = len(order) // 2
    start = max(0, min(middle - batch_size // 2, len(order) - batch_size))
    return order[start : start + batch_size]


def _random_batch(encoded: list[EncodedGroup], tokens: int, seed: int) -> list[EncodedGroup]:
    """Groups at random (seeded), long and short alike, until `tokens`: the seconds per token then include
    what long rows cost more (attention grows with the row), and the probe stays a few seconds."""
    order = random.Random(seed).sample(range(len(encoded)), len(encoded))
    batch, total = [], 0
    for i in order:
        if batch and total + encoded[i].num_tokens > tokens:
            break
        batch.append(encoded[i])
        total += encoded[i].num_tokens
    return batch


def measure_rates(
    config: TrainConfig, groups: list[RankedGroup], *, device: str | None = None, sample_groups: int = 2
) -> StepRates:
    """Load the base model as training would and time a small batch of `groups` in `config.mode`.

    `sample_groups` prompts of median length (with all their responses) are run once to warm up and
    once timed; for lora and full one training step is timed too. A few seconds on a CPU for the
    embedded model. The loaded copy is thrown away, so nothing cached elsewhere is touched.
    """
    config.check()
    device = device or autodetect_device()
    config = config.head_first(device)  # --mode auto starts in head mode
    started = now()
    path, name = resolve_model_path(config.model)
    classifier, tokenizer, _ = load_sequence_classifier(path, seed=config.seed)
    load_s = now() - started
    usable = [g for g in groups if g.pairs()] or groups
    size = max(1, min(sample_groups, config.batch_size, len(usable)))
    encoded = encode_groups(tokenizer, usable[: max(size * 8, 64)], config.max_length)
    batch = pack_groups(_sample_batch(encoded, size), tokenizer.pad_token_id, row_tokens=_row_tokens(config)).to(device)
    parameters = sum(p.numel() for p in classifier.parameters())  # what is saved (LoRA is merged)
    packed, trainable = setup_mode(config, classifier)
    packed.to(device)
    mixed = config.mixed_precision(device)
    forward_s, train_s = _time_batch(config, packed, trainable, batch, device, lambda: autocast(device, mixed),
                                     step=True)
    tokens = max(1, batch.real_tokens)
    return StepRates(name, config.mode, device, load_s, forward_s / tokens, train_s / tokens, parameters,
                     _block_count(classifier))


def _block_count(classifier) -> int:
    try:
        return len(decoder_blocks(classifier))
    except TrainingError:
        return 0


def probe_rates(config: TrainConfig, packed, trainable, encoded: list[EncodedGroup], pad_id: int,
                accelerator) -> tuple[float, float]:
    """(forward, training) seconds per token of the model a run is about to train, on its own data.

    The probe of a time budget (rmcore.training.budget): a warm-up and a timed forward pass of a
    batch of random groups (`PROBE_TOKENS`), and for lora and full a forward and backward pass whose gradients are
    then dropped, so the weights, the optimizer and the random state are as before.
    """
    batch = pack_groups(_random_batch(encoded, PROBE_TOKENS, config.seed), pad_id, row_tokens=_row_tokens(config))
    forward_s, train_s = _time_batch(config, packed, trainable, batch.to(accelerator.device),
                                     accelerator.device.type, accelerator.autocast, step=False,
                                     warm_up=pack_groups([min(encoded, key=lambda g: g.num_tokens)], pad_id))
    tokens = max(1, batch.real_tokens)
    return forward_s / tokens, train_s / tokens


def _row_tokens(config: TrainConfig) -> int | None:
    """Pack as the run will: lora and full train on rows of several groups, head mode's features pass runs
    a row per group (rmcore.model.batching)."""
    return ROW_TOKENS if config.mode != "head" else None


def _time_batch(config: TrainConfig, packed, trainable, batch, device: str, autocast_context,
                step: bool, warm_up=None) -> tuple[float, float]:
    """Seconds of one forward pass of `batch` (after a warm-up) and, for lora and full, of a training
    pass (forward and backward, and the optimizer step when `step`: only on a throwaway model)."""
    was_training = packed.training
    packed.eval()

    def forward_once(rows) -> float:
        _sync(device)
        t0 = now()
        with torch.no_grad(), autocast_context():
            packed(rows, features_only=config.mode == "head")
        _sync(device)
        return now() - t0

    # warm-up: first calls allocate and pick kernels (a small batch does, when the caller gives one)
    forward_once(batch if warm_up is None else warm_up.to(batch.input_ids.device))
    forward_s = forward_once(batch)
    train_s = 0.0
    if config.mode != "head":
        params = [p for p in trainable.parameters() if p.requires_grad]
        packed.train()
        _sync(device)
        t0 = now()
        with autocast_context():
            rewards = packed(batch)
        rewards.float().sum().backward()
        if step:
            optimizer = torch.optim.AdamW(params, lr=config.learning_rate())
            optimizer.step()
        for p in params:
            p.grad = None
        _sync(device)
        train_s = now() - t0  # the forward warm-up above is enough; a second pass doubles the wait
    packed.train(was_training)
    return forward_s, train_s


def estimate_training_time(
    config: TrainConfig,
    train_groups: list[RankedGroup],
    eval_groups: list[RankedGroup] | None = None,
    *,
    rates: StepRates | None = None,
    tokenizer=None,
) -> TimeEstimate:
    """Seconds the run would take here; pass `rates` (from `measure_rates`) to skip the timing."""
    config.check()
    if rates is None:
        rates = measure_rates(config, train_groups)
    config = config.head_first(rates.device)
    if tokenizer is None:
        path, _ = resolve_model_path(config.model)
        tokenizer = load_tokenizer(path)
    encoded = encode_groups(tokenizer, train_groups, config.max_length)
    encoded_eval = encode_groups(tokenizer, eval_groups or [], config.max_length)
    train_tokens = sum(g.num_tokens for g in encoded)
    eval_tokens = sum(g.num_tokens for g in encoded_eval)
    steps = math.ceil(len(encoded) / config.batch_size) * config.epochs
    parts = {"loading": rates.load_s}
    cached = False
    if config.mode == "head":
        uncached_tokens = _uncached_tokens(config, encoded + encoded_eval, rates.device)
        cached = uncached_tokens == 0
        parts["features"] = uncached_tokens * rates.forward_s_per_token
        parts["training"] = steps * HEAD_STEP_S
        parts["evaluation"] = 0.0
    else:
        parts["training"] = config.epochs * train_tokens * rates.train_s_per_token
        parts["evaluation"] = (config.epochs + 1) * eval_tokens * rates.forward_s_per_token
    parts["saving"] = 1.0 + rates.parameters * 4 / SAVE_BYTES_PER_S
    seconds = sum(parts.values())
    if config.time_budget_s and seconds > config.time_budget_s:  # training stops early to end on time
        fixed = seconds - parts["training"]
        share = max(0.0, config.time_budget_s - fixed) / max(parts["training"], 1e-9)
        parts["training"] *= min(1.0, share)
        steps = max(1, int(steps * min(1.0, share)))
        seconds = sum(parts.values())
    return TimeEstimate(seconds, parts, steps, train_tokens, eval_tokens, cached, rates.device)


def plan_for(config: TrainConfig, train_groups: list[RankedGroup], eval_groups: list[RankedGroup] | None = None,
             *, rates: StepRates, tokenizer=None) -> Plan:
    """What a run with `config.time_budget_s` would do here, from rates measured before (`measure_rates`):
    the plan `rmcore train` prints at its start (rmcore.training.budget), for showing before a run starts."""
    config.check()
    requested, config = config, config.head_first(rates.device)
    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model_path(config.model)[0])
    cached = _cached_keys(config, rates.device)
    budget_rates = Rates(rates.forward_s_per_token, rates.train_s_per_token, save_seconds(rates.parameters),
                         save_seconds(3 * rates.parameters) if config.mode == "full" else 1.0)
    whole: dict[str, list[EncodedGroup]] = {}
    cuts: dict[int | None, tuple[list[EncodedGroup], list[EncodedGroup]]] = {}

    def plan_of(n: int | None) -> Plan:  # as the run plans each cut of --max-turns (rmcore.training.train)
        encoded = encode_last_turns(tokenizer, train_groups, n, config.max_length, whole.get("train"))[1]
        encoded_eval = encode_last_turns(tokenizer, eval_groups or [], n, config.max_length, whole.get("eval"))[1]
        cuts[n] = encoded, encoded_eval
        if n is None:
            whole.update(train=encoded, eval=encoded_eval)
        plan = plan_run(config, encoded, encoded_eval, budget_rates, spent_s=rates.load_s + PROBE_S,
                        cached_train={i for i, g in enumerate(encoded) if group_key(g) in cached},
                        cached_eval={i for i, g in enumerate(encoded_eval) if group_key(g) in cached})
        return mark_cut(plan, n, encoded + encoded_eval, whole["train"] + whole["eval"] if whole else None)

    plan = choose_cut(config.turns_to_try(), plan_of)
    top = min(requested.top_blocks().trainable_layers, rates.blocks)  # the run clamps N to the blocks there are
    if requested.mode == "auto" and plan.eval_prompts_total and top:  # as the run says (rmcore.training.train)
        margin = margin_seconds(config.time_budget_s)
        if top_blocks_may_follow(plan, *cuts[plan.max_turns], top / rates.blocks, margin):
            plan.then_top_blocks = top
    return plan


def _cached_keys(config: TrainConfig, device: str) -> set[int]:
    if config.mode != "head" or not config.cache_features:
        return set()
    try:
        path, _ = resolve_model_path(config.model)
        return FeatureCache.for_model(path, config.mixed_precision(device)).cached_keys()
    except Exception:  # an estimate must never fail because of the cache
        return set()


def _uncached_tokens(config: TrainConfig, encoded: list[EncodedGroup], device: str) -> int:
    """Tokens of the groups whose trunk features head-mode training would have to compute."""
    total = sum(g.num_tokens for g in encoded)
    if not config.cache_features:
        return total
    try:

        path, _ = resolve_model_path(config.model)
        cached = FeatureCache.for_model(path, config.mixed_precision(device)).cached_keys()
        return sum(g.num_tokens for g in encoded if group_key(g) not in cached)
    except Exception:  # an estimate must never fail because of the cache
        return total
