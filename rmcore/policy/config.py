"""The settings of a policy run (`rmcore rlhf`, the app's fine-tune), in one place: defaults, checks, result.

No torch here: the command line reads the defaults for its help text, and the app its form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ANSWERS_PER_PROMPT = 4096  # answers sampled per prompt (--n): they are held in memory together
SEQUENCES_PER_CALL = 128  # sequences per generate call: 1.25x the tokens/s of 32 on 2 CPU cores (4 x 32 answers)
METHODS = ("rs", "grpo")
# LoRA learning rates. GRPO's was measured on the embedded policy (bench/grpo_lr.py: one pass over 32 demo
# prompts, G = 8): 1e-5 moved nothing (+0.00 sd), 1e-4 +0.09 sd, 1e-3 +0.88 sd at 11.5 nats of KL.
DEFAULT_LR = {"rs": 3e-4, "grpo": 1e-3}

StepCallback = Callable[[dict[str, Any]], None]
MAX_SEED = 2**32 - 1  # what every random generator a run seeds accepts (numpy's is the narrowest)


def check_seed(seed: int) -> None:
    """A seed every generator takes: torch, numpy (TRL seeds it) and Python's `random`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be a whole number from 0 to {MAX_SEED:,}, got {seed!r}")


@dataclass
class RLHFConfig:
    reward_model: str  # rmcore reward-model folder (the proxy the policy is pushed toward)
    policy: str = "embedded"  # causal LM: "embedded" SmolLM2-135M-Instruct or a local HF folder
    method: str = "rs"  # "rs" (rejection sampling / best-of-n distillation) or "grpo"
    gold_model: str | None = None  # optional second reward model, the independent judge (never trained on)
    rounds: int = 2  # rs: sample -> keep best -> SFT rounds; grpo: passes over the prompts
    n: int = 8  # samples per prompt (rs: n of best-of-n; grpo: group size G)
    max_new_tokens: int = 96
    temperature: float = 1.0
    lr: float | None = None  # None = the method's default (DEFAULT_LR)
    lora_r: int = 16
    lora_alpha: int = 32
    kl_coef: float = 0.05  # beta of the KL term to the starting policy
    batch_size: int = 4
    eval_fraction: float = 0.33  # share of prompts held out for before/after answers and mean reward
    seed: int = 0
    sft_epochs: int = 2  # rs: passes over each round's picks
    keep: int = 1  # rs: answers kept per prompt each round, the best `keep` of n (more picks, less memorising)
    eval_samples: int = 4  # answers per held-out prompt at each evaluation (mean reward, KL, length)

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.method, 1e-4)

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("rounds", "n", "max_new_tokens", "batch_size", "lora_r", "sft_epochs", "eval_samples", "keep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.keep > self.n:
            raise ValueError(f"keep ({self.keep}) cannot be more than the answers sampled per prompt, n ({self.n})")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be above 0, got {self.temperature}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ValueError(f"learning rate must be in (0, 1), got {self.lr}")
        if not 0 <= self.kl_coef < math.inf:
            raise ValueError(f"KL coefficient must be a number >= 0, got {self.kl_coef}")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval fraction must be in [0, 1), got {self.eval_fraction}")
        if self.n > MAX_ANSWERS_PER_PROMPT or self.eval_samples > MAX_ANSWERS_PER_PROMPT:
            raise ValueError(f"--n and --eval-samples must be at most {MAX_ANSWERS_PER_PROMPT} answers per prompt, got "
                             f"{max(self.n, self.eval_samples):,}")
        check_seed(self.seed)


@dataclass
class RLHFResult:
    out_dir: Path
    steps: int
    stopped: bool
    history: list[dict[str, Any]] = field(default_factory=list)  # the dicts sent to on_step
    before_after: list[dict[str, Any]] = field(default_factory=list)  # held-out prompt, answers, rewards
