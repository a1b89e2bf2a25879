"""Every training setting in one place: its default, its allowed values and its help text.

`TrainConfig` is the only source of training defaults. The CLI builds `rmcore train`'s options from
its fields (`cli_options`), and the app's Train form reads its defaults, choices and help from here,
so the command line, the app and the library cannot drift apart (a test checks both).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any

from rmcore.data.encoding import DEFAULT_MAX_LENGTH

MODES = ("auto", "head", "lora", "full")
PRECISIONS = ("auto", "float32", "bfloat16")  # what rmcore.model.device.mixed_precision_for takes
# Head-only training is logistic regression on frozen features: it takes a much larger step. Full: 1e-5
# (a large-model default) left SmolLM2-135M where it started on HH pairs in a user's 142-step run and in
# the sweep; 5e-5 reached 0.644 on 160 held-out HH pairs (mean of 8 data orders, bench/README.md), and
# 1e-4 jumped to "the shorter answer wins" in the sweep (bench/results/20261130-sweep-hh.jsonl).
DEFAULT_LR = {"head": 2e-3, "lora": 2e-4, "full": 5e-5}
# A head-mode epoch costs milliseconds once the trunk features are cached; a trunk epoch costs minutes.
DEFAULT_EPOCHS = {"head": 10, "lora": 1, "full": 1}
# The app trains to a time budget by default ("after a coffee break"); these are the budgets it offers.
APP_TIME_BUDGETS_MIN = (1, 2, 5, 10, 15, 30, 60, 120)
APP_DEFAULT_TIME_BUDGET_MIN = 5
# --mode auto (rmcore.training.train): head mode first; then, when the budget leaves time for a pass, the top
# AUTO_TOP_BLOCKS blocks from the head's solution at AUTO_TOP_LR, for at most AUTO_TOP_EPOCHS passes, kept
# only if they score better on the held-out sample. Measured on the instruction task (bench/README.md): the
# top 4 blocks trained from the head's solution at 1e-4 beat the head by 0.03-0.06 on both held-out sets;
# trained from a random neuron (at 5e-5 or 2e-4) they lost to it.
AUTO_TOP_BLOCKS = 4
AUTO_TOP_LR = 1e-4
AUTO_TOP_EPOCHS = 10
# --max-turns auto tries the whole dialogue, then its last 3 messages (the user's last two turns and the
# reply between), then the last user message alone.
AUTO_TURNS = (None, 3, 1)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """What a training run does; `check()` says, in words, what is out of range."""

    model: str = field(default="embedded", metadata=_help(
        "base model: 'embedded' (SmolLM2-135M-Instruct, the default) or a local HF folder"))
    mode: str = field(default="auto", metadata=_help(
        "auto: head mode, then (with a time budget and held-out prompts, when a pass fits) the top "
        f"{AUTO_TOP_BLOCKS} blocks from the head's solution, kept if better on the held-out sample; "
        "head: train only the reward neuron on cached trunk features (fast, CPU-friendly); "
        "lora: adapters on every linear layer + the neuron; full: every weight", choices=MODES))
    epochs: int | None = field(default=None, metadata=_help(
        "passes over the training prompts (with a time budget: at most this many); default by mode: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + " (auto: the head's)", minimum=1))
    lr: float | None = field(default=None, metadata=_help(
        "learning rate; default by mode: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
        + f" (auto: the head's; its top blocks train at {AUTO_TOP_LR:g})"))
    batch_size: int = field(default=8, metadata=_help(
        "prompts per optimizer step, each with all its responses; halve it if you run out of memory", minimum=1))
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata=_help(
        "tokens of prompt + one response; longer prompts are cut from the left first", minimum=16))
    max_turns: int | str = field(default="auto", metadata=_help(
        "messages of each dialogue to train on: N keeps the last N (less a leading assistant message, so it "
        "starts with a user turn; odd N: 1 = the last user message, 3 = the exchange before it too), 'all' "
        "never cuts; 'auto' (with a time budget) cuts to the last 3 or 1 when that fits a tenth more "
        "comparisons, or all of them (without a budget: all). Training and its held-out evaluation only; "
        "scoring is unchanged"))
    eval_fraction: float = field(default=0.1, metadata=_help(
        "share of the prompts held out for evaluation when no held-out file is given"))
    seed: int = field(default=0, metadata=_help("head initialisation, held-out split and data order"))
    warmup_ratio: float = field(default=0.05, metadata=_help(
        "linear warm-up over this share of the steps, then linear decay to 0"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    center_coefficient: float = field(default=0.0, metadata=_help(
        "weight c of c x mean(r^2) in the loss, keeps rewards near 0 (TRL's center_rewards_coefficient)"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm (0 = none)"))
    lora_r: int = field(default=16, metadata=_help("LoRA rank (mode lora)", minimum=1))
    lora_alpha: int | None = field(default=None, metadata=_help(
        "LoRA scaling alpha (mode lora); default 2 x rank, so the update's scale does not depend on the rank"))
    trainable_layers: int = field(default=0, metadata=_help(
        "full and lora: train only the top N transformer blocks (with the final norm and the reward neuron); "
        "the blocks below run without gradients, so a step costs little more than a forward pass (0 = all; "
        f"auto: the blocks its second stage trains, 0 = {AUTO_TOP_BLOCKS})",
        minimum=0))
    checkpoint_every: int = field(default=0, metadata=_help(
        "steps between checkpoints; 0 = at the end of each epoch only", minimum=0))
    eval_every: int = field(default=0, metadata=_help(
        "steps between held-out evaluations; 0 = at the end of each epoch only", minimum=0))
    time_budget_s: float = field(default=0.0, metadata=_help(
        "wall-clock budget for the whole run in seconds (0 = none): the steps are fitted to it from the "
        "measured time per step, and the run ends on time with a finished, evaluated model"))
    precision: str = field(default="auto", metadata=_help(
        "auto: lora, full and --mode auto in bfloat16 autocast where the chip makes it fast (a GPU, or a CPU "
        "with AVX512-BF16 or AMX), float32 elsewhere, head mode's features as scoring computes them; float32 "
        "or bfloat16 forces one", choices=PRECISIONS))
    cache_features: bool = field(default=True, metadata=_help(
        "head mode: reuse trunk features across runs (keyed by model and tokens)"))
    max_tokens: int = field(default=0, metadata=_help(
        "padded tokens per forward pass; bigger batches accumulate gradients (0 = fit memory)", minimum=0))

    def __post_init__(self) -> None:
        if self.epochs is None and self.mode in MODES:
            self.epochs = DEFAULT_EPOCHS[self._defaults_mode()]

    def _defaults_mode(self) -> str:
        """The mode whose defaults apply: auto starts as head mode (its top blocks have their own)."""
        return "head" if self.mode == "auto" else self.mode

    def head_first(self, device: str | None = None) -> TrainConfig:
        """The first stage of --mode auto: head mode with this run's settings (itself for other modes). On
        `device`, "auto" precision becomes what auto trains at there (bfloat16 where fast: both stages
        run at it, so the features pass that feeds the head also keeps the top blocks' inputs quickly)."""
        if self.mode != "auto":
            return self
        precision = self.precision
        if device is not None and precision == "auto":
            precision = "bfloat16" if self.mixed_precision(device) == "bf16" else "float32"
        return replace(self, mode="head", precision=precision)

    def top_blocks(self) -> TrainConfig:
        """The second stage of --mode auto: full mode on the top blocks, trained from the head's solution."""
        return replace(self, mode="full", lr=AUTO_TOP_LR, epochs=AUTO_TOP_EPOCHS,
                       trainable_layers=self.trainable_layers or AUTO_TOP_BLOCKS)

    def mixed_precision(self, device: str) -> str:
        """The autocast this run trains at ("bf16" or "no"): `precision`, where "auto" means bfloat16 on
        chips that make it fast (rmcore.model.device) for lora and full steps, and in head mode the
        precision scoring uses, so the trunk features training caches are the ones an evaluation of the
        model computes, and reuses exactly (float32 on a CPU)."""
        from rmcore.model.device import mixed_precision_for, scoring_precision  # torch: config stays light

        if self.precision == "auto" and self.mode == "head":
            return scoring_precision(device)
        return mixed_precision_for(device, self.precision)

    def turns_to_try(self) -> tuple[int | None, ...]:
        """The cuts a run may train on, longest first (None: the whole dialogue); the plan picks one
        (rmcore.training.budget.choose_cut). Only a budget can tell whether a cut buys anything."""
        if self.max_turns == "all" or (self.max_turns == "auto" and not self.time_budget_s):
            return (None,)
        return AUTO_TURNS if self.max_turns == "auto" else (self.max_turns,)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self._defaults_mode()]

    def lora_scaling_alpha(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for spec in fields(self):
            minimum = spec.metadata.get("minimum")
            value = getattr(self, spec.name)
            if minimum is not None and value < minimum:
                unit = " tokens" if spec.name == "max_length" else ""
                raise ValueError(f"{spec.name} must be at least {minimum}{unit}, got {value}")
        if self.lr is not None and not (0 < self.lr < 1):
            raise ValueError(f"learning rate must be in (0, 1), got {self.lr}")
        if not (0 <= self.center_coefficient < math.inf):
            raise ValueError(f"center coefficient must be a number >= 0, got {self.center_coefficient}")
        if not (0 <= self.eval_fraction < 1):
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_turns not in ("auto", "all") and not (isinstance(self.max_turns, int) and self.max_turns >= 1):
            raise ValueError(f"max_turns must be a number of messages >= 1, 'all' or 'auto', got {self.max_turns!r}")
        if not (0 <= self.time_budget_s < math.inf):
            raise ValueError(f"time budget must be a number of seconds >= 0, got {self.time_budget_s}")


def default(name: str) -> Any:
    """The default of one TrainConfig field (the app's form and the CLI read it from here)."""
    return next(spec.default for spec in fields(TrainConfig) if spec.name == name)


def help_text(name: str) -> str:
    return next(spec.metadata["help"] for spec in fields(TrainConfig) if spec.name == name)


_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in "30m", "90s", "1h30m", "1.5h" or a bare number of minutes ("30")."""
    text = str(text).strip().lower()
    try:
        seconds = float(text) * 60
    except ValueError:
        match = _DURATION.match(text)
        if not text or not match or not any(match.groups()):
            raise ValueError(f"cannot read {text!r} as a duration; write it like 30m, 90s or 1h30m") from None
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not (0 < seconds < math.inf):
        raise ValueError(f"a time budget must be more than 0 seconds, got {text!r}")
    return seconds
