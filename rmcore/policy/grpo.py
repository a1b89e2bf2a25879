"""GRPO on the policy through TRL's `GRPOTrainer`, with an rmcore reward model as the reward.

Group Relative Policy Optimisation samples G answers per prompt, scores them, and pushes up the
log-probability of each answer in proportion to its group-normalised advantage
A_i = (r_i - mean(r)) / (std(r) + 1e-4): no value network, the group is the baseline. TRL does all
of that; rmcore supplies
  - the reward: `RewardFunction`, which scores the G answers of a prompt in one packed pass;
  - LoRA on the policy (so the reference policy of the KL term is the same model with its adapters
    off, no second copy), CPU-friendly settings (float32 on a CPU, bf16 autocast on CUDA, no vLLM,
    no gradient checkpointing);
  - the run contract of `rmcore train`: events through `on_step`, `stop_event` saves a checkpoint and
    the policy so far, `resume=True` continues from TRL's checkpoint, a held-out evaluation before
    training and after every pass over the prompts, and an atomic save of the merged policy with
    `rmcore_policy.json` (the helpers are shared with rejection sampling, in rmcore.policy.rlhf).

Resuming restores TRL's checkpoint (adapters, optimizer, step, random state) and rmcore's history
and held-out evaluations. It is not bit-identical to an uninterrupted run: after the first pass the
prompts come in another order (TRL's RepeatSampler restarts its shuffle in a new process).

Settings: `config.n` is the group size G, `config.batch_size` the prompts per optimizer step (one
generation call of batch_size x G answers), `config.rounds` the passes over the training prompts,
`config.kl_coef` TRL's beta, `config.max_new_tokens` its max_completion_length.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from rmcore.core.errors import TrainingError
from rmcore.data.prompts import as_messages
from rmcore.policy.reward_function import RewardFunction
from rmcore.policy.rlhf import (
    CHECKPOINT_DIR,
    RLHFConfig,
    RLHFResult,
    StepCallback,
    before_after,
    check_policy_output,
    eval_event,
    evaluate_policy,
    load_reward_model,
    policy_metadata,
    run_key,
    save_policy,
)

STATE_FILE = "state.json"  # rmcore's part of a GRPO checkpoint (TRL's is in checkpoint-N/ beside it)
EVAL_SEED_OFFSET = 7919  # held-out answers are drawn with config.seed + this, as rejection sampling does

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


def grpo_arguments(config: RLHFConfig, output_dir: Path, *, device: str, batch_prompts: int):
    """TRL's GRPOConfig for an rmcore run: one generation call per optimizer step, CPU-friendly."""
    from trl import GRPOConfig

    from rmcore.model.device import mixed_precision_for

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
        bf16=mixed_precision_for(device) == "bf16",  # float32 on a CPU, as rmcore trains everywhere
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


def lora_config(config: RLHFConfig):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=0.0, target_modules="all-linear")


class _Interrupt:
    """Ctrl-C during a run ends it at the next step boundary, as a stop request does; a second one aborts."""

    def __init__(self):
        self.event = threading.Event()
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def train_grpo(config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir, *,
               on_step: StepCallback | None = None, stop_event: threading.Event | None = None,
               resume: bool = False) -> RLHFResult:
    """GRPO-train a LoRA on the policy toward `config.reward_model`; save the merged policy to `out_dir`.

    Events: "phase", "step" (TRL's figures on the step's training prompts: train_reward_mean,
    train_kl, train_length_mean, loss; plus the last held-out reward_mean, gold_mean, kl and
    length_mean), "eval" (held-out, before training and after each pass), "done".
    """
    config.check()
    if config.n < 2:
        raise TrainingError("GRPO compares the answers to a prompt with each other: n must be at least 2, "
                            f"got {config.n}")
    if not train_prompts:
        raise TrainingError("no training prompts")
    out_dir = Path(out_dir)
    replacing = check_policy_output(out_dir, resume, config)
    run = _Run(config, train_prompts, eval_prompts, out_dir, on_step, stop_event)
    if replacing:
        run.phase(f"{out_dir} holds a finished policy; it is replaced when this run saves")
    # 1. the models: the policy (TRL adds the LoRA adapters), the proxy reward model, the gold judge
    run.load_models()
    # 2. where we are: a fresh run, or rmcore's state and TRL's checkpoint-N/ to continue from
    checkpoint = run.restore(resume)
    # 3. the reward functions and TRL's trainer, whose callback sends our events and honours a stop
    run.build_trainer()
    # 4. the starting policy on the held-out prompts, then TRL's training loop
    run.train(checkpoint)
    # 5. save the merged policy with what produced it (and, when stopped, the checkpoint to resume)
    return run.save()


class _Run:
    """The state of one GRPO run, shared by the steps of `train_grpo` and by its TrainerCallback:
    events, evaluations, the stop request. `state` is rmcore's half of a checkpoint (STATE_FILE)."""

    def __init__(self, config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir: Path,
                 on_step: StepCallback | None, stop_event: threading.Event | None):
        self.config = config
        self.train_prompts, self.eval_prompts = train_prompts, eval_prompts
        self.out_dir = out_dir
        self.trl_dir = out_dir / CHECKPOINT_DIR
        self.emit = on_step or (lambda event: None)
        self.stop_event = stop_event
        self.interrupt: threading.Event | None = None
        self.stopped = False
        self.started = time.perf_counter()
        self.first_step = 0

    def phase(self, text: str, progress: float | None = None) -> None:
        self.emit({"event": "phase", "phase": text, "progress": progress})

    # -- 1, 2: models and the run's state
    def load_models(self) -> None:
        from rmcore.model.device import autodetect_device
        from rmcore.model.reward_model import resolve_model_path
        from rmcore.policy.sampling import load_policy

        config = self.config
        self.phase("loading the policy and the reward models")
        self.device = autodetect_device()
        self.reward_model = load_reward_model(config.reward_model, "reward model")
        self.gold_model = load_reward_model(config.gold_model, "gold model")
        self.policy_path, self.policy_name = resolve_model_path(config.policy)
        self.policy, self.tokenizer, _ = load_policy(config.policy, device=self.device)

    def restore(self, resume: bool) -> str | None:
        """Set `state` (fresh, or the checkpoint's); the TRL checkpoint folder to resume from, or None."""
        from transformers.trainer_utils import get_last_checkpoint

        key = run_key(self.config, self.policy_path, self.train_prompts, self.eval_prompts)
        self.state: dict[str, Any] = {"run_key": key, "history": [], "before": None, "last_eval": None}
        if not resume:
            return None
        trl_dir = self.trl_dir
        self.state = json.loads((trl_dir / STATE_FILE).read_text())
        if self.state.get("run_key") != key:
            raise TrainingError(f"{trl_dir}: this checkpoint was made with another policy, reward model, prompts or "
                                "options; resume with the same ones, or use a new --out folder")
        checkpoint = get_last_checkpoint(str(trl_dir))
        if checkpoint is None:
            raise TrainingError(f"{trl_dir}: TRL's checkpoint (checkpoint-N/) is missing; start again without --resume")
        return checkpoint

    # -- 3: TRL's trainer
    def build_trainer(self) -> None:
        """The proxy reward drives the advantages; the gold judge is only logged (weight 0)."""
        from datasets import Dataset
        from transformers import PrinterCallback, TrainerCallback
        from trl import GRPOTrainer

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
        self.started = time.perf_counter()
        self.trainer.add_callback(self.callback(TrainerCallback))
        self.trainer.remove_callback(PrinterCallback)  # our events replace its raw dicts on stdout

    # -- 4: train
    def train(self, checkpoint: str | None) -> None:
        state, config = self.state, self.config
        if state["before"] is None and self.eval_prompts:
            state["before"] = state["last_eval"] = self.evaluate(0, 0)
        if checkpoint is not None:
            self.phase(f"resuming from {Path(checkpoint).name}")
        with _Interrupt() as interrupt:
            self.interrupt = interrupt.event
            try:
                self.trainer.train(resume_from_checkpoint=checkpoint)
            except torch.OutOfMemoryError:
                raise TrainingError(f"out of memory with {config.n} answers of up to {config.max_new_tokens} tokens "
                                    f"per prompt; try --n {max(2, config.n // 2)} or --max-new-tokens "
                                    f"{max(16, config.max_new_tokens // 2)}") from None

    # -- 5: save
    def save(self) -> RLHFResult:
        config, state, stopped = self.config, self.state, self.stopped
        steps, total_steps = self.trainer.state.global_step, self.total_steps
        self.phase("saving the policy")
        if stopped:
            self.write_state()
        trained_eval = state["last_eval"] if state["last_eval"] != state["before"] else None  # after a pass
        rows = before_after(state["before"], trained_eval)
        metadata = policy_metadata(config, self.policy_name, steps=steps, total_steps=total_steps, stopped=stopped,
                                   history=state["history"], before_after_rows=rows,
                                   train_prompts=len(self.train_prompts), eval_prompts=len(self.eval_prompts),
                                   kl_handling=GRPO_KL_HANDLING)
        metadata["trl"] = {"trainer": "GRPOTrainer", "version": _trl_version(), "num_generations": config.n,
                           "prompts_per_step": self.batch_prompts, "beta": config.kl_coef,
                           "loss_type": self.args.loss_type, "scale_rewards": self.args.scale_rewards}
        save_policy(self.trainer.model, self.tokenizer, self.out_dir, metadata,
                    keep=(CHECKPOINT_DIR,) if stopped else ())
        self.emit({"event": "done", "step": steps, "total_steps": total_steps, "stopped": stopped,
                   "out_dir": str(self.out_dir), "progress": steps / max(total_steps, 1), "eta_s": 0.0})
        return RLHFResult(self.out_dir, steps, stopped, state["history"], rows)

    # -- what the callback calls
    def stop_requested(self) -> bool:
        return any(e is not None and e.is_set() for e in (self.stop_event, self.interrupt))

    def evaluate(self, step: int, round_done: int) -> dict[str, Any] | None:
        """Held-out mean reward (and gold), KL to the starting policy and length; emits an "eval" event.

        The random state is restored afterwards, so evaluating does not change what training samples.
        """
        self.emit({"event": "phase", "phase": f"evaluating on {len(self.eval_prompts)} held-out prompts",
                   "progress": step / max(self.total_steps, 1)})
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            metrics = evaluate_policy(self.trainer.model, self.tokenizer, self.eval_prompts, self.reward_model,
                                      self.gold_model, samples_per_prompt=self.config.eval_samples,
                                      max_new_tokens=self.config.max_new_tokens,
                                      temperature=self.config.temperature,
                                      seed=self.config.seed + EVAL_SEED_OFFSET, stop_event=self.stop_event)
        if metrics is not None:
            done_here = step - self.first_step
            elapsed = time.perf_counter() - self.started
            eta = elapsed / done_here * (self.total_steps - step) if done_here > 0 else None
            event = eval_event(metrics, step, self.total_steps, round=round_done,
                               progress=step / max(self.total_steps, 1), eta_s=eta)
            self.state["history"].append(event)
            self.emit(event)
        return metrics

    def step_event(self, step: int, logs: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self.started
        done_here = max(step - self.first_step, 1)
        last = self.state["last_eval"] or {}
        event = {"event": "step", "step": step, "total_steps": self.total_steps,
                 "round": min(self.config.rounds, 1 + (step - 1) * self.config.rounds // max(self.total_steps, 1)),
                 **{ours: float(logs[theirs]) for theirs, ours in TRL_LOG_KEYS.items() if theirs in logs},
                 **{k: last[k] for k in ("reward_mean", "gold_mean", "kl", "length_mean") if k in last},
                 "progress": step / max(self.total_steps, 1), "elapsed_s": elapsed,
                 "eta_s": elapsed / done_here * max(self.total_steps - step, 0)}
        self.state["history"].append(event)
        self.emit(event)

    def write_state(self) -> None:
        """rmcore's half of a checkpoint: what the run is, its history and held-out evaluations."""
        folder = Path(self.trainer.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(self.state, default=str))
        tmp.replace(folder / STATE_FILE)

    def callback(self, base):
        run = self

        class RunCallback(base):
            """Forwards TRL's logs to on_step, evaluates after each pass, honours the stop request."""

            def on_train_begin(self, args, state, control, **kwargs):
                run.started, run.first_step = time.perf_counter(), state.global_step

            def on_step_end(self, args, state, control, **kwargs):
                if run.stop_requested() and state.global_step < state.max_steps:
                    run.stopped = True
                    control.should_training_stop = True
                    control.should_save = True

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "reward" in logs:
                    run.step_event(state.global_step, logs)

            def on_epoch_end(self, args, state, control, **kwargs):
                if run.stopped or not run.eval_prompts:
                    return
                round_done = round(state.epoch or 0)
                metrics = run.evaluate(state.global_step, round_done)
                if metrics is None:  # stopped during the evaluation
                    run.stopped = state.global_step < state.max_steps
                    control.should_save = True
                    return
                run.state["last_eval"] = metrics
                if state.global_step < state.max_steps:
                    control.should_save = True  # a checkpoint between passes, as rejection sampling keeps

            def on_save(self, args, state, control, **kwargs):
                run.write_state()

        return RunCallback()


def _trl_version() -> str:
    import trl

    return trl.__version__
