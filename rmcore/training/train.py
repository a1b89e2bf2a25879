"""Train a reward model on ranked groups with the Bradley-Terry loss, on accelerate.

`train()` reads top to bottom: (1) load the base model and add the reward neuron, (2) tokenize,
(3) set up the mode (head: a frozen trunk; lora; full) and, with a time budget, measure this
machine's speed and plan every phase (rmcore.training.budget), (4) head mode: compute the trunk
features (within the plan: a subset until its deadline, the rest of the time kept for the head, the
evaluation and the save), (5) optimizer, schedule and accelerate, continuing a checkpoint with
`resume`, (6) step through length-bucketed batches, evaluating on held-out prompts and
checkpointing when due, then under --mode auto the top blocks from the head's solution when a pass
fits, keeping the better held out (rmcore.training.auto), (7) save atomically. `_Run` holds the
state those steps share, one method per step, and the seconds each phase took.

`accelerate launch` runs the same code on several processes: each takes its share of every
epoch's batches (each batch goes to exactly one process) and DDP averages the gradients.
With a time budget the number of steps is fitted, after every step, to the time left, so the
schedule decays to zero and the run ends on time with a finished, evaluated model. A stop request
(the app's Stop, Ctrl-C, SIGTERM: rmcore.core.stop) is honoured in every phase at its next safe point.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast_object_list, set_seed

from rmcore import __version__
from rmcore.analysis.evaluate import length_baseline_of_groups
from rmcore.core.errors import TrainingError
from rmcore.core.folders import CHECKPOINT_DIR, check_output_folder, read_json_object
from rmcore.core.progress import format_duration
from rmcore.core.stop import StopSignal
from rmcore.data import RankedGroup
from rmcore.data.encoding import EncodedGroup, count_truncated, encode_last_turns
from rmcore.model.batching import ROW_TOKENS, length_bucketed_batches, pack_groups, split_by_tokens
from rmcore.model.device import autodetect_device
from rmcore.model.feature_cache import FeatureCache, group_key, model_key
from rmcore.model.reward_model import load_sequence_classifier, resolve_model_path, save_reward_model, unwrap_classifier
from rmcore.training.auto import HeadStage, top_blocks_may_follow, top_blocks_seconds, top_blocks_won
from rmcore.training.budget import (
    Deadline,
    PhaseTimes,
    Plan,
    Rates,
    StepBudget,
    choose_cut,
    margin_seconds,
    mark_cut,
    now,
    plan_run,
    save_seconds,
)
from rmcore.training.checkpoint import STATE_FILE, load_checkpoint, run_key, save_checkpoint
from rmcore.training.config import DEFAULT_LR, MODES, TrainConfig
from rmcore.training.estimate import probe_rates
from rmcore.training.features import FeaturesStopped, planned_features, response_offsets, trunk_features
from rmcore.training.held_out import held_out_metrics
from rmcore.training.loss import bradley_terry_loss, pair_index
from rmcore.training.lower_blocks import LowerBlocks
from rmcore.training.modes import classifier_to_save, decoder_blocks, setup_mode

__all__ = ["DEFAULT_LR", "MODES", "TrainConfig", "TrainResult", "train"]

StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    total_steps: int
    stopped: bool  # True when a stop request or Ctrl-C ended training early
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)  # last train and eval metrics
    is_main_process: bool = True  # False on the other ranks of an `accelerate launch` run
    groups_seen: list[int] = field(default_factory=list)  # training groups this process stepped on, in order
    phase_seconds: dict[str, float] = field(default_factory=dict)  # reading, loading, ..., training, saving
    plan: dict[str, Any] | None = None  # with a time budget: what the run planned (rmcore.training.budget.Plan)


def train(
    config: TrainConfig,
    train_groups: list[RankedGroup],
    out_dir: str | os.PathLike,
    *,
    eval_groups: list[RankedGroup] | None = None,
    on_step: StepCallback | None = None,
    stop_event: threading.Event | None = None,
    resume: bool = False,
    data_summary: dict[str, Any] | None = None,
    started_at: float | None = None,
    trunk=None,
) -> TrainResult:
    """Train and save a reward model to `out_dir`; see TrainConfig for the knobs.

    `on_step(event)` is called on the main process while preparing ("phase": text, progress,
    eta_s), after every step ("step": raw metrics), after every held-out evaluation ("eval") and
    once saved ("done"). Setting `stop_event`, or Ctrl-C, ends training at the next step boundary,
    saving a checkpoint and the model so far. `started_at` (time.monotonic()) is when the command
    began, so a time budget covers reading the data too. `trunk` (head mode; rmcore.training.ensemble.SharedTrunk)
    lends the base model, the trunk features and a cheaper save to the members of an ensemble.
    """
    config.check()
    out_dir = Path(out_dir)
    replacing = check_output_folder(out_dir, resume, read_folders=(config.model,))
    run = _Run(config, out_dir, on_step, started_at, trunk)
    if replacing:
        run.phase(f"{out_dir} holds a finished model; it is replaced when this run saves (files of yours are kept)")
    with StopSignal(stop_event, run.say_stopping) as stop:
        run.stop = stop
        # 1. the base model with one reward neuron
        run.load_model()
        # 2. tokens
        run.tokenize(train_groups, eval_groups or [], resume)
        # 3. the mode; with a time budget, a probe of this machine's speed and the plan of the whole run
        run.setup_mode()
        run.make_plan(resume)
        # 4. head mode: the trunk features (read from the cache, or computed within the plan)
        if not run.compute_features(stop):
            run.phase(run.stopped_before_training())
            return run.result(stopped=True)
        # 5. optimizer, schedule and accelerate; the checkpoint to continue from
        run.prepare(resume)
        # 6. the loop: one step, then the held-out evaluation and a checkpoint when due
        stopped = run.loop(stop)
        # --mode auto: the top blocks from the head's solution when a pass fits, kept if better held out
        if not stopped and run.top_blocks_fit():
            stopped = run.train_top_blocks(stop)
        # 7. save the model (LoRA merged: a plain HF folder) with what produced it
        run.save(stopped, data_summary)
    return run.result(stopped)


class _Run:
    """The state of one training run, shared by the steps of `train()`."""

    def __init__(self, config: TrainConfig, out_dir: Path, on_step: StepCallback | None,
                 started_at: float | None, trunk=None):

        self.device = autodetect_device()
        self.requested = config  # --mode auto: the head's settings first (config.head_first), then maybe the top blocks
        config = config.head_first(self.device)
        self.config = config
        self.out_dir = out_dir
        self.checkpoint = out_dir / CHECKPOINT_DIR
        self.emit = on_step or (lambda event: None)
        self.started_at = now() if started_at is None else started_at
        self.trunk = trunk if config.mode == "head" else None  # shared by an ensemble's members, or None
        self.accelerator = _accelerator(config.mixed_precision(self.device), self.device == "cpu")
        self.is_main = self.accelerator.is_main_process
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.last_train: dict[str, Any] = {}
        self.last_eval: dict[str, Any] | None = None
        self.groups_seen: list[int] = []
        self.features = self.eval_features = None
        self._batches_epoch, self._batches = -1, []
        self._step_tokens: dict[int, list[int]] = {}  # epoch -> tokens of each of its batches (the budget's forecast)
        self.times = PhaseTimes()  # seconds of each phase, for the end of the run and rmcore.json
        self.times.add("reading the data", now() - self.started_at)
        self.plan: Plan | None = None  # with a time budget: what the run will do (rmcore.training.budget)
        self.rates: Rates | None = None
        self.stopped_in = ""  # the phase a stop request ended, when it came before training
        self.stop: StopSignal | None = None
        self.top_config: TrainConfig | None = None  # --mode auto's second stage, where it may run
        self.head_stage: HeadStage | None = None  # set while the top blocks train
        self.auto: dict[str, Any] | None = None  # what --mode auto did, for rmcore.json
        self.step_offset = 0  # steps shown before this stage's (the head's, during the top blocks)
        set_seed(config.seed)
        if self.world > 1:
            self.phase(f"training on {self.world} processes ({self.device}), sharing out the batches; "
                       "gradients are averaged")

    def phase(self, text: str, progress: float | None = None, eta_s: float | None = None) -> None:
        if self.is_main:
            self.emit({"event": "phase", "phase": text, "progress": progress, "eta_s": eta_s})

    def say_stopping(self) -> None:
        self.phase("stopping at the next safe point (the end of this step or batch), then saving a checkpoint "
                   "and the model so far (press Ctrl-C again to quit at once, keeping only the last checkpoint)")

    # -- 1, 2: model and tokens
    def load_model(self) -> None:
        self.phase("loading the base model")
        with self.times.timed("loading"):
            self._load_model()

    def _load_model(self) -> None:
        self.model_path, self.model_name = resolve_model_path(self.config.model)
        if self.trunk is not None:  # an ensemble member: the base model is loaded once for all of them
            self.classifier, self.tokenizer = self.trunk.model_for(self.model_path, self.config.seed)
        else:
            self.classifier, self.tokenizer, _ = load_sequence_classifier(self.model_path, seed=self.config.seed)
        self.pad_id = self.tokenizer.pad_token_id

    def tokenize(self, train_groups: list[RankedGroup], eval_groups: list[RankedGroup], resume: bool) -> None:
        self.phase("tokenizing")
        with self.times.timed("tokenizing"):
            self._tokenize(train_groups, eval_groups, resume)

    def _tokenize(self, train_groups: list[RankedGroup], eval_groups: list[RankedGroup], resume: bool) -> None:
        """The data at the first cut the run may train on (the whole dialogues unless --max-turns N says
        otherwise, or the checkpoint to resume was trained on a cut)."""
        self.whole_groups = (train_groups, eval_groups)
        self.cuts: dict[int | None, tuple] = {}  # max_turns -> (train, held-out, encoded, encoded held-out)
        self.turns = self._checkpoint_turns(resume) or self.config.turns_to_try()
        self._use_cut(self.turns[0])
        if not any(g.pairs() for g in self.encoded):
            raise TrainingError("the training data has no comparison (every group is tied or unranked)")

    def _checkpoint_turns(self, resume: bool) -> tuple[int | None] | None:
        """--max-turns auto on --resume: the cut the checkpoint was trained on (another would be other data)."""
        state_file = self.checkpoint / STATE_FILE
        if not resume or self.config.max_turns != "auto" or not state_file.is_file():
            return None
        state = read_json_object(state_file)
        return (state["max_turns"],) if "max_turns" in state else None

    def _use_cut(self, n: int | None) -> None:
        """Train and evaluate on the dialogues cut to their last `n` turns (encoded once per cut)."""
        if n not in self.cuts:
            whole = self.cuts.get(None)
            train, encoded = encode_last_turns(self.tokenizer, self.whole_groups[0], n, self.config.max_length,
                                               whole and whole[2])
            held, encoded_eval = encode_last_turns(self.tokenizer, self.whole_groups[1], n, self.config.max_length,
                                                   whole and whole[3])
            self.cuts[n] = (train, held, encoded, encoded_eval)
        self.max_turns = n
        _, self.eval_groups, self.encoded, self.encoded_eval = self.cuts[n]
        self.truncated = count_truncated(self.encoded + self.encoded_eval)
        self.lengths = [g.num_tokens for g in self.encoded]

    # -- 3: the mode, the probe and the plan
    def setup_mode(self) -> None:
        """Freeze or wrap the model for the mode (head: a frozen trunk whose features are computed once)."""
        self.packed, self.trainable = setup_mode(self.config, self.classifier)
        self.packed.to(self.accelerator.device)
        self.top_config = self._second_stage_config()
        # top-N training: frozen blocks run once (--mode auto: kept from the head's features pass)
        self.lower = LowerBlocks.for_run(self.top_config or self.config, self.packed)

    def make_plan(self, resume: bool) -> None:
        """With a time budget: measure this machine's speed now and plan every phase to fit (one line says
        how); refuse at once when not even one batch of comparisons fits. Without one: everything."""
        if not self.config.time_budget_s:
            return
        with self.times.timed("measuring speed"):
            self.rates = self._probe()
        self.plan = self._agree_on_cut(choose_cut(self.turns, self._plan_of))
        self._use_cut(self.plan.max_turns)
        if resume:
            self._keep_the_checkpoints_prompts()
        if self.top_config is not None:  # --mode auto
            if self.plan.eval_prompts_total and self._top_blocks_may_follow():
                self.plan.then_top_blocks = self.top_config.trainable_layers
            else:
                self.lower = None  # no pass of the top blocks will use kept hidden states: keep none
        self.phase(self.plan.describe())
        if not self.plan.fits:
            raise TrainingError(self.plan.refusal())
        if self.config.mode != "head":  # head mode takes its held-out sample with the features
            self._keep_eval(self.plan.eval_indices)

    def _plan_of(self, n: int | None) -> Plan:
        """The plan of a run on the dialogues cut to their last `n` turns (tokenized here if new)."""
        with self.times.timed("tokenizing") if n not in self.cuts else contextlib.nullcontext():
            self._use_cut(n)
        cached_train, cached_eval = self._cached_groups()
        plan = plan_run(self.config, self.encoded, self.encoded_eval, self.rates, spent_s=now() - self.started_at,
                        cached_train=cached_train, cached_eval=cached_eval)
        whole = self.cuts.get(None)
        return mark_cut(plan, n, self.encoded + self.encoded_eval, whole and whole[2] + whole[3])

    def _agree_on_cut(self, plan: Plan) -> Plan:
        """Several processes train on one cut: the main process's (their probes may differ a little)."""
        if self.world == 1:
            return plan
        chosen = broadcast_object_list([plan.max_turns])[0]
        return plan if chosen == plan.max_turns else self._plan_of(chosen)

    def _probe(self) -> Rates:
        parameters = sum(p.numel() for p in self.classifier.parameters())
        trainable = sum(p.numel() for p in self.trainable.parameters() if p.requires_grad)
        forward, train = probe_rates(self.config, self.packed, self.trainable, self.encoded, self.pad_id,
                                     self.accelerator)
        return Rates(forward, train, save_seconds(parameters), save_seconds(3 * trainable))

    def _cached_groups(self) -> tuple[set[int], set[int]]:
        """Indices of the training and held-out groups whose trunk features are cached (head mode: free)."""
        if self.config.mode != "head" or not self.config.cache_features:
            return set(), set()
        keys = FeatureCache.for_model(self.model_path, self.accelerator.mixed_precision).cached_keys()
        return ({i for i, g in enumerate(self.encoded) if group_key(g) in keys},
                {i for i, g in enumerate(self.encoded_eval) if group_key(g) in keys})

    def _keep_the_checkpoints_prompts(self) -> None:
        """A resumed head-mode run trains on the prompts its checkpoint was trained on, whatever the plan."""
        state_file = self.checkpoint / STATE_FILE
        keys = read_json_object(state_file).get("train_keys") if state_file.is_file() else None
        if self.config.mode == "head" and isinstance(keys, list):
            wanted = set(keys)
            order = [i for i, g in enumerate(self.encoded) if group_key(g) in wanted]
            self.plan.feature_order, self.plan.train_prompts = order, len(order)
            self.resumed_keys = True

    def _keep_eval(self, indices: list[int]) -> None:
        self.encoded_eval = [self.encoded_eval[i] for i in indices]
        self.eval_groups = [self.eval_groups[i] for i in indices]

    def _keep_train(self, indices: list[int]) -> None:
        self.encoded = [self.encoded[i] for i in indices]
        self.lengths = [g.num_tokens for g in self.encoded]

    # -- 4: head mode's trunk features
    def compute_features(self, stop: StopSignal) -> bool:
        """Head mode: the trunk features of every group (planned: of those the budget allows); False when
        a stop request came first (what was computed stays in the feature cache)."""
        if self.config.mode != "head":
            return True
        try:
            with self.times.timed("features"):
                if self.plan is None or self.trunk is not None or self.world > 1:
                    self._all_features(stop)
                else:
                    self._planned_features(stop)
        except FeaturesStopped as exc:
            self.stopped_in = f"while computing trunk features ({exc.done} of {exc.total} prompts, kept in the cache)"
            return False
        self.offsets = response_offsets(self.encoded)
        return True

    def _all_features(self, stop: StopSignal) -> None:
        args = (self.config, self.model_path, self.packed, self.encoded, self.encoded_eval, self.pad_id,
                self.accelerator, self.phase, stop.is_set)
        if self.trunk is not None:  # an ensemble's member: head mode only, nothing to keep for top blocks
            self.features, self.eval_features = self.trunk.features(*args)
        else:
            self.features, self.eval_features = trunk_features(*args, lower=self.lower)

    def _planned_features(self, stop: StopSignal) -> None:
        reserve = (self.rates.save_s + self.plan.seconds.get("training", 0.0)
                   + margin_seconds(self.config.time_budget_s))
        exact = getattr(self, "resumed_keys", False)  # a resumed run needs exactly its checkpoint's prompts
        deadline = Deadline(None if exact else self.started_at + self.config.time_budget_s - reserve)
        planned = planned_features(self.config, self.model_path, self.packed, self.encoded, self.encoded_eval,
                                   self.plan, deadline, self.pad_id, self.accelerator, self.phase, stop.is_set,
                                   lower=self.lower)
        self._keep_train(planned.train_kept)
        self._keep_eval(planned.eval_kept)
        self.features, self.eval_features = planned.train, planned.eval

    def stopped_before_training(self) -> str:
        where = self.stopped_in or "before training started"
        return f"stopped {where}; nothing was trained or saved"

    # -- 4: optimizer, schedule, accelerate, resume
    def prepare(self, resume: bool) -> None:
        config, accelerator = self.config, self.accelerator
        self.params = [p for p in self.trainable.parameters() if p.requires_grad]
        # The fused kernel is the same AdamW in one pass over the weights (5x faster than foreach on a CPU).
        fused = accelerator.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in self.params)
        optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate(), weight_decay=config.weight_decay,
                                      fused=fused or None)
        self.steps_per_epoch = math.ceil(math.ceil(len(self.encoded) / config.batch_size) / self.world)
        self.max_steps = self.steps_per_epoch * config.epochs
        self.schedule = _LinearSchedule(config.warmup_ratio, self.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        # accelerate: DDP wrapper and device placement (the scheduler steps once per step, by us)
        self.module, self.optimizer = accelerator.prepare(self.trainable, optimizer)
        if self.features is not None:
            self.features = self.features.to(accelerator.device)
            if self.eval_features is not None:
                self.eval_features = self.eval_features.to(accelerator.device)
        self.max_tokens = config.max_tokens or _tokens_per_forward(unwrap_classifier(self.classifier).config,
                                                                   accelerator.device)
        self.run_key = run_key(config, self.model_path, self.encoded)
        if resume and (self.checkpoint / STATE_FILE).is_file():
            state, saved = load_checkpoint(self.checkpoint, accelerator.unwrap_model(self.module), self.run_key,
                                           "model, data or options; resume with the same ones (only --epochs "
                                           "and --time-budget may change)")
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.step, self.history = int(state["step"]), list(state.get("history", []))
            self._set_total_steps(self.max_steps)  # --epochs may differ from the checkpoint's run
            self.phase(f"resumed from step {self.step}")
        save_s = self.rates.save_s if self.rates else save_seconds(sum(p.numel() for p in self.classifier.parameters()))
        self.budget = StepBudget(config.time_budget_s, self.started_at,
                                 save_s + margin_seconds(config.time_budget_s))

    # -- 5: the loop
    def loop(self, stop: StopSignal) -> bool:
        """Train until the last step; True when a stop request ended it early."""
        started = now()
        try:
            return self._loop(stop)
        finally:
            inside = sum(self.times.seconds.get(k, 0.0) for k in ("evaluation", "checkpoints"))
            self.times.add("training", now() - started - (inside - self._outside_loop))

    def _loop(self, stop: StopSignal) -> bool:
        self._outside_loop = sum(self.times.seconds.get(k, 0.0) for k in ("evaluation", "checkpoints"))
        if self.step == 0 and self.encoded_eval and self.head_stage is None:
            self.evaluate()  # the untrained baseline, so curves start where training starts (the top blocks
            # start from the head's solution, whose evaluation is the last one)
        self.module.train()
        self._fit_to_budget()
        mark = now()
        try:
            while self.step < self.schedule.total_steps:
                self.train_one_step()
                end_of_epoch = self.step % self.steps_per_epoch == 0
                if _due(self.step, self.config.eval_every) or end_of_epoch:
                    self.evaluate()
                    self.module.train()
                if _due(self.step, self.config.checkpoint_every) or (end_of_epoch and self.step < self.max_steps):
                    self.save_checkpoint()
                moment = now()
                # everything a step costs, evaluations and checkpoints kept apart
                self.budget.record_iteration(moment - mark, self._tokens_of_step(self.step))
                mark = moment
                self._fit_to_budget()
                if self.step < self.schedule.total_steps and self._any_process(stop.is_set()):
                    self.phase(f"stopped at step {self.step}" + ("; saving a checkpoint" if self.head_stage is None
                                                                 else " of the top blocks"))
                    self.save_checkpoint()
                    return True
        except torch.OutOfMemoryError:
            config = self.config
            raise TrainingError(
                f"out of memory at batch size {config.batch_size} and max length {config.max_length}; try "
                f"--batch-size {max(1, config.batch_size // 2)} or --max-length {max(16, config.max_length // 2)}"
            ) from None
        if self.encoded_eval and (self.last_eval or {}).get("step") != self.shown_step:
            self.evaluate()  # a budget can end the run between two epoch ends
        return False

    def train_one_step(self) -> None:
        batch_groups, weight = self._share_of_step()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step trains at
        started = now()
        stats, tokens, padded = self._forward_backward(batch_groups, weight)
        if self.config.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if weight:
            self.groups_seen.extend(batch_groups)
        step_time = now() - started
        stats = _mean_across_processes(self.accelerator, stats, weight)
        elapsed = now() - self.started_at
        self.last_train = {
            "event": "step", "step": self.shown_step, "total_steps": self.shown_total,
            "epoch": self.step / self.steps_per_epoch, **stats, "lr": lr,
            "tokens_per_s": tokens * self.world / step_time if step_time > 0 else 0.0,
            "padded_tokens": padded,
            "comparisons_per_s": stats["comparisons"] * self.world / step_time if step_time > 0 else 0.0,
            "progress": self.step / self.schedule.total_steps, "elapsed_s": elapsed,
            "eta_s": (self.budget.mean_step_s or step_time) * (self.schedule.total_steps - self.step),
        }
        if self.is_main:
            self.history.append(self.last_train)
            self.emit(self.last_train)

    def _share_of_step(self) -> tuple[list[int], float]:
        """This process's batch at the current step, and the weight of its loss.

        Every batch of an epoch goes to exactly one process. When the batches do not split evenly,
        a process left without one at the epoch's last step runs batch 0 with weight 0 (DDP needs
        every process in the backward pass), and the others' losses are scaled so the averaged
        gradient is the mean over the real batches only.
        """
        epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
        if epoch != self._batches_epoch:  # the order is fixed by (seed, epoch): built once per epoch
            self._batches_epoch = epoch
            self._batches = length_bucketed_batches(self.lengths, self.config.batch_size, self.config.seed, epoch)
        first = in_epoch * self.world
        real = min(self.world, len(self._batches) - first)
        if self.rank >= real:
            return self._batches[0], 0.0
        return self._batches[first + self.rank], self.world / real

    def _tokens_of_step(self, step: int) -> int:
        """Tokens of the batch of `step` (1-based) on this process: what its time is predicted from."""
        epoch, in_epoch = divmod(step - 1, self.steps_per_epoch)
        if epoch not in self._step_tokens:  # the order is fixed by (seed, epoch), as in _share_of_step
            batches = length_bucketed_batches(self.lengths, self.config.batch_size, self.config.seed, epoch)
            self._step_tokens = {epoch: [sum(self.lengths[i] for i in batch) for batch in batches]}
        tokens = self._step_tokens[epoch]
        return tokens[min(len(tokens) - 1, in_epoch * self.world + self.rank)]

    def _forward(self, group_indices: list[int]) -> tuple[torch.Tensor, list[EncodedGroup], int, int]:
        """Rewards of the groups' responses, the groups, their real tokens and padded tokens."""
        groups = [self.encoded[i] for i in group_indices]
        if self.features is not None:
            rows = [self.offsets[i] + k for i in group_indices for k in range(len(self.encoded[i].response_ids))]
            index = torch.tensor(rows, device=self.accelerator.device)
            rewards = self.module(self.features[index]).squeeze(-1).float()
            return rewards, groups, sum(g.num_tokens for g in groups), 0
        row_tokens = ROW_TOKENS if self.lower is None else None  # kept hidden states are a row per group
        batch = pack_groups(groups, self.pad_id, row_tokens=row_tokens).to(self.accelerator.device)
        rewards = self.lower.forward(self.module, batch, groups) if self.lower is not None else self.module(batch)
        return rewards, groups, batch.real_tokens, batch.input_ids.numel()

    def _forward_backward(self, batch_groups: list[int], weight: float) -> tuple[dict[str, Any], int, int]:
        """Forward and backward over one batch, in micro-batches of at most `max_tokens` padded tokens.

        Each part's loss is scaled so the parts add up to the whole batch's loss (a mean over its
        prompts of the mean over each prompt's pairs), hence the same gradients, within float error.
        """
        config, accelerator = self.config, self.accelerator
        parts = ([batch_groups] if self.features is not None
                 else split_by_tokens(batch_groups, self.lengths, self.max_tokens))
        whole = [self.encoded[i] for i in batch_groups]
        usable = max(1, sum(1 for g in whole if g.pairs()))
        responses = sum(len(g.response_ids) for g in whole)
        loss_total, tokens, padded, all_rewards, part_stats = 0.0, 0, 0, [], []
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(self.module), accelerator.autocast():
                rewards, groups, part_tokens, part_padded = self._forward(part)
                pairs = pair_index(groups).to(accelerator.device)
                whole_batch = {} if len(parts) == 1 else {"batch_prompts": usable, "batch_responses": responses}
                loss, stats = bradley_terry_loss(rewards, pairs, config.center_coefficient, **whole_batch)
                self._check_finite(loss)
                accelerator.backward(loss * weight)
            loss_total += float(loss.detach())
            tokens += part_tokens
            padded += part_padded
            all_rewards.append(rewards.detach().float())
            part_stats.append(stats)
        if len(parts) == 1:
            return part_stats[0], tokens, padded
        return _merge_stats(part_stats, torch.cat(all_rewards), loss_total), tokens, padded

    def _check_finite(self, loss: torch.Tensor) -> None:
        if torch.isfinite(loss.detach()):
            return
        kept = (f"the last good checkpoint ({self.checkpoint}) is kept" if (self.checkpoint / STATE_FILE).is_file()
                else "nothing was saved")
        raise TrainingError(f"the loss became {loss.item()} at step {self.step + 1}; training stopped and {kept}. "
                            f"Try a lower learning rate (--lr {self.config.learning_rate() / 10:g}).")

    def evaluate(self) -> None:
        """Held-out loss, accuracy and margin at the current step (main process only); under a budget it
        ends at its deadline, and a stop request ends it early too (the partial result says so)."""
        if not self.encoded_eval or not self.is_main:
            return
        started = now()
        with self.times.timed("evaluation"):
            metrics = held_out_metrics(self.accelerator, self.module, self.encoded_eval, self.eval_features,
                                       self.pad_id, self.config.batch_size, self._evaluation_deadline(),
                                       self.stop.is_set, lower=self.lower)
        metrics.update(event="eval", step=self.shown_step, total_steps=self.shown_total,
                       epoch=self.step / self.steps_per_epoch)
        self.budget.record_evaluation(now() - started)
        self.last_eval = metrics
        self.history.append(metrics)
        self.emit(metrics)
        if metrics.get("eval_partial") and not self.stop.is_set():
            self._shrink_evaluation(metrics["eval_prompts_scored"])

    def _evaluation_deadline(self) -> Deadline | None:
        """Under a budget: twice the evaluation's planned share, and never into the time kept for saving."""
        if self.plan is None or self.features is not None:
            return None  # head mode: an evaluation reads cached features, milliseconds
        planned = self.plan.seconds.get("evaluation", 0.0) / max(1, self.plan.evaluations)
        if self.head_stage is not None:  # the top blocks after the head: their own estimate
            planned = self._top_blocks_seconds()[1]
        end = self.started_at + self.config.time_budget_s - self.budget.save_s
        return Deadline(min(now() + 2 * planned + 1.0, end))

    def _shrink_evaluation(self, scored: int) -> None:
        """An evaluation that ran out of time: later ones score only the prompts it managed, and say so."""
        self.phase(f"the held-out evaluation took longer than planned (the machine is slower than measured): "
                   f"later evaluations score {scored} of its {len(self.encoded_eval)} prompts")
        self._keep_eval(list(range(scored)))

    def save_checkpoint(self) -> None:
        if self.head_stage is not None:
            return  # the top blocks of --mode auto: a stop keeps the head, nothing to resume
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if self.is_main:
            started = now()
            state = {"step": self.step, "run_key": self.run_key, "history": self.history,
                     "max_turns": self.max_turns}
            if self.plan is not None and self.config.mode == "head":  # a resumed run keeps these prompts
                state["train_keys"] = [group_key(g) for g in self.encoded]
            save_checkpoint(self.checkpoint, accelerator.unwrap_model(self.module), state,
                            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()})
            self.budget.record_checkpoint(now() - started)
            self.times.add("checkpoints", now() - started)
        accelerator.wait_for_everyone()

    def _fit_to_budget(self) -> None:
        """With a time budget, set the last step to what the time left allows (never past `max_steps`)."""
        if not self.budget.seconds:
            return
        fitted = self.budget.steps_that_fit(self.step, self.max_steps, self.steps_per_epoch, bool(self.encoded_eval),
                                            self._tokens_of_step)
        planned = self.plan.steps if self.plan is not None and self.plan.mode == self.config.mode else 0
        if self.step == 0 and not self.budget.step_times and planned:
            # Before a step is timed, the plan's steps (from the probe), not every epoch's: the warm-up and the
            # first rates are then those of a run this long, and the progress bar starts at a likely total
            fitted = min(fitted, planned)
        fitted = int(self._agree_across_processes(fitted))
        current = self.schedule.total_steps
        # Fewer steps at once (the run must end on time); more only for a gain of two or more, so
        # noise in the step times does not move the end of the schedule back and forth.
        if fitted < current or fitted > current + 1:
            self._set_total_steps(fitted)

    def _set_total_steps(self, total: int) -> None:
        """Move the schedule's last step, and set the coming step's learning rate from the new schedule.

        The scheduler computes a step's rate at the end of the step before, from the total it knew then:
        without this, a run whose total grows at its last step would train one more step at rate 0.
        """
        self.schedule.total_steps = total
        factor = self.schedule(self.scheduler.last_epoch)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor

    def _any_process(self, flag: bool) -> bool:
        """True when `flag` is set on any process (all must stop at the same step, or DDP hangs)."""
        if self.world == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def _agree_across_processes(self, value: int) -> int:
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], device=self.accelerator.device)
        return int(self.accelerator.reduce(tensor, reduction="sum").item() // self.world)

    # -- 6: save
    def save(self, stopped: bool, data_summary: dict[str, Any] | None) -> None:
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        if self.is_main:
            self.phase("saving the model")
            with self.times.timed("saving"):
                self._save(stopped, data_summary)
            self.emit({"event": "done", "step": self.shown_step, "total_steps": self.shown_total,
                       "stopped": stopped, "out_dir": str(self.out_dir), "phase_seconds": self.times.to_dict()})
        accelerator.wait_for_everyone()

    def _save(self, stopped: bool, data_summary: dict[str, Any] | None) -> None:
        classifier_out = classifier_to_save(self.config, self.packed)
        history_text = "".join(_json_line(h) for h in self.history)
        metadata = self._metadata(stopped, data_summary)
        save = self.trunk.save if self.trunk is not None else save_reward_model
        save(classifier_out.float(), self.tokenizer, self.out_dir, metadata,
             extra_files={"metrics.jsonl": history_text}, keep=(CHECKPOINT_DIR,) if stopped else (),
             on_note=self.phase)

    def _metadata(self, stopped: bool, data_summary: dict[str, Any] | None) -> dict[str, Any]:
        config = self.config
        encoded, encoded_eval = self.encoded, self.encoded_eval
        return {
            "rmcore_version": __version__,
            "base_model": self.model_name,
            "mode": config.mode,
            "max_turns": "all" if self.max_turns is None else self.max_turns,  # the dialogues it was trained on
            "precision": self.accelerator.mixed_precision,  # what autocast ran at: "bf16" or "no" (float32)
            "config": {**asdict(config), "lora_alpha": config.lora_scaling_alpha()},
            # head mode: the trunk is the base model's, so evaluation can reuse these trunk features
            "feature_cache": model_key(self.model_path, self.accelerator.mixed_precision)
            if config.mode == "head" else None,
            "data": {**(data_summary or {}), "train_prompts": len(encoded), "eval_prompts": len(encoded_eval),
                     "train_comparisons": sum(len(g.pairs()) for g in encoded),
                     "truncated_prompts": self.truncated[0], "truncated_responses": self.truncated[1],
                     # "the longer answer wins" on the same held-out pairs, for the model card
                     "eval_length_baseline": _length_baseline(self.eval_groups)},
            "metrics": self.final(),
            "steps": self.shown_step,
            "total_steps": self.shown_total,
            "auto": self.auto,  # --mode auto: what each stage scored and which was kept
            "stopped": stopped,
            "time_budget_s": config.time_budget_s or None,
            "plan": self.plan.to_dict() if self.plan else None,
            "phase_seconds": self.times.to_dict(),  # up to the save, which comes after this is written
            "elapsed_s": round(now() - self.started_at, 1),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    # -- 6b: --mode auto's second stage (rmcore.training.auto)
    @property
    def shown_step(self) -> int:
        return self.step_offset + self.step

    @property
    def shown_total(self) -> int:
        return self.step_offset + self.schedule.total_steps

    def _second_stage_config(self) -> TrainConfig | None:
        """The top blocks --mode auto may train after the head: with a time budget, on one process."""
        if self.requested.mode != "auto" or not self.config.time_budget_s or self.world > 1 or self.trunk is not None:
            return None
        try:
            blocks = len(decoder_blocks(self.classifier))
        except TrainingError:
            return None  # a trunk whose blocks are not found: head mode only
        top = self.requested.top_blocks()
        return replace(top, trainable_layers=min(top.trainable_layers, blocks))

    def _top_blocks_seconds(self) -> tuple[float, float]:
        """Seconds of one training pass of the top blocks and of one held-out evaluation, from the probe."""
        share = self.top_config.trainable_layers / len(decoder_blocks(self.classifier))
        kept = self.lower.has if self.lower is not None else (lambda group: False)
        forward = self.rates.forward_s_per_token
        return (top_blocks_seconds(self.encoded, forward, share, kept, training=True),
                top_blocks_seconds(self.encoded_eval, forward, share, kept, training=False))

    def _top_blocks_may_follow(self) -> bool:
        share = self.top_config.trainable_layers / len(decoder_blocks(self.classifier))
        return top_blocks_may_follow(self.plan, self.encoded, self.encoded_eval, share,
                                     margin_seconds(self.config.time_budget_s))

    def top_blocks_fit(self) -> bool:
        """--mode auto after the head: whether a pass of the top blocks and an evaluation fit in the time left."""
        if self.top_config is None or not self.plan or not (self.last_eval or {}).get("eval_comparisons"):
            if self.top_config is not None:
                self.auto = {"kept": "head", "why": "no held-out sample to compare the top blocks on"}
            return False
        pass_s, eval_s = self._top_blocks_seconds()
        left = (self.config.time_budget_s - (now() - self.started_at) - self.rates.save_s
                - margin_seconds(self.config.time_budget_s))
        if pass_s + eval_s <= left:
            return True
        self.auto = {"kept": "head", "why": f"a pass of the top {self.top_config.trainable_layers} blocks and an "
                     f"evaluation need about {format_duration(pass_s + eval_s)}; {format_duration(max(0.0, left))} "
                     "was left"}
        self.phase(f"auto: head mode only ({self.auto['why']})")
        return False

    def train_top_blocks(self, stop: StopSignal) -> bool:
        """Full mode on the top blocks from the head's solution, then the better of the two is kept."""
        head_config, head_features = self.config, self.features
        self.phase(f"auto: head mode done (held-out accuracy {self.last_eval['eval_accuracy']:.3f}); now the top "
                   f"{self.top_config.trainable_layers} blocks from the head's solution, kept if better held out")
        self.config, self.features, self.eval_features = self.top_config, None, None
        self.packed, self.trainable = setup_mode(self.config, self.classifier)
        self.packed.to(self.accelerator.device)
        self.head_stage = HeadStage.of(self.classifier, self.last_eval, self.last_train, self.step, self.schedule)
        self.step_offset, self.step = self.step, 0
        self.prepare(resume=False)
        self.budget.evaluation_s = self._top_blocks_seconds()[1]  # reserved before the first evaluation
        try:
            stopped = self.loop(stop)
            won, why = top_blocks_won(self.head_stage.eval, self.last_eval, stopped)
        except TrainingError as exc:  # a loss that became non-finite, or out of memory: the head stands
            won, why = False, f"the top blocks failed ({exc}), so the head is kept"
        self.auto = {"kept": "top blocks" if won else "head", "why": why,
                     "top_blocks": self.config.trainable_layers, "head_eval": self.head_stage.eval,
                     "top_blocks_eval": self.last_eval, "top_blocks_steps": self.step}
        if not won:
            self._back_to_the_head(head_config, head_features)
        self.phase(f"auto: {why}")
        return False

    def _back_to_the_head(self, head_config: TrainConfig, head_features) -> None:
        head = self.head_stage
        head.restore(self.classifier)
        self.config, self.features = head_config, head_features
        self.last_eval, self.last_train = head.eval, head.train
        self.step, self.step_offset, self.schedule = head.steps, 0, head.schedule

    def final(self) -> dict[str, Any]:
        return {"train": {k: v for k, v in self.last_train.items() if k != "event"}, "eval": self.last_eval}

    def result(self, stopped: bool) -> TrainResult:
        total = self.shown_total if getattr(self, "schedule", None) else 0
        return TrainResult(self.out_dir, self.shown_step, total, stopped, self.history,
                           self.final() if self.last_train or self.last_eval else {}, self.is_main,
                           self.groups_seen, self.times.to_dict(), self.plan.to_dict() if self.plan else None)


# ----------------------------------------------------------------------------- the schedule


class _LinearSchedule:
    """Learning-rate factor: linear warm-up over `warmup_ratio` of the steps, then linear decay to 0.

    `total_steps` may change while training (a time budget refits it after every step); the
    factor of each step is computed from its current value, so the decay still ends at the last step.
    """

    def __init__(self, warmup_ratio: float, total_steps: int):
        self.warmup_ratio = warmup_ratio
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        warmup = int(self.warmup_ratio * self.total_steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))


def _accelerator(mixed_precision: str, cpu: bool) -> Accelerator:
    """accelerate's Accelerator at this run's precision. Its state is one per process, so a process that
    trains twice at two precisions (the app, a benchmark beside TRL) starts the second from a fresh
    state; several processes (`accelerate launch`) all run at the precision they were launched with."""
    try:
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    except ValueError:
        if PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()  # accelerate's own reset (its tests use it); one process: nothing shared
        return Accelerator(mixed_precision=mixed_precision, cpu=cpu)




def _due(step: int, every: int) -> bool:
    return bool(every) and step % every == 0


# ----------------------------------------------------------------------------- helpers


def _tokens_per_forward(model_config, device) -> int:
    """Padded tokens per forward pass whose saved activations fit a share of the device's memory.

    Backward keeps ~16 hidden-size and ~4 intermediate-size float32 vectors per token and layer
    (about 1.8 MB a token for SmolLM2-135M): a quarter of RAM on the CPU, 40% of a GPU.
    """
    layers = getattr(model_config, "num_hidden_layers", 12)
    hidden = getattr(model_config, "hidden_size", 768)
    intermediate = getattr(model_config, "intermediate_size", None) or 4 * hidden
    per_token = layers * (16 * hidden + 4 * intermediate) * 4
    device = torch.device(device)
    if device.type == "cuda":
        budget = 0.4 * torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            budget = 0.25 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            budget = 4 * 2**30
    return max(256, int(budget // per_token))


def _merge_stats(parts: list[dict[str, float]], rewards: torch.Tensor, loss: float) -> dict[str, float]:
    """One batch's metrics from its micro-batches' (accuracy and margin weighted by comparisons)."""
    comparisons = sum(p["comparisons"] for p in parts)

    def weighted(key: str) -> float:
        if not comparisons:
            return float("nan")
        return sum(p[key] * p["comparisons"] for p in parts if p["comparisons"]) / comparisons

    return {
        "loss": loss,
        "accuracy": weighted("accuracy"),
        "margin": weighted("margin"),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "comparisons": comparisons,
    }


def _mean_across_processes(accelerator, stats: dict[str, float], weight: float) -> dict[str, float]:
    """Each process's step metrics averaged over the processes that had a real batch (weight > 0)."""
    if accelerator.num_processes == 1:
        return stats
    keys = sorted(stats)
    real = 1.0 if weight else 0.0
    values = torch.tensor([float(stats[k]) * real for k in keys] + [real], device=accelerator.device)
    values = accelerator.reduce(values, reduction="sum")
    count = max(1.0, float(values[-1]))
    out = {k: float(v) / count for k, v in zip(keys, values[:-1].tolist())}
    out["comparisons"] = int(round(float(values[keys.index("comparisons")])))  # a total, not a mean
    return out


def _length_baseline(groups: list[RankedGroup]) -> float | None:
    return length_baseline_of_groups(groups)["accuracy"] if groups else None


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record) + "\n"
