"""The run contract of a policy run, once: rejection sampling and GRPO subclass `PolicyRun` and say only
what differs (how they prepare, train, checkpoint and resume).

`PolicyRun.run` reads top to bottom, as rmcore.training.train.train does:
  0. refuse an output folder where saving would lose something, and a reward-model folder that is none;
  1. load the models: the policy, the proxy reward model, the gold judge (`load_models`);
  2. where we are: a fresh state, or a stopped run's checkpoint, refused if another run made it (`restore`);
  3. the method's own set-up (`prepare`);
  4. the starting policy on the held-out prompts, training (`train`), and on a stop a checkpoint
     (`save_checkpoint`);
  5. the merged policy saved atomically with rmcore_policy.json and its held-out answers before and after.
Steps 1-5 run inside rmcore.core.stop.StopSignal: the caller's `stop_event`, or a first Ctrl-C or
SIGTERM, ends the run at the next safe point (a step boundary, the end of a sampling call) with a
checkpoint and the policy so far; a second signal quits at once, keeping the last checkpoint.

Events through `on_step(dict)`: "phase" (text, progress, and eta_s while sampling), "step" (the method's
figures with step, total_steps, round, progress, elapsed_s, eta_s and the last held-out reward_mean, gold_mean, kl,
length_mean), "eval" (held-out metrics, before training and after each round or pass), "done".
`state` is what a checkpoint holds: run_key, history (every step and eval event), the held-out
evaluations before training and after the last round, and what the method adds (`fresh_state`).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import torch

from rmcore.core.errors import TrainingError
from rmcore.core.folders import CHECKPOINT_DIR
from rmcore.core.stop import StopSignal
from rmcore.model.device import autodetect_device
from rmcore.model.reward_model import resolve_model_path
from rmcore.policy.config import RLHFConfig, RLHFResult, StepCallback
from rmcore.policy.evaluation import before_after, eval_event, evaluate_policy
from rmcore.policy.models import check_reward_model_folder, load_policy, load_reward_model
from rmcore.policy.sampling import MAX_PROMPT_TOKENS, check_context, prompts_cut
from rmcore.policy.saving import check_policy_output, policy_metadata, run_key, save_policy

EVAL_SEED_OFFSET = 7919  # held-out answers are drawn with config.seed + this, by every method
LAST_EVAL_KEYS = ("reward_mean", "gold_mean", "kl", "length_mean")  # carried on each step event
SAMPLING_REPORT_S = 1.0  # a sampling phase's progress is said at most this often


class PolicyRun:
    """One policy run: its settings, models, state and events. A subclass sets `kl_handling`, `total_steps`
    (before the first evaluation) and `model` (the policy being trained), and implements `step`, `train`,
    `save_checkpoint` and `read_checkpoint`; `prepare`, `fresh_state` and `extra_metadata` are optional."""

    kl_handling = ""  # how the method keeps the policy near the start, for rmcore_policy.json
    total_steps = 0
    model: Any  # the policy being trained (LoRA-wrapped)

    def __init__(self, config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir: Path,
                 on_step: StepCallback | None = None, stop_event: threading.Event | None = None):
        self.config = config
        self.train_prompts, self.eval_prompts = train_prompts, eval_prompts
        self.out_dir = Path(out_dir)
        self.emit = on_step or (lambda event: None)
        self.stop = StopSignal(stop_event, self.say_stopping)  # stop_event, Ctrl-C or SIGTERM: is_set() checks all
        self.mark_start(0)

    # -- the contract
    def run(self, resume: bool) -> RLHFResult:
        config = self.config
        config.check()
        if not self.train_prompts:
            raise TrainingError("no training prompts")
        replacing = check_policy_output(self.out_dir, resume, config)
        for path, what in ((config.reward_model, "reward model"), (config.gold_model, "gold model")):
            if path is not None:
                check_reward_model_folder(path, what)  # before anything is loaded or said
        if replacing:
            self.phase(f"{self.out_dir} holds a finished policy; it is replaced when this run saves")
        with self.stop:
            self.load_models()  # 1
            self.restore(resume)  # 2
            self.prepare()  # 3
            self.mark_start(self.step)
            stopped = self.loop()  # 4
            return self.save(stopped)  # 5

    def load_models(self) -> None:
        config = self.config
        self.phase("loading the policy and the reward models")
        torch.manual_seed(config.seed)
        self.device = autodetect_device()
        self.reward_model = load_reward_model(config.reward_model, "reward model")
        self.gold_model = load_reward_model(config.gold_model, "gold model")
        self.policy_path, self.policy_name = resolve_model_path(config.policy)
        self.policy, self.tokenizer, _ = load_policy(config.policy, device=self.device)
        check_context(self.policy, config.max_new_tokens)
        cut = prompts_cut(self.tokenizer, self.train_prompts + self.eval_prompts)
        if cut:
            self.phase(f"{cut} prompts are longer than {MAX_PROMPT_TOKENS:,} tokens; the policy reads the last "
                       f"{MAX_PROMPT_TOKENS:,} tokens of each (a long prompt is cut from the left, as everywhere)")

    def restore(self, resume: bool) -> None:
        key = run_key(self.config, self.policy_path, self.train_prompts, self.eval_prompts)
        self.state: dict[str, Any] = {"run_key": key, **self.fresh_state(), "history": [], "before": None,
                                      "last_eval": None}
        if resume:
            self.state = self.read_checkpoint(key)

    def loop(self) -> bool:
        """The starting policy's held-out answers, then training; True when a stop ended it (checkpoint saved)."""
        state = self.state
        if state["before"] is None and self.eval_prompts:
            state["before"] = state["last_eval"] = self.evaluate(0, 0)  # curves start where training starts
        elif not self.eval_prompts:
            self.phase("no held-out prompts (--eval-fraction 0): the policy is trained without evaluations")
        stopped = self.train()
        if stopped:
            self.phase(f"stopped at step {self.step}; saving a checkpoint")
            self.save_checkpoint()
        return stopped

    def save(self, stopped: bool) -> RLHFResult:
        state, step, total_steps = self.state, self.step, self.total_steps
        self.phase("saving the policy")
        rows = before_after(state["before"], self.current_eval())
        metadata = policy_metadata(self.config, self.policy_name, steps=step, total_steps=total_steps,
                                   stopped=stopped, history=state["history"], before_after_rows=rows,
                                   train_prompts=len(self.train_prompts), eval_prompts=len(self.eval_prompts),
                                   kl_handling=self.kl_handling)
        metadata.update(self.extra_metadata())
        save_policy(self.model, self.tokenizer, self.out_dir, metadata, keep=(CHECKPOINT_DIR,) if stopped else (),
                    on_note=self.phase)
        if not stopped:
            shutil.rmtree(self.out_dir / CHECKPOINT_DIR, ignore_errors=True)
        self.emit({"event": "done", "step": step, "total_steps": total_steps, "stopped": stopped,
                   "out_dir": str(self.out_dir), "progress": self.progress(step), "eta_s": 0.0})
        return RLHFResult(self.out_dir, step, stopped, state["history"], rows)

    def current_eval(self) -> dict[str, Any] | None:
        """The held-out evaluation of the policy as it is now: none for a run stopped mid-round (no pairs)."""
        last_eval = self.state["last_eval"]
        current = last_eval is not None and last_eval.get("step") == self.step and self.step > 0
        return last_eval if current else None

    # -- what the methods differ in
    @property
    def step(self) -> int:
        """Optimizer steps done so far."""
        raise NotImplementedError

    def fresh_state(self) -> dict[str, Any]:
        """The method's part of a fresh run's `state`."""
        return {}

    def read_checkpoint(self, key: str) -> dict[str, Any]:
        """The `state` of the checkpoint to continue (its weights restored); refuse one of another run."""
        raise NotImplementedError

    def prepare(self) -> None:
        """The method's set-up once the models are loaded and the state known."""

    def train(self) -> bool:
        """Every step still to run, with the held-out evaluations; True when a stop request ended it."""
        raise NotImplementedError

    def save_checkpoint(self) -> None:
        raise NotImplementedError

    def extra_metadata(self) -> dict[str, Any]:
        """The method's entries of rmcore_policy.json."""
        return {}

    # -- events, the held-out evaluation and the clock
    def phase(self, text: str, progress: float | None = None, eta_s: float | None = None) -> None:
        self.emit({"event": "phase", "phase": text, "progress": progress, "eta_s": eta_s})

    def sampling_progress(self, text: str):
        """An `on_progress(done, total)` for a sampling phase: `text` with the share done and the time left,
        as a phase event at most once a second (sampling reports every token; the CLI prints a line every
        few seconds), so a minute of sampling is never silent."""
        started, said = time.perf_counter(), [0.0]

        def report(done: float, total: float) -> None:
            elapsed = time.perf_counter() - started
            share = min(1.0, done / total) if total else 1.0
            if elapsed - said[0] < SAMPLING_REPORT_S or share >= 1.0:
                return
            said[0] = elapsed
            eta = elapsed * (1 - share) / share if share > 0.01 else None
            self.phase(f"{text}: {share:.0%}", self.progress(self.step), eta)
        return report

    def say_stopping(self, signal_name: str = "") -> None:
        self.phase("stopping at the next safe point (the end of this step or sampling call), then saving a "
                   "checkpoint and the policy so far (press Ctrl-C again to quit at once, keeping only the last "
                   "checkpoint)")

    def record(self, event: dict[str, Any]) -> None:
        """A step or eval event: into the history (saved with the policy and in checkpoints), then out."""
        self.state["history"].append(event)
        self.emit(event)

    def step_event(self, step: int, round_number: int, figures: dict[str, float]) -> None:
        last = self.state["last_eval"] or {}
        self.record({"event": "step", "step": step, "total_steps": self.total_steps, "round": round_number,
                     **figures, **{k: last[k] for k in LAST_EVAL_KEYS if k in last},
                     "progress": self.progress(step), "elapsed_s": self.elapsed(), "eta_s": self.eta(step)})

    def evaluate(self, step: int, round_done: int) -> dict[str, Any] | None:
        """Held-out mean reward (and gold), KL to the starting policy and length; emits an "eval" event.

        None when stopped part-way. The random state is restored afterwards, so evaluating does not
        change what training draws.
        """
        config = self.config
        what = f"evaluating on {len(self.eval_prompts)} held-out prompts"
        self.phase(what, self.progress(step))
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            metrics = evaluate_policy(self.model, self.tokenizer, self.eval_prompts, self.reward_model,
                                      self.gold_model, samples_per_prompt=config.eval_samples,
                                      max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                      seed=config.seed + EVAL_SEED_OFFSET, stop_event=self.stop,
                                      on_progress=self.sampling_progress(f"{what}, sampling"))
        if metrics is not None:
            metrics["step"] = step
            self.record(eval_event(metrics, step, self.total_steps, round=round_done, progress=self.progress(step),
                                   elapsed_s=self.elapsed(), eta_s=self.eta(step)))
        return metrics

    def mark_start(self, step: int) -> None:
        """Time this process's steps from here (a resumed run's earlier steps took no time here)."""
        self.started, self.first_step = time.perf_counter(), step

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def progress(self, step: int) -> float:
        return step / max(self.total_steps, 1)

    def eta(self, step: int) -> float | None:
        """Seconds left at the pace of the steps run in this process (None before the first)."""
        done_here = step - self.first_step
        return self.elapsed() / done_here * max(self.total_steps - step, 0) if done_here > 0 else None
