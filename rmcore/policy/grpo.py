"""GRPO on the policy through TRL's `GRPOTrainer`, with an rmcore reward model as the reward.

Group Relative Policy Optimisation samples G answers per prompt, scores them, and pushes up the
log-probability of each answer in proportion to its group-normalised advantage
A_i = (r_i - mean(r)) / (std(r) + 1e-4): no value network, the group is the baseline. TRL does all
of that; rmcore supplies
  - the reward: `RewardFunction`, which scores the G answers of a prompt in one packed pass;
  - LoRA on the policy (so the reference policy of the KL term is the same model with its adapters
    off, no second copy), CPU-friendly settings (float32 on a CPU, bf16 autocast on CUDA, no vLLM,
    no gradient checkpointing);
  - the run contract of every policy run (rmcore.policy.run.PolicyRun): events through `on_step`,
    `stop_event` or Ctrl-C saves a checkpoint and the policy so far, `resume=True` continues from
    TRL's checkpoint, a held-out evaluation before training and after every pass over the prompts,
    and an atomic save of the merged policy with `rmcore_policy.json`.

Resuming restores TRL's checkpoint (adapters, optimizer, step, random state) and rmcore's history
and held-out evaluations. It is not bit-identical to an uninterrupted run: after the first pass the
prompts come in another order (TRL's RepeatSampler restarts its shuffle in a new process).

Settings: `config.n` is the group size G, `config.batch_size` the prompts per optimizer step (one
generation call of batch_size x G answers), `config.rounds` the passes over the training prompts,
`config.kl_coef` TRL's beta, `config.max_new_tokens` its max_completion_length.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import trl
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

from rmcore.core.errors import TrainingError
from rmcore.core.folders import CHECKPOINT_DIR
from rmcore.data.prompts import as_messages
from rmcore.model.device import mixed_precision_for
from rmcore.policy.config import RLHFConfig, RLHFResult, StepCallback
from rmcore.policy.models import lora_config
from rmcore.policy.reward_function import RewardFunction
from rmcore.policy.run import PolicyRun
from rmcore.policy.saving import read_run_state, write_run_state

GRPO_KL_HANDLING = (
    "GRPO (TRL's GRPOTrainer): the loss adds kl_coef (TRL's beta) times a per-token estimate of "
    "KL(pi || pi_ref), k3 = exp(q) - q - 1 with q = log pi_ref - log pi, pi_ref being the starting policy "
    "(the LoRA adapters disabled). The KL reported per evaluation is measured: the mean of log pi/pi_ref "
    "over the policy's own held-out samples (nats per answer); the step events' train_kl is TRL's per-token k3."
)

# TRL's log keys -> the names of our step events (train prompts; the held-out figures come from evaluations)
TRL_LOG_KEYS = {
    "loss": "loss", "learning_rate": "lr", "reward": "train_reward_mean", "reward_std": "train_reward_std",
    "kl": "train_kl", "completions/mean_length": "train_length_mean", "completions/clipped_ratio": "hit_limit_share",
    "rewards/gold/mean": "train_gold_mean", "entropy": "entropy", "grad_norm": "grad_norm",
    "frac_reward_zero_std": "frac_reward_zero_std",
}


def grpo_arguments(config: RLHFConfig, output_dir: Path, *, device: str, batch_prompts: int) -> GRPOConfig:
    """TRL's GRPOConfig for an rmcore run: one generation call per optimizer step, CPU-friendly."""
    return GRPOConfig(
        output_dir=str(output_dir),
        num_generations=config.n,
        per_device_train_batch_size=config.n,  # completions per micro-batch: one prompt's group
        gradient_accumulation_steps=batch_prompts,  # prompts per optimizer step (one generation call)
        num_train_epochs=config.rounds,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=1.0,
        top_k=0,  # the distribution rmcore.policy.sampling samples from, so KL estimates agree
        beta=config.kl_coef,
        learning_rate=config.learning_rate(),
        lr_scheduler_type="constant",  # a few dozen steps: no warm-up or decay to tune
        max_grad_norm=1.0,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=device == "cpu",
        bf16=device == "cuda" and mixed_precision_for(device) == "bf16",  # float32 on a CPU (not measured)
        gradient_checkpointing=False,  # TRL's default; on a small model it only costs time
        disable_dropout=True,  # the policy and its reference must agree on a given answer
        use_vllm=False,
        logging_steps=1,
        save_strategy="no",  # checkpoints are saved by the callback: on stop and between rounds
        save_total_limit=1,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        log_completions=False,
    )


def train_grpo(config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir, *,
               on_step: StepCallback | None = None, stop_event: threading.Event | None = None,
               resume: bool = False) -> RLHFResult:
    """GRPO-train a LoRA on the policy toward `config.reward_model`; save the merged policy to `out_dir`.

    Events: "phase", "step" (TRL's figures on the step's training prompts: train_reward_mean,
    train_kl, train_length_mean, loss; plus the last held-out reward_mean, gold_mean, kl and
    length_mean), "eval" (held-out, before training and after each pass), "done".
    """
    if config.n < 2:
        raise TrainingError("GRPO compares the answers to a prompt with each other: n must be at least 2, "
                            f"got {config.n}")
    return GRPORun(config, train_prompts, eval_prompts, Path(out_dir), on_step, stop_event).run(resume)


class GRPORun(PolicyRun):
    """A GRPO run: TRL's trainer does the steps, `_RunCallback` reports them and honours the stop request.
    A checkpoint is TRL's checkpoint-N/ (adapters, optimizer, step, random state) in OUT/checkpoint,
    with rmcore's `state` beside it (rmcore.policy.saving.write_run_state)."""

    kl_handling = GRPO_KL_HANDLING

    def __init__(self, config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir: Path,
                 on_step: StepCallback | None = None, stop_event: threading.Event | None = None):
        super().__init__(config, train_prompts, eval_prompts, out_dir, on_step, stop_event)
        self.trl_dir = self.out_dir / CHECKPOINT_DIR
        self.trl_checkpoint: str | None = None  # TRL's checkpoint-N/ to resume from
        self.stopped = False

    @property
    def model(self):
        return self.trainer.model  # the policy with the LoRA adapters TRL added

    @property
    def step(self) -> int:
        return self.trainer.state.global_step

    def read_checkpoint(self, key: str) -> dict[str, Any]:
        state = read_run_state(self.trl_dir, key)
        self.trl_checkpoint = get_last_checkpoint(str(self.trl_dir))
        if self.trl_checkpoint is None:
            raise TrainingError(f"{self.trl_dir}: TRL's checkpoint (checkpoint-N/) is missing; start again "
                                "without --resume")
        return state

    def prepare(self) -> None:
        """TRL's trainer: the proxy reward drives the advantages; the gold judge is only logged (weight 0)."""
        config, prompts = self.config, self.train_prompts
        reward_funcs = [RewardFunction(self.reward_model, name="reward")]
        if self.gold_model is not None:
            reward_funcs.append(RewardFunction(self.gold_model, name="gold"))
        self.batch_prompts = min(config.batch_size, len(prompts))  # a step needs that many whole prompt groups
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)  # TRL's
        self.args = grpo_arguments(config, self.trl_dir, device=self.device, batch_prompts=self.batch_prompts)
        self.args.reward_weights = [1.0] + [0.0] * (len(reward_funcs) - 1)
        dataset = Dataset.from_list([{"prompt": as_messages(p)} for p in prompts])
        torch.manual_seed(config.seed)  # the LoRA A matrices
        self.trainer = GRPOTrainer(model=self.policy, reward_funcs=reward_funcs, args=self.args,
                                   train_dataset=dataset, processing_class=self.tokenizer,
                                   peft_config=lora_config(config))
        self.total_steps = len(prompts) // self.batch_prompts * config.rounds  # TRL drops an incomplete batch
        self.trainer.add_callback(_RunCallback(self))
        self.trainer.remove_callback(PrinterCallback)  # our events replace its raw dicts on stdout

    def train(self) -> bool:
        config = self.config
        if self.trl_checkpoint is not None:
            self.phase(f"resuming from {Path(self.trl_checkpoint).name}")
        try:
            self.trainer.train(resume_from_checkpoint=self.trl_checkpoint)
        except torch.OutOfMemoryError:
            raise TrainingError(f"out of memory with {config.n} answers of up to {config.max_new_tokens} tokens "
                                f"per prompt; try --n {max(2, config.n // 2)} or --max-new-tokens "
                                f"{max(16, config.max_new_tokens // 2)}") from None
        return self.stopped

    def save_checkpoint(self) -> None:
        """rmcore's half of the checkpoint (TRL saved its half when the callback asked it to)."""
        write_run_state(self.trl_dir, self.state)

    def extra_metadata(self) -> dict[str, Any]:
        config = self.config
        return {"trl": {"trainer": "GRPOTrainer", "version": trl.__version__, "num_generations": config.n,
                        "prompts_per_step": self.batch_prompts, "beta": config.kl_coef,
                        "loss_type": self.args.loss_type, "scale_rewards": self.args.scale_rewards}}

    def log_step(self, step: int, logs: dict[str, float]) -> None:
        """A "step" event from TRL's logs of the step."""
        rounds, total = self.config.rounds, max(self.total_steps, 1)
        figures = {ours: float(logs[theirs]) for theirs, ours in TRL_LOG_KEYS.items() if theirs in logs}
        self.step_event(step, min(rounds, 1 + (step - 1) * rounds // total), figures)


class _RunCallback(TrainerCallback):
    """Forwards TRL's logs to on_step, evaluates after each pass, honours the stop request."""

    def __init__(self, run: GRPORun):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        self.run.mark_start(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.run.stop.is_set() and state.global_step < state.max_steps:
            self.run.stopped = True
            control.should_training_stop = True
            control.should_save = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.run.log_step(state.global_step, logs)

    def on_epoch_end(self, args, state, control, **kwargs):
        run = self.run
        if run.stopped or not run.eval_prompts:
            return
        metrics = run.evaluate(state.global_step, round(state.epoch or 0))
        if metrics is None:  # stopped during the evaluation
            run.stopped = state.global_step < state.max_steps
            control.should_save = True
            return
        run.state["last_eval"] = metrics
        if state.global_step < state.max_steps:
            control.should_save = True  # a checkpoint between passes, as rejection sampling keeps

    def on_save(self, args, state, control, **kwargs):
        self.run.save_checkpoint()
