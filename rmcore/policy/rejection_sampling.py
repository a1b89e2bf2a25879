"""Rejection-sampling fine-tuning: rounds of (sample n answers per training prompt -> keep the best by
the KL-regularised reward -> supervised fine-tuning of LoRA adapters on the picks).

The run contract (events, stop and resume, held-out evaluation, the atomic save) is rmcore.policy.run's;
this module says what one round does. A checkpoint holds the LoRA weights, the optimizer and the
round, step and picks, so a resumed run finishes as an uninterrupted one would.
"""

from __future__ import annotations

import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import torch

from rmcore.core.errors import TrainingError
from rmcore.policy.best_of_n import score_samples
from rmcore.policy.config import RLHFConfig, RLHFResult, StepCallback
from rmcore.policy.evaluation import answer_log_probs, log_ratio_to_reference
from rmcore.policy.models import adapters_moved, add_lora, sampling_policy
from rmcore.policy.run import PolicyRun
from rmcore.policy.sampling import prompt_token_ids, sample
from rmcore.policy.saving import load_policy_checkpoint, save_policy_checkpoint

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
    run = RejectionSampling(config, train_prompts, eval_prompts, Path(out_dir), on_step, stop_event)
    return run.run(resume)


class RejectionSampling(PolicyRun):
    """`state` adds the round, the step and the round's picks (None until sampled)."""

    kl_handling = RS_KL_HANDLING

    def __init__(self, config: RLHFConfig, train_prompts: list, eval_prompts: list, out_dir: Path,
                 on_step: StepCallback | None = None, stop_event: threading.Event | None = None):
        super().__init__(config, train_prompts, eval_prompts, out_dir, on_step, stop_event)
        self.steps_per_round = math.ceil(len(train_prompts) * config.keep / config.batch_size) * config.sft_epochs
        self.total_steps = self.steps_per_round * config.rounds

    @property
    def step(self) -> int:
        return self.state["step"]

    def load_models(self) -> None:
        super().load_models()
        self.model = add_lora(self.policy, self.config)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.learning_rate(), weight_decay=0.0)

    def fresh_state(self) -> dict[str, Any]:
        return {"round": 0, "step": 0, "picks": None}

    def read_checkpoint(self, key: str) -> dict[str, Any]:
        state = load_policy_checkpoint(self.out_dir, self.model, self.optimizer, key)
        self.phase(f"resumed at step {state['step']} (round {state['round'] + 1})")
        return state

    def save_checkpoint(self) -> None:
        save_policy_checkpoint(self.out_dir, self.model, self.optimizer, self.state)

    def train(self) -> bool:
        """The rounds still to run: sample and keep the best, fine-tune on the picks, evaluate and
        checkpoint; True when a stop request ended the run."""
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
            if self.eval_prompts:  # without held-out prompts (--eval-fraction 0) there is nothing to evaluate
                metrics = self.evaluate(state["step"], state["round"])
                if metrics is None:  # stopped during the evaluation
                    return True
                state["last_eval"] = metrics
            if state["round"] < rounds:
                self.save_checkpoint()
        return False

    def sample_and_pick(self, round_index: int) -> bool:
        """Sample n answers per prompt and keep the best by the KL-regularised reward; False if stopped."""
        config, prompts = self.config, self.train_prompts
        what = (f"round {round_index + 1}/{config.rounds}: sampling {config.n} answers for each of "
                f"{len(prompts)} prompts")
        self.phase(what, self.progress(self.step))
        self.model.eval()
        groups = sample(sampling_policy(self.model), self.tokenizer, prompts, config.n, config.max_new_tokens,
                        config.temperature, seed=config.seed + 1000 * (round_index + 1), stop_event=self.stop,
                        on_progress=self.sampling_progress(what))
        if len(groups) < len(prompts):
            return False
        self.state["picks"], pick_stats = pick_best(self.model, self.tokenizer, self.reward_model, prompts, groups,
                                                    config)
        kept = "the best" if config.keep == 1 else f"the best {config.keep}"
        self.emit({"event": "phase", "phase": f"round {round_index + 1}: kept {kept} of {config.n} for each "
                   "prompt", "progress": self.progress(self.step), **pick_stats})
        return True

    def fine_tune(self, round_index: int) -> bool:
        """Supervised fine-tuning on the round's picks; False when a stop request came before the last step."""
        self.model.train()
        round_end = (round_index + 1) * self.steps_per_round
        while self.step < round_end:
            self.sft_step(round_index)
            if self.stop.is_set() and self.step < self.total_steps:
                return False
        return True

    def sft_step(self, round_index: int) -> None:
        """One optimizer step on a batch of picks: the loss is the mean NLL of the answer tokens only."""
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
        tokens_per_s = sum(len(p["tokens"]) for p in chosen) / max(time.perf_counter() - t0, 1e-9)
        self.step_event(state["step"], round_index + 1,
                        {"loss": loss.item(), "lr": config.learning_rate(), "tokens_per_s": tokens_per_s})

    def _batch_of_picks(self, round_index: int) -> list[dict[str, Any]]:
        """The picks of the current step; an epoch's order depends on (seed, round, epoch) only."""
        config, picks = self.config, self.state["picks"]
        batches_per_epoch = math.ceil(len(picks) / config.batch_size)
        epoch, batch = divmod(self.step - round_index * self.steps_per_round, batches_per_epoch)
        order = list(range(len(picks)))
        random.Random(config.seed * 7 + round_index * 131 + epoch).shuffle(order)
        return [picks[i] for i in order[batch * config.batch_size : (batch + 1) * config.batch_size]]


def pick_best(model, tokenizer, reward_model, prompts: list, groups, config: RLHFConfig
              ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per prompt, the `config.keep` samples with the highest r - kl_coef * log(pi/pi_ref); and how the
    picks compare with all samples."""
    records = [{"prompt": p, "responses": [s.text for s in g]} for p, g in zip(prompts, groups)]
    rewards = score_samples(records, reward_model)
    log_ratio = None
    if config.kl_coef > 0 and hasattr(model, "disable_adapter") and adapters_moved(model):
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
