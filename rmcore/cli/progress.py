"""The one printer of a run's events (`train`, `rlhf`): phases as lines, steps as a bar, evaluations.

Training a reward model and fine-tuning a policy send the same kinds of events to `on_step`
(rmcore.training.train and rmcore.policy): "phase" (text, eta_s), "step" (step, total_steps and
the step's metrics) and "eval" (held-out metrics). Only the metrics shown differ.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from rmcore.core.progress import count, format_duration

PROGRESS_EVERY_S = 5.0  # a phase that reports progress (features, sampling) prints a line this often


def reward_model_eval_line(event: dict) -> str:
    return (f"[rmcore] held-out after step {event['step']}: loss {event['eval_loss']:.4f}, "
            f"accuracy {event['eval_accuracy']:.3f} ({count(event['eval_comparisons'], 'comparison')})")


def policy_eval_line(event: dict) -> str:
    text = f"[rmcore] held-out after step {event['step']}: reward {event['reward_mean']:.3f}"
    if "reward_se" in event:
        text += f" ± {event['reward_se']:.3f}"
    if "gold_mean" in event:
        text += f", gold {event['gold_mean']:.3f}"
    return text + f", KL {event['kl']:.3f} nats, length {event['length_mean']:.1f} tokens"


def reward_model_postfix(event: dict) -> dict[str, str]:
    return {"loss": f"{event['loss']:.4f}", "acc": f"{event['accuracy']:.2f}", "lr": f"{event['lr']:.1e}",
            "tok_s": f"{event['tokens_per_s']:.0f}"}


def policy_postfix(event: dict) -> dict[str, str]:
    return {"loss": f"{event['loss']:.3f}"} if "loss" in event else {}


class StepPrinter:
    """An `on_step` callback for the command line: a tqdm bar of the steps on stderr, every other event
    a line above it. `kind` is "reward model" or "policy" (which metrics the bar and the lines show)."""

    def __init__(self, kind: str = "reward model", quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.last_progress_line = 0.0  # a phase with progress (features, sampling) is a line every few seconds
        policy = kind == "policy"
        self.eval_line = policy_eval_line if policy else reward_model_eval_line
        self.postfix = policy_postfix if policy else reward_model_postfix

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        kind = event.get("event")
        if kind == "phase":
            if not self._time_for_a_line(event.get("progress"), event.get("eta_s")):
                return
            text = event["phase"]
            if event.get("eta_s") is not None:
                text += f", about {format_duration(event['eta_s'])} left"
            self.write(f"[rmcore] {text}")
        elif kind == "step":
            if self.bar is None:
                self.bar = tqdm(total=event["total_steps"], initial=event["step"] - 1, unit="step",
                                dynamic_ncols=True, file=sys.stderr, mininterval=1.0)
            self.bar.total = event["total_steps"]  # a time budget refits the number of steps
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(self.postfix(event))
        elif kind == "eval":
            self.write(self.eval_line(event))

    def _time_for_a_line(self, progress: float | None, eta_s: float | None) -> bool:
        """A phase that repeats with its progress and time left (trunk features) prints a line every few
        seconds; any other phase prints at once."""
        if progress is None or eta_s is None or progress >= 1:
            return True
        moment = time.monotonic()
        if moment - self.last_progress_line < PROGRESS_EVERY_S:
            return False
        self.last_progress_line = moment
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
