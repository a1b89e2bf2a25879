"""Push a policy (a causal LM) toward a reward model: rejection-sampling fine-tuning, or GRPO via TRL.

`train_policy` is the one entry point; it dispatches on `RLHFConfig.method`:
  - "rs": rounds of (sample n answers per training prompt -> keep the reward model's best ->
    supervised fine-tune on the picks), LoRA on the policy, implemented here;
  - "grpo": TRL's GRPOTrainer with rmcore's reward model as the reward (rmcore.policy.grpo.train_grpo).

Both follow the run contract of rmcore.training.train.train: progress events through `on_step(dict)`,
`stop_event` ends the run at the next step boundary saving a checkpoint and the policy so far,
`resume=True` continues from that checkpoint, and the policy is saved atomically as a plain HF
causal-LM folder (LoRA merged) with its tokenizer and `rmcore_policy.json`.

The helpers below (loading and saving a policy, held-out evaluation with the KL to the starting
policy, before/after answers, checkpoints) are shared with rmcore/grpo.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import threading
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rmcore.core.errors import ModelError, TrainingError
from rmcore.core.folders import CHECKPOINT_DIR, POLICY_METADATA_FILE, check_output_folder, save_folder
from rmcore.policy.config import RLHFConfig, RLHFResult, StepCallback
from rmcore.training.checkpoint import load_checkpoint, save_checkpoint


def train_policy(config: RLHFConfig, train_prompts, eval_prompts, out_dir, *, on_step: StepCallback | None = None,
                 stop_event: threading.Event | None = None, resume: bool = False) -> RLHFResult:
    """Dispatch on config.method: "rs" -> rejection sampling here, "grpo" -> rmcore.policy.grpo.train_grpo."""
    config.check()
    if not train_prompts:
        raise TrainingError("no training prompts")
    if config.method == "grpo":
        try:
            from rmcore.policy.grpo import train_grpo
        except ImportError as exc:
            raise TrainingError(f"the grpo method is unavailable ({exc}); use --method rs") from None
        return train_grpo(config, train_prompts, eval_prompts, out_dir, on_step=on_step, stop_event=stop_event,
                          resume=resume)
    return train_rejection_sampling(config, train_prompts, eval_prompts, out_dir, on_step=on_step,
                                    stop_event=stop_event, resume=resume)


def grpo_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rmcore.policy.grpo") is not None


# ----------------------------------------------------------------------------- prompts and models


def split_prompts(prompts: list, eval_fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, held out): a seeded shuffle, at least one held-out prompt when the fraction is above 0."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    held = 0 if eval_fraction <= 0 else max(1, round(len(prompts) * eval_fraction))
    held = min(held, len(prompts) - 1)
    return [prompts[i] for i in sorted(order[held:])], [prompts[i] for i in sorted(order[:held])]


def check_reward_model_folder(path: str, what: str = "reward model") -> str:
    """The folder of a trained reward model; refuse one that is not (a base LM would score at random)."""
    from rmcore.model.reward_model import is_reward_model_folder, resolve_model_path

    folder, _ = resolve_model_path(path)
    if not is_reward_model_folder(folder):
        raise ModelError(f"{path}: not a reward model folder (no trained *ForSequenceClassification with one "
                         f"output); train one with `rmcore train`, then pass its folder as the {what}")
    return folder


def load_reward_model(path: str | None, what: str = "reward model"):
    """A trained rmcore reward model (None for None), refusing a folder that is not one."""
    from rmcore.model.reward_model import RewardModel

    if path is None:
        return None
    return RewardModel.load(check_reward_model_folder(path, what))


def add_lora(model, config: RLHFConfig):
    """LoRA adapters on every linear layer of the policy; with them disabled it is the starting policy."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=0.0, target_modules="all-linear")
    with warnings.catch_warnings():  # peft calls a transformers method renamed in v5: noise for our users
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora)


# ----------------------------------------------------------------------------- log-probabilities and KL


def answer_log_probs(model, prompt_ids: list[list[int]], answer_ids: list[list[int]], *, temperature: float = 1.0,
                     batch_size: int = 8, reduce: str = "sum") -> torch.Tensor:
    """log pi(answer | prompt) per sequence, summed (or "mean") over answer tokens; differentiable.

    The logits are divided by `temperature` so the log-probabilities are those of the distribution
    the answers were sampled from.
    """
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        rows = [p + a for p, a in zip(prompt_ids[start : start + batch_size], answer_ids[start : start + batch_size])]
        width = max(len(r) for r in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        attention = torch.zeros(len(rows), width, dtype=torch.long)
        answer_mask = torch.zeros(len(rows), width, dtype=torch.bool)  # True at answer tokens (the targets)
        for i, (row, prompt) in enumerate(zip(rows, prompt_ids[start : start + batch_size])):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            answer_mask[i, len(prompt) : len(row)] = True
        input_ids, attention, answer_mask = input_ids.to(device), attention.to(device), answer_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()  # (B, T-1, V)
        logits = logits / temperature
        targets = input_ids[:, 1:]
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        mask = answer_mask[:, 1:].float()
        total = (token_lp * mask).sum(dim=1)
        out.append(total / mask.sum(dim=1).clamp(min=1) if reduce == "mean" else total)
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def log_ratio_to_reference(model, prompt_ids, answer_ids, *, temperature: float = 1.0, reference=None,
                           batch_size: int = 8) -> torch.Tensor:
    """log pi(y|x) - log pi_ref(y|x) per answer. The reference is `reference`, or (for a LoRA-wrapped
    policy) the same model with its adapters disabled: the starting policy, without a second copy."""
    policy_lp = answer_log_probs(model, prompt_ids, answer_ids, temperature=temperature, batch_size=batch_size)
    if reference is not None:
        reference_lp = answer_log_probs(reference, prompt_ids, answer_ids, temperature=temperature,
                                        batch_size=batch_size)
    elif hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            reference_lp = answer_log_probs(model, prompt_ids, answer_ids, temperature=temperature,
                                            batch_size=batch_size)
    else:
        raise ValueError("a reference model is needed for the KL when the policy has no LoRA adapters")
    return (policy_lp - reference_lp).cpu()


# ----------------------------------------------------------------------------- held-out evaluation


def evaluate_policy(model, tokenizer, prompts: list, reward_model, gold_model=None, *, samples_per_prompt: int = 4,
                    max_new_tokens: int = 96, temperature: float = 1.0, seed: int = 0, reference=None,
                    stop_event: threading.Event | None = None) -> dict[str, Any] | None:
    """Sample the held-out prompts and measure: mean proxy reward (and gold), KL to the starting policy
    (a Monte Carlo estimate: the mean of log pi/pi_ref over the policy's own samples), answer length.

    Always the same seed, so two evaluations of a run draw with the same random numbers and their
    difference is the policy's. `answers` holds the first answer of each prompt with its rewards,
    for before/after tables. None when stopped part-way.
    """
    from rmcore.policy.best_of_n import score_proxy_and_gold
    from rmcore.policy.sampling import prompt_token_ids, sample

    if not prompts:
        return None
    was_training = model.training
    model.eval()
    groups = sample(sampling_policy(model), tokenizer, prompts, samples_per_prompt, max_new_tokens, temperature, seed,
                    stop_event=stop_event)
    if len(groups) < len(prompts):
        return None
    records = [{"prompt": p, "responses": [s.text for s in g]} for p, g in zip(prompts, groups)]
    proxy, gold = score_proxy_and_gold(records, reward_model, gold_model)
    flat_prompts = [prompt_token_ids(tokenizer, p) for p, g in zip(prompts, groups) for _ in g]
    flat_answers = [s.tokens for g in groups for s in g]
    log_ratio = log_ratio_to_reference(model, flat_prompts, flat_answers, temperature=temperature,
                                       reference=reference)
    if was_training:
        model.train()
    rewards = torch.tensor([r for group in proxy for r in group])
    lengths = torch.tensor([float(s.num_tokens) for g in groups for s in g])
    metrics: dict[str, Any] = {
        "reward_mean": rewards.mean().item(), "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        "reward_se": _se(rewards), "kl": log_ratio.mean().item(), "kl_se": _se(log_ratio),
        "length_mean": lengths.mean().item(),
        "hit_limit_share": sum(s.hit_limit for g in groups for s in g) / len(lengths),
    }
    if gold is not None:
        gold_flat = torch.tensor([r for group in gold for r in group])
        metrics.update(gold_mean=gold_flat.mean().item(), gold_std=gold_flat.std().item() if len(gold_flat) > 1
                       else 0.0, gold_se=_se(gold_flat))
    metrics["answers"] = [
        {"prompt": p, "answer": g[0].text, "reward": proxy[i][0], "tokens": g[0].num_tokens,
         "hit_limit": g[0].hit_limit, **({"gold": gold[i][0]} if gold is not None else {})}
        for i, (p, g) in enumerate(zip(prompts, groups))
    ]
    return metrics


def _se(values: torch.Tensor) -> float:
    return values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0


def before_after(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Pair the held-out answers of the starting policy and of the trained one, prompt by prompt."""
    if not before or not after:
        return []
    rows = []
    for b, a in zip(before["answers"], after["answers"]):
        row = {"prompt": b["prompt"], "before": b["answer"], "after": a["answer"], "reward_before": b["reward"],
               "reward_after": a["reward"], "tokens_before": b["tokens"], "tokens_after": a["tokens"]}
        if "gold" in b:
            row.update(gold_before=b["gold"], gold_after=a["gold"])
        rows.append(row)
    return rows


def eval_event(metrics: dict[str, Any], step: int, total_steps: int, **extra) -> dict[str, Any]:
    """The "eval" event of the run contract (the answers stay out: they go to before/after)."""
    event = {k: v for k, v in metrics.items() if k != "answers"}
    event.update(event="eval", step=step, total_steps=total_steps, **extra)
    return event


# ----------------------------------------------------------------------------- output folder, saving, checkpoints


def check_policy_output(out_dir: Path, resume: bool, config: RLHFConfig, inputs: tuple = ()) -> bool:
    """Refuse an output folder where saving would lose something; True when it holds a finished policy.

    The same rules as a reward model's folder (rmcore.core.folders): only what rmcore wrote is replaced,
    and the output is none of the models the run reads (nor lies inside one) and none of `inputs`."""
    models = (config.reward_model, config.gold_model, config.policy)
    return check_output_folder(out_dir, resume, metadata_file=POLICY_METADATA_FILE, what="policy",
                               inputs=inputs, read_folders=models)


def save_policy(model, tokenizer, out_dir: str | os.PathLike, metadata: dict[str, Any],
                keep: tuple[str, ...] = ()) -> Path:
    """Save a plain HF causal-LM folder (LoRA merged into a copy, the live model is left as is) with the
    tokenizer and rmcore_policy.json, atomically (rmcore.core.folders.save_folder). `keep` names entries
    of the existing folder carried over (the checkpoint of a stopped run)."""
    def write(tmp: Path) -> None:
        plain = merged_copy(model)
        plain.config.pad_token_id = tokenizer.pad_token_id
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return save_folder(out_dir, write, metadata, metadata_file=POLICY_METADATA_FILE, keep=keep)


def sampling_policy(model):
    """What to sample from: a LoRA policy whose adapters have moved is merged into a copy first
    (weights W + BA), because live adapters add two small matmuls to every linear layer at every new
    token: 1.1x the generation time on 2 CPU cores (64 answers of 64 tokens, measured). The copy
    costs one policy's memory for as long as the sampling lasts."""
    if hasattr(model, "merge_and_unload") and _adapters_moved(model):
        return merged_copy(model).eval()
    return model


def merged_copy(model):
    """The policy as a plain transformers model: LoRA adapters merged into a copy of the weights."""
    import copy

    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload().float()
    return model.float()


def save_policy_checkpoint(out_dir: Path, model, optimizer, state: dict[str, Any]) -> None:
    """The run's checkpoint in OUT/checkpoint (rmcore.training.checkpoint): LoRA weights, optimizer, `state`."""
    save_checkpoint(Path(out_dir) / CHECKPOINT_DIR, model, state,
                    {"optimizer": optimizer.state_dict()} if optimizer is not None else None)


def load_policy_checkpoint(out_dir: Path, model, optimizer, key: str) -> dict[str, Any]:
    """Restore what save_policy_checkpoint wrote; refuse a checkpoint of another run."""
    state, saved = load_checkpoint(Path(out_dir) / CHECKPOINT_DIR, model, key,
                                   "policy, reward model, prompts or options; resume with the same ones (only "
                                   "--rounds may change)")
    if optimizer is not None and "optimizer" in saved:
        optimizer.load_state_dict(saved["optimizer"])
    return state


def run_key(config: RLHFConfig, policy_path: str, train_prompts: list, eval_prompts: list) -> str:
    """What a checkpoint must match to be resumed: every option but the number of rounds, and the prompts."""
    import hashlib

    options = {k: v for k, v in asdict(config).items() if k != "rounds"}
    options["policy_path"] = policy_path
    digest = hashlib.sha256(json.dumps([train_prompts, eval_prompts], sort_keys=True).encode()).hexdigest()[:16]
    return digest + ":" + json.dumps(options, sort_keys=True, default=str)


def policy_metadata(config: RLHFConfig, policy_name: str, *, steps: int, total_steps: int, stopped: bool,
                    history: list[dict[str, Any]], before_after_rows: list[dict[str, Any]],
                    train_prompts: int, eval_prompts: int, kl_handling: str) -> dict[str, Any]:
    """rmcore_policy.json: what produced the policy, how it went, and its answers before and after."""
    from rmcore import __version__

    return {
        "rmcore_version": __version__, "kind": "policy", "method": config.method, "base_policy": policy_name,
        "reward_model": config.reward_model, "gold_model": config.gold_model, "config": asdict(config),
        "kl_handling": kl_handling, "prompts": {"train": train_prompts, "eval": eval_prompts},
        "steps": steps, "total_steps": total_steps, "stopped": stopped,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "history": history, "before_after": before_after_rows,
    }


# ----------------------------------------------------------------------------- rejection sampling


RS_KL_HANDLING = (
    "rejection sampling: each round keeps, per prompt, the sample with the highest KL-regularised reward "
    "r(x, y) - kl_coef * log(pi(y|x) / pi_ref(y|x)) (the objective whose optimum is pi_ref * exp(r / kl_coef)), "
    "pi_ref being the starting policy (the LoRA adapters disabled); in round 1 pi = pi_ref so it is plain "
    "best-of-n, whose KL is at most log n - (n-1)/n. The KL reported is measured, not bounded: the mean of "
    "log pi/pi_ref over the policy's own held-out samples."
)


def train_rejection_sampling(config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir, *,
                             on_step: StepCallback | None = None, stop_event: threading.Event | None = None,
                             resume: bool = False) -> RLHFResult:
    """Rounds of: sample n answers per training prompt -> keep the best by the KL-regularised reward ->
    fine-tune the LoRA adapters on the picks (loss on the answer tokens only). Held-out evaluation
    before the first round and after each one; saves the merged policy with the before/after answers."""
    config.check()
    out_dir = Path(out_dir)
    replacing = check_policy_output(out_dir, resume, config)
    for path, what in ((config.reward_model, "reward model"), (config.gold_model, "gold model")):
        if path is not None:
            check_reward_model_folder(path, what)  # before anything is loaded or said
    run = _RejectionSampling(config, train_prompts, eval_prompts, out_dir, on_step, stop_event)
    if replacing:
        run.phase(f"{out_dir} holds a finished policy; it is replaced when this run saves")
    # 1. models: the policy with LoRA adapters, the proxy reward model, the gold judge
    run.load_models()
    # 2. where we are: a fresh run, or a checkpoint's round, picks and step
    run.restore(resume)
    # 3-5. the starting policy's held-out answers, then rounds of: sample and keep the best (3),
    # fine-tune on the picks (4), evaluate and checkpoint (5); a stop saves a checkpoint
    stopped = run.loop()
    # 6. save the merged policy with what produced it
    return run.save(stopped)


class _RejectionSampling:
    """The state of one rejection-sampling run, shared by the steps of `train_rejection_sampling`.

    `state` is what a checkpoint holds: the round, the step, the round's picks (None until sampled),
    the history of events and the held-out evaluations before training and after the last round.
    """

    def __init__(self, config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir: Path,
                 on_step: StepCallback | None, stop_event: threading.Event | None):
        self.config = config
        self.train_prompts, self.eval_prompts = train_prompts, eval_prompts
        self.out_dir = out_dir
        self.emit = on_step or (lambda event: None)
        self.stop_event = stop_event
        self.sampling = {"max_new_tokens": config.max_new_tokens, "temperature": config.temperature}
        self.steps_per_round = math.ceil(len(train_prompts) * config.keep / config.batch_size) * config.sft_epochs
        self.total_steps = self.steps_per_round * config.rounds

    def phase(self, text: str, progress: float | None = None) -> None:
        self.emit({"event": "phase", "phase": text, "progress": progress})

    # -- 1, 2: models and the run's state
    def load_models(self) -> None:
        from rmcore.model.reward_model import resolve_model_path
        from rmcore.policy.sampling import load_policy

        config = self.config
        self.phase("loading the policy and the reward models")
        torch.manual_seed(config.seed)
        self.reward_model = load_reward_model(config.reward_model, "reward model")
        self.gold_model = load_reward_model(config.gold_model, "gold model")
        self.policy_path, self.policy_name = resolve_model_path(config.policy)
        base, self.tokenizer, _ = load_policy(config.policy)
        self.model = add_lora(base, config)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate(), weight_decay=0.0)

    def restore(self, resume: bool) -> None:
        key = run_key(self.config, self.policy_path, self.train_prompts, self.eval_prompts)
        self.state: dict[str, Any] = {"run_key": key, "round": 0, "step": 0, "picks": None, "history": [],
                                      "before": None, "last_eval": None}
        if resume:
            self.state = load_policy_checkpoint(self.out_dir, self.model, self.optimizer, key)
            self.phase(f"resumed at step {self.state['step']} (round {self.state['round'] + 1})")
        self.history: list[dict[str, Any]] = self.state["history"]
        self.started = time.perf_counter()
        self.steps_at_start = self.state["step"]

    # -- 3-5: the rounds
    def loop(self) -> bool:
        """Every round still to run; True when a stop request or Ctrl-C ended the run (checkpoint saved)."""
        state = self.state
        if state["before"] is None and self.eval_prompts:
            state["before"] = self.evaluate(0, 0)  # the starting policy, so curves start where training starts
            state["last_eval"] = state["before"]
        try:
            stopped = self._rounds()
        except KeyboardInterrupt:
            stopped = True
        if stopped:
            self.phase(f"stopped at step {state['step']}; saving a checkpoint")
            save_policy_checkpoint(self.out_dir, self.model, self.optimizer, state)
        return stopped

    def _rounds(self) -> bool:
        state, rounds = self.state, self.config.rounds
        while state["round"] < rounds:
            round_index = state["round"]
            if state["picks"] is None and not self.sample_and_pick(round_index):
                return True
            if not self.fine_tune(round_index):
                return True
            # the end of a round: held-out evaluation, next round samples from the new policy
            state["round"] += 1
            state["picks"] = None
            metrics = self.evaluate(state["step"], state["round"])
            if metrics is None:
                return True
            state["last_eval"] = metrics
            if state["round"] < rounds:
                save_policy_checkpoint(self.out_dir, self.model, self.optimizer, state)
        return False

    def sample_and_pick(self, round_index: int) -> bool:
        """3. Sample n answers per prompt and keep the best by the KL-regularised reward; False if stopped."""
        from rmcore.policy.sampling import sample

        config, prompts = self.config, self.train_prompts
        self.phase(f"round {round_index + 1}/{config.rounds}: sampling {config.n} answers for each of "
                   f"{len(prompts)} prompts", self.state["step"] / self.total_steps)
        self.model.eval()
        groups = sample(sampling_policy(self.model), self.tokenizer, prompts, config.n,
                        seed=config.seed + 1000 * (round_index + 1),
                        stop_event=self.stop_event, **self.sampling)
        if len(groups) < len(prompts):
            return False
        self.state["picks"], pick_stats = _pick_best(self.model, self.tokenizer, self.reward_model, prompts, groups,
                                                     config)
        kept = "the best" if config.keep == 1 else f"the best {config.keep}"
        self.emit({"event": "phase", "phase": f"round {round_index + 1}: kept {kept} of {config.n} for each "
                   "prompt", "progress": self.state["step"] / self.total_steps, **pick_stats})
        return True

    def fine_tune(self, round_index: int) -> bool:
        """4. Supervised fine-tuning on the round's picks; False when a stop request came before the last step."""
        self.model.train()
        round_end = (round_index + 1) * self.steps_per_round
        while self.state["step"] < round_end:
            self.sft_step(round_index)
            stop = self.stop_event is not None and self.stop_event.is_set()
            if stop and self.state["step"] < self.total_steps:
                return False
        return True

    def sft_step(self, round_index: int) -> None:
        """One optimizer step on a batch of picks: the loss is the mean NLL of the answer tokens only."""
        from rmcore.policy.sampling import prompt_token_ids

        config, state = self.config, self.state
        chosen = self._batch_of_picks(round_index)
        t0 = time.perf_counter()
        prompt_ids = [prompt_token_ids(self.tokenizer, p["prompt"]) for p in chosen]
        nll = -answer_log_probs(self.model, prompt_ids, [p["tokens"] for p in chosen], reduce="mean",
                                batch_size=config.batch_size)
        loss = nll.mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {loss.item()} at step {state['step'] + 1}; try a smaller --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        last = state["last_eval"] or {}
        event = {"event": "step", "step": state["step"], "total_steps": self.total_steps, "round": round_index + 1,
                 "loss": loss.item(), "lr": config.learning_rate(),
                 "tokens_per_s": sum(len(p["tokens"]) for p in chosen) / max(time.perf_counter() - t0, 1e-9),
                 "progress": state["step"] / self.total_steps, "elapsed_s": time.perf_counter() - self.started,
                 "eta_s": self._eta(state["step"]),
                 **{k: last[k] for k in ("reward_mean", "gold_mean", "kl", "length_mean") if k in last}}
        self.history.append(event)
        self.emit(event)

    def _batch_of_picks(self, round_index: int) -> list[dict[str, Any]]:
        """The picks of the current step; an epoch's order depends on (seed, round, epoch) only."""
        config, picks = self.config, self.state["picks"]
        batches_per_epoch = math.ceil(len(picks) / config.batch_size)
        epoch, batch = divmod(self.state["step"] - round_index * self.steps_per_round, batches_per_epoch)
        order = list(range(len(picks)))
        random.Random(config.seed * 7 + round_index * 131 + epoch).shuffle(order)
        return [picks[i] for i in order[batch * config.batch_size : (batch + 1) * config.batch_size]]

    def evaluate(self, step: int, round_done: int) -> dict[str, Any] | None:
        """5. Held-out reward, gold, KL and length; emits an "eval" event. None when stopped part-way."""
        self.phase(f"evaluating on {len(self.eval_prompts)} held-out prompts", step / self.total_steps)
        metrics = evaluate_policy(self.model, self.tokenizer, self.eval_prompts, self.reward_model, self.gold_model,
                                  samples_per_prompt=self.config.eval_samples, seed=self.config.seed + 7919,
                                  stop_event=self.stop_event, **self.sampling)
        if metrics is not None:
            metrics["step"] = step
            event = eval_event(metrics, step, self.total_steps, round=round_done, progress=step / self.total_steps,
                               elapsed_s=time.perf_counter() - self.started, eta_s=self._eta(step))
            self.history.append(event)
            self.emit(event)
        return metrics

    def _eta(self, step: int) -> float | None:
        """Seconds left at the pace of the steps run in this process (None before the first)."""
        done_here = step - self.steps_at_start
        elapsed = time.perf_counter() - self.started
        return elapsed / done_here * (self.total_steps - step) if done_here > 0 else None

    # -- 6: save
    def save(self, stopped: bool) -> RLHFResult:
        state, out_dir, total_steps = self.state, self.out_dir, self.total_steps
        self.phase("saving the policy")
        # after = the held-out answers of the policy as saved (a run stopped mid-round has none: no pairs)
        last_eval = state["last_eval"]
        current = last_eval is not None and last_eval.get("step") == state["step"] and state["step"] > 0
        rows = before_after(state["before"], last_eval if current else None)
        metadata = policy_metadata(self.config, self.policy_name, steps=state["step"], total_steps=total_steps,
                                   stopped=stopped, history=self.history, before_after_rows=rows,
                                   train_prompts=len(self.train_prompts), eval_prompts=len(self.eval_prompts),
                                   kl_handling=RS_KL_HANDLING)
        save_policy(self.model, self.tokenizer, out_dir, metadata, keep=(CHECKPOINT_DIR,) if stopped else ())
        if not stopped:
            shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        self.emit({"event": "done", "step": state["step"], "total_steps": total_steps, "stopped": stopped,
                   "out_dir": str(out_dir), "progress": state["step"] / total_steps, "eta_s": 0.0})
        return RLHFResult(out_dir, state["step"], stopped, self.history, rows)


def _pick_best(model, tokenizer, reward_model, prompts: list, groups, config: RLHFConfig
               ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per prompt, the `config.keep` samples with the highest r - kl_coef * log(pi/pi_ref); and how the
    picks compare with all samples."""
    from rmcore.policy.best_of_n import score_samples
    from rmcore.policy.sampling import prompt_token_ids

    records = [{"prompt": p, "responses": [s.text for s in g]} for p, g in zip(prompts, groups)]
    rewards = score_samples(records, reward_model)
    log_ratio = None
    if config.kl_coef > 0 and hasattr(model, "disable_adapter") and _adapters_moved(model):
        flat_prompts = [prompt_token_ids(tokenizer, p) for p, g in zip(prompts, groups) for _ in g]
        flat_answers = [s.tokens for g in groups for s in g]
        log_ratio = log_ratio_to_reference(model, flat_prompts, flat_answers, temperature=config.temperature)
        log_ratio = log_ratio.view(len(prompts), -1).tolist()
    picks, all_rewards = [], []
    for i, (prompt, group) in enumerate(zip(prompts, groups)):
        regularised = [r - (config.kl_coef * log_ratio[i][j] if log_ratio else 0.0) for j, r in enumerate(rewards[i])]
        best_first = sorted(range(len(group)), key=regularised.__getitem__, reverse=True)
        picks += [{"prompt": prompt, "tokens": group[j].tokens, "text": group[j].text, "reward": rewards[i][j]}
                  for j in best_first[: config.keep]]
        all_rewards.extend(rewards[i])
    return picks, {"sample_reward_mean": sum(all_rewards) / len(all_rewards),
                   "pick_reward_mean": sum(p["reward"] for p in picks) / len(picks)}


def _adapters_moved(model) -> bool:
    """False while every LoRA B matrix is still zero (the policy is exactly the starting one)."""
    return any(p.abs().sum().item() > 0 for n, p in model.named_parameters() if "lora_B" in n)
