"""Push a policy (a causal LM) toward a reward model: rejection-sampling fine-tuning, or GRPO via TRL.

`train_policy` is the one entry point; it dispatches on `RLHFConfig.method`:
  - "rs": rounds of (sample n answers per training prompt -> keep the reward model's best ->
    supervised fine-tune on the picks), LoRA on the policy (rmcore.policy.rejection_sampling);
  - "grpo": TRL's GRPOTrainer with rmcore's reward model as the reward (rmcore.policy.grpo).

Both follow one run contract (rmcore.policy.run.PolicyRun), that of rmcore.training.train.train:
progress events through `on_step(dict)`, `stop_event` (or Ctrl-C, SIGTERM) ends the run at the next step
boundary saving a checkpoint and the policy so far, `resume=True` continues from that checkpoint,
and the policy is saved atomically as a plain HF causal-LM folder (LoRA merged) with its tokenizer
and `rmcore_policy.json`.

The rest of a policy run has one home each: rmcore.policy.config (settings and result),
.models (loading the policy and reward models, LoRA), .evaluation (log-probabilities, KL, the
held-out evaluation), .saving (output folder, save, checkpoints).
"""

from __future__ import annotations

import importlib.util
import random
import threading

from rmcore.core.errors import TrainingError
from rmcore.policy.config import RLHFConfig, RLHFResult, StepCallback
from rmcore.policy.rejection_sampling import train_rejection_sampling

__all__ = ["RLHFConfig", "RLHFResult", "grpo_available", "split_prompts", "train_policy"]


def train_policy(config: RLHFConfig, train_prompts, eval_prompts, out_dir, *, on_step: StepCallback | None = None,
                 stop_event: threading.Event | None = None, resume: bool = False) -> RLHFResult:
    """Dispatch on config.method: "rs" -> rejection sampling, "grpo" -> rmcore.policy.grpo.train_grpo."""
    config.check()
    if config.method == "grpo":
        try:
            from rmcore.policy.grpo import train_grpo  # trl and datasets: optional, and seconds to import
        except ImportError as exc:
            raise TrainingError(f"the grpo method is unavailable ({exc}); use --method rs") from None
        return train_grpo(config, train_prompts, eval_prompts, out_dir, on_step=on_step, stop_event=stop_event,
                          resume=resume)
    return train_rejection_sampling(config, train_prompts, eval_prompts, out_dir, on_step=on_step,
                                    stop_event=stop_event, resume=resume)


def grpo_available() -> bool:
    """GRPO runs through TRL, an optional dependency (bench/requirements.txt installs it, with datasets)."""
    return all(importlib.util.find_spec(name) is not None for name in ("trl", "datasets"))


def split_prompts(prompts: list, eval_fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, held out): a seeded shuffle, at least one held-out prompt when the fraction is above 0."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    held = 0 if eval_fraction <= 0 else max(1, round(len(prompts) * eval_fraction))
    held = min(held, len(prompts) - 1)
    return [prompts[i] for i in sorted(order[held:])], [prompts[i] for i in sorted(order[:held])]
