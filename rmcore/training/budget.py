"""A time budget is a promise: the plan of a whole training command, from speed measured here and now.

`rmcore train --time-budget 5m` (and the app's default "5 minutes") must end within the budget with
a finished, evaluated, saved model, on any file and on a busy machine. So nothing is sized once
and for all. After loading and tokenizing, a probe of a few seconds times the trunk on the
user's own data (`Rates`), and `plan_run` sizes every phase to the time left:

- the held-out evaluation scores a random sample of the held-out prompts, at most `EVAL_SHARE` of
  the time for all its evaluations together (the rest is reported as left out);
- head mode computes trunk features for a random subset of the training prompts (those already in
  the feature cache first, they cost nothing) until the time kept for the head, the evaluation and
  the save; if the machine turns out faster, more prompts are added, if slower, fewer;
- lora and full fit the number of steps to the time left (re-fitted after every step, rmcore.training.train);
- the save keeps the time it needs.

Each phase then runs against a deadline (`Deadline`), so a machine that slows down mid-run shrinks
what is left of the plan instead of overrunning it. When not even one batch of comparisons fits,
the command says so at once, with what would (`Plan.refusal`).

When not every training comparison fits, multi-turn dialogues may be cut to their last turns
(`--max-turns auto`, `choose_cut`): most of their tokens are earlier turns, so the same time covers
more comparisons. The shorter context is taken only when it buys at least `CUT_GAIN` times more.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from rmcore.core.progress import format_duration
from rmcore.data.encoding import EncodedGroup

_clock = time.monotonic  # seconds; the one clock of budgets, plans and phase times (tests replace it)

HEAD_STEP_S = 0.003  # one optimizer step of the reward neuron on cached features (measured: ~1-3 ms)
SAVE_BYTES_PER_S = 150e6  # writing safetensors, tokenizer and the atomic rename
EVAL_SHARE = 0.15  # of the time left after loading: every held-out evaluation of the run together
MARGIN_SHARE = 0.03  # of the budget, kept free for what no probe measures (Python, the file system)
MIN_MARGIN_S = 1.0


def margin_seconds(budget_s: float | None) -> float:
    """Seconds of a budget kept free for what no probe measures."""
    return max(MIN_MARGIN_S, MARGIN_SHARE * budget_s) if budget_s else 0.0
CUT_GAIN = 1.1  # a cut to the last turns must fit this many times the comparisons of the longer context
MIN_EVAL_PROMPTS = 4  # a held-out sample smaller than this says nothing; it is then the whole set or none


def now() -> float:
    return _clock()


def save_seconds(parameters: int) -> float:
    """Seconds to save a model of `parameters` float32 weights (safetensors, tokenizer, rename)."""
    return 1.0 + parameters * 4 / SAVE_BYTES_PER_S


@dataclass
class Rates:
    """The speed of this machine now, for this model and mode: what the probe measured."""

    forward_s_per_token: float  # inference: trunk features, held-out evaluation
    train_s_per_token: float  # forward + backward of a training step (0 in head mode: it trains on features)
    save_s: float  # the final save
    checkpoint_s: float = 0.0  # one checkpoint (trainable weights and optimizer state)


@dataclass
class Plan:
    """What a run will do within its budget, decided before any heavy work (and reported as it went)."""

    mode: str
    budget_s: float
    spent_s: float  # reading, loading, tokenizing and the probe, before the plan
    train_prompts: int
    train_prompts_total: int
    train_comparisons: int
    train_comparisons_total: int
    eval_prompts: int
    eval_prompts_total: int
    eval_comparisons: int
    eval_comparisons_total: int
    evaluations: int
    steps: int
    seconds: dict[str, float]  # planned seconds of each phase still to come
    needed_s: float  # the whole command with every training and held-out comparison, at the measured speed
    fits: bool = True
    feature_order: list[int] = field(default_factory=list, repr=False)  # every usable training group, in the
    # order to compute their features (cached first): the plan expects the first `train_prompts` to fit
    eval_indices: list[int] = field(default_factory=list, repr=False)  # held-out groups in the sample
    rates: Rates | None = field(default=None, repr=False)  # the speed the plan was made from
    covers_all: bool = False  # every training comparison, every epoch: nothing left for a cut to win
    max_turns: int | None = None  # the dialogues cut to their last N messages (None: whole)
    token_share: float | None = None  # tokens of the cut data (training and held-out) over the whole's
    then_top_blocks: int = 0  # --mode auto: after the head, the top N blocks from its solution if time is left

    @property
    def rates_forward(self) -> float:
        return self.rates.forward_s_per_token if self.rates else 0.0

    def describe(self) -> str:
        """The plan in one line, for the start of a run."""
        what = (f"{self.train_comparisons:,} of {self.train_comparisons_total:,} training comparisons "
                f"({self.train_prompts:,} of {self.train_prompts_total:,} prompts)")
        if self.mode != "head":
            passes = self.train_comparisons / max(1, self.train_comparisons_total)
            total = f"the {self.train_comparisons_total:,} training comparisons of {self.train_prompts_total:,} prompts"
            if passes >= 1.05:
                what = f"{self.steps:,} steps, {passes:.1f} passes over {total}"
            elif passes >= 0.95:
                what = f"{self.steps:,} steps, one pass over {total}"
            else:
                what = f"{self.steps:,} steps, about {self.train_comparisons:,} ({passes:.0%}) of {total}"
        held = (f"held-out {self.eval_comparisons:,} of {self.eval_comparisons_total:,} comparisons "
                f"({self.eval_prompts} of {self.eval_prompts_total} prompts)" if self.eval_prompts_total
                else "no held-out prompts")
        if self.mode != "head" and self.evaluations:
            held += f", evaluated {self.evaluations} times"
        if self.max_turns is not None:
            share = f" ({self.token_share:.0%} of the tokens)" if self.token_share is not None else ""
            held += f"; dialogues cut to their last {self.max_turns} turn{'s' if self.max_turns > 1 else ''}{share}"
        planned = self.spent_s + sum(self.seconds.values())
        then = (f"; then the top {self.then_top_blocks} blocks from the head's solution if a pass fits in the time "
                "left, kept if better on the held-out sample" if self.then_top_blocks else "")
        return (f"plan: {self.mode} mode, {what}; {held}{then}; about {format_duration(planned)} of the "
                f"{format_duration(self.budget_s)} budget (everything would take about "
                f"{format_duration(self.needed_s)})")

    def refusal(self) -> str:
        """What to say when nothing useful fits: what this budget fits, and what would be needed."""
        return (f"a {format_duration(self.budget_s)} budget fits {self.train_comparisons:,} of "
                f"{self.train_comparisons_total:,} training comparisons in {self.mode} mode on this machine now, "
                f"too few to train on ({format_duration(self.spent_s)} already went to reading, loading and "
                f"measuring); all of them need about {format_duration(self.needed_s)}. Give a longer "
                f"--time-budget{', or try --mode head' if self.mode != 'head' else ''}")

    def to_dict(self) -> dict[str, Any]:
        keys = ("mode", "budget_s", "spent_s", "train_prompts", "train_prompts_total", "train_comparisons",
                "train_comparisons_total", "eval_prompts", "eval_prompts_total", "eval_comparisons",
                "eval_comparisons_total", "evaluations", "steps", "needed_s", "fits", "max_turns", "then_top_blocks")
        out = {k: getattr(self, k) for k in keys}
        out["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        out["max_turns"] = "all" if self.max_turns is None else self.max_turns
        return out


def mark_cut(plan: Plan, n: int | None, cut: list[EncodedGroup], whole: list[EncodedGroup] | None) -> Plan:
    """`plan` says it was made for the dialogues cut to their last `n` turns, and the share of the
    tokens (training and held-out) the cut keeps, when the whole dialogues' encodings are known."""
    plan.max_turns = n
    if n is not None and whole is not None:
        plan.token_share = sum(g.num_tokens for g in cut) / max(1, sum(g.num_tokens for g in whole))
    return plan


def choose_cut(turns: tuple[int | None, ...], plan_of) -> Plan:
    """The plan of the cut to train on: `plan_of(n)` plans the data cut to its last `n` turns, for each
    of `turns` (longest context first) until one covers every comparison. A shorter cut is taken only
    when it fits `CUT_GAIN` times the comparisons of the longer one: less is not worth the lost context.
    Candidates are planned lazily, so data that fits whole is never cut (nor encoded again)."""
    chosen = plan_of(turns[0])
    for n in turns[1:]:
        if chosen.covers_all:
            break
        plan = plan_of(n)
        if plan.train_comparisons > chosen.train_comparisons * CUT_GAIN:
            chosen = plan
    return chosen


def plan_run(config, encoded: list[EncodedGroup], encoded_eval: list[EncodedGroup], rates: Rates, *,
             spent_s: float, cached_train: set[int] = frozenset(), cached_eval: set[int] = frozenset()) -> Plan:
    """Size every phase of the run to what is left of `config.time_budget_s` (all of it without a budget).

    `spent_s` went before the plan; `cached_train` and `cached_eval` are the indices of groups whose
    trunk features are already cached (head mode: free). Random choices are seeded by `config.seed`.
    """
    rng = random.Random(config.seed)
    eval_order = _usable_order(encoded_eval, rng)
    train_order = _usable_order(encoded, rng)
    train_order.sort(key=lambda i: i not in cached_train)  # cached first (stable: random within each)
    if config.mode == "head":
        plan = _plan_head(config, encoded, encoded_eval, rates, spent_s, train_order, eval_order,
                          cached_train, cached_eval)
    else:
        plan = _plan_trunk(config, encoded, encoded_eval, rates, spent_s, train_order, eval_order)
    plan.rates = rates
    return plan


def _usable_order(encoded: list[EncodedGroup], rng: random.Random) -> list[int]:
    """Groups with at least one comparison, in a seeded random order."""
    order = [i for i, g in enumerate(encoded) if g.pairs()]
    rng.shuffle(order)
    return order


def _time_left(config, spent_s: float) -> float:
    return config.time_budget_s - spent_s - margin_seconds(config.time_budget_s)


def _take_while(order: list[int], cost: list[float], room: float, minimum: int = 0) -> list[int]:
    """The longest prefix of `order` whose costs add up to at most `room` (at least `minimum` items)."""
    taken, total = [], 0.0
    for i in order:
        if total + cost[i] > room and len(taken) >= minimum:
            break
        taken.append(i)
        total += cost[i]
    return taken


def _comparisons(encoded: list[EncodedGroup], indices: list[int]) -> int:
    return sum(len(encoded[i].pairs()) for i in indices)


def _plan_head(config, encoded, encoded_eval, rates, spent_s, train_order, eval_order, cached_train,
               cached_eval) -> Plan:
    """Head mode: the trunk runs once per prompt (features), the head trains on them in milliseconds."""
    forward = rates.forward_s_per_token
    train_cost = [0.0 if i in cached_train else g.num_tokens * forward for i, g in enumerate(encoded)]
    eval_cost = [0.0 if i in cached_eval else g.num_tokens * forward for i, g in enumerate(encoded_eval)]
    steps_all = math.ceil(len(train_order) / config.batch_size) * config.epochs
    head_s = steps_all * HEAD_STEP_S
    needed = spent_s + sum(train_cost) + sum(eval_cost) + head_s + rates.save_s
    if not config.time_budget_s:
        eval_pick, train_pick = eval_order, train_order
    else:
        left = _time_left(config, spent_s) - rates.save_s - head_s
        eval_pick = _sample_eval(eval_order, eval_cost, EVAL_SHARE * max(0.0, left), 1)
        left -= sum(eval_cost[i] for i in eval_pick)
        train_pick = _take_while(train_order, train_cost, left)
    steps = math.ceil(len(train_pick) / config.batch_size) * config.epochs
    seconds = {"features": sum(train_cost[i] for i in train_pick) + sum(eval_cost[i] for i in eval_pick),
               "training": steps * HEAD_STEP_S, "saving": rates.save_s}
    fits = len(train_pick) >= min(config.batch_size, len(train_order)) and bool(train_pick)
    return Plan("head", config.time_budget_s, spent_s, len(train_pick), len(train_order),
                _comparisons(encoded, train_pick), _comparisons(encoded, train_order), len(eval_pick),
                len(eval_order), _comparisons(encoded_eval, eval_pick), _comparisons(encoded_eval, eval_order),
                1 if eval_pick else 0, steps, seconds, needed, fits, train_order, eval_pick,
                covers_all=len(train_pick) == len(train_order))


def _sample_eval(order: list[int], cost: list[float], room: float, evaluations: int) -> list[int]:
    """The held-out sample whose `evaluations` passes fit in `room` seconds (none rather than a useless few)."""
    per_pass = room / max(1, evaluations)
    pick = _take_while(order, cost, per_pass)
    if len(pick) < min(MIN_EVAL_PROMPTS, len(order)):
        pick = _take_while(order, cost, per_pass, minimum=min(MIN_EVAL_PROMPTS, len(order)))
        if sum(cost[i] for i in pick) * evaluations > 2 * room:  # even a few would eat the training time
            return []
    return pick


def _plan_trunk(config, encoded, encoded_eval, rates, spent_s, train_order, eval_order) -> Plan:
    """lora and full: every step runs the trunk forward and backward; the steps are what the time allows."""
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    max_steps = steps_per_epoch * config.epochs
    mean_tokens = sum(g.num_tokens for g in encoded) / max(1, len(encoded))
    step_s = mean_tokens * config.batch_size * rates.train_s_per_token
    eval_cost = [g.num_tokens * rates.forward_s_per_token for g in encoded_eval]
    evaluations = 1 + config.epochs if eval_order else 0  # the untrained start, then each epoch's end
    needed = (spent_s + max_steps * step_s + evaluations * sum(eval_cost) + rates.save_s
              + (config.epochs - 1) * rates.checkpoint_s)
    if not config.time_budget_s:
        eval_pick, steps = eval_order, max_steps
    else:
        left = _time_left(config, spent_s) - rates.save_s
        steps = min(max_steps, int(max(0.0, (1 - EVAL_SHARE) * left) / max(step_s, 1e-9)))
        epochs_run = min(config.epochs, max(1, math.ceil(steps / max(1, steps_per_epoch))))
        evaluations = 1 + epochs_run if eval_order else 0  # a budget ends with an evaluation too
        eval_pick = _sample_eval(eval_order, eval_cost, EVAL_SHARE * max(0.0, left), evaluations)
        checkpoints = (epochs_run - 1) * rates.checkpoint_s
        spare = left - evaluations * sum(eval_cost[i] for i in eval_pick) - checkpoints
        steps = min(max_steps, int(max(0.0, spare) / max(step_s, 1e-9)))
        if steps == 0 and left >= step_s:  # one step is worth more than a held-out sample: shrink the sample
            eval_pick = _take_while(eval_pick, eval_cost, (left - step_s) / max(1, evaluations))
            steps = 1
    per_prompt = _comparisons(encoded, train_order) / max(1, len(encoded))
    seen = min(steps * config.batch_size, len(encoded) * config.epochs)
    evals_s = (evaluations if eval_pick else 0) * sum(eval_cost[i] for i in eval_pick)
    seconds = {"training": steps * step_s, "evaluation": evals_s, "saving": rates.save_s}
    return Plan(config.mode, config.time_budget_s, spent_s, min(seen, len(encoded)), len(encoded),
                round(seen * per_prompt), _comparisons(encoded, train_order), len(eval_pick), len(eval_order),
                _comparisons(encoded_eval, eval_pick), _comparisons(encoded_eval, eval_order),
                evaluations if eval_pick else 0, steps, seconds, needed, steps >= 1, train_order, eval_pick,
                covers_all=steps >= max_steps)


class StepBudget:
    """How many steps fit in what is left of a time budget, refitted after every step.

    Steps differ in cost (length-bucketed batches: short prompts together, long ones together), so
    the time of the steps to come is predicted from their tokens, at the seconds per token of the
    last steps measured: a run of long batches ahead is seen coming, and a machine that slows down
    shows in the rate at once. Evaluations and checkpoints are timed apart and kept time for.
    """

    def __init__(self, seconds: float, started_at: float, save_s: float):
        self.seconds = seconds
        self.started_at = started_at
        self.save_s = save_s
        self.step_times: list[float] = []
        self.step_tokens: list[int] = []
        self.evaluation_s = 0.0
        self.checkpoint_s = save_s
        self._overhead = 0.0

    @property
    def seconds_per_token(self) -> float:
        """Over the last 20 steps, leaving out the first (it includes one-time warm-up)."""
        first = 1 if len(self.step_times) > 1 else 0
        times, tokens = self.step_times[first:][-20:], self.step_tokens[first:][-20:]
        return sum(times) / max(1, sum(tokens)) if times else 0.0

    @property
    def mean_step_s(self) -> float:
        times = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        return sum(times[-20:]) / len(times[-20:]) if times else 0.0

    def record_iteration(self, seconds: float, tokens: int = 1) -> None:
        """One pass of the loop and its step's tokens; the evaluation and checkpoint inside are counted apart."""
        self.step_times.append(max(0.0, seconds - self._overhead))
        self.step_tokens.append(max(1, tokens))
        self._overhead = 0.0

    def record_evaluation(self, seconds: float) -> None:
        self.evaluation_s = seconds
        self._overhead += seconds

    def record_checkpoint(self, seconds: float) -> None:
        self.checkpoint_s = seconds
        self._overhead += seconds

    def steps_that_fit(self, step: int, max_steps: int, steps_per_epoch: int, evaluates: bool,
                       tokens_of_step=lambda k: 1) -> int:
        """The last step: as many as fit before the budget ends, keeping time for evaluating, saving, and
        the checkpoint and evaluation of every epoch end on the way. `tokens_of_step(k)` (1-based)."""
        if not self.step_times:
            return max_steps  # nothing measured yet: the first step tells
        left = self.seconds - (now() - self.started_at) - self.save_s
        left -= self.evaluation_s if evaluates else 0.0  # the final evaluation
        rate = self.seconds_per_token
        per_epoch_end = (self.evaluation_s if evaluates else 0.0) + self.checkpoint_s
        last = step
        while last < max_steps:
            cost = tokens_of_step(last + 1) * rate + (per_epoch_end if (last + 1) % steps_per_epoch == 0 else 0.0)
            if cost > left:
                break
            left -= cost
            last += 1
        return last


class Deadline:
    """The end of one phase: the phase stops at it, whatever the plan said (the machine may have slowed)."""

    def __init__(self, at: float | None):
        self.at = at  # a reading of `now()`, or None: no deadline (no budget)

    @classmethod
    def within(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else now() + max(0.0, seconds))

    def passed(self) -> bool:
        return self.at is not None and now() >= self.at

    def left(self) -> float | None:
        return None if self.at is None else self.at - now()


class PhaseTimes:
    """Seconds spent in each phase of a run (loading, tokenizing, probe, features, training, ...)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @classmethod
    def from_dict(cls, seconds: dict[str, float]) -> PhaseTimes:
        times = cls()
        times.seconds.update(seconds)
        return times

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + max(0.0, seconds)

    def timed(self, phase: str):
        return _Timed(self, phase)

    def describe(self) -> str:
        parts = [f"{name} {format_duration(s)}" for name, s in self.seconds.items() if s >= 0.05]
        return "phases: " + (", ".join(parts) if parts else "none")

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self.seconds.items()}


class _Timed:
    def __init__(self, times: PhaseTimes, phase: str):
        self.times, self.phase = times, phase

    def __enter__(self) -> _Timed:
        self.started = now()
        return self

    def __exit__(self, *exc) -> None:
        self.times.add(self.phase, now() - self.started)
