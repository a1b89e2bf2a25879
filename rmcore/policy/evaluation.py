"""How far a policy has moved, and what it bought: log-probabilities of answers, the KL to the starting
policy, and the held-out evaluation (mean reward, gold, KL, length) with its before/after answers."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch

from rmcore.policy.best_of_n import score_proxy_and_gold
from rmcore.policy.models import sampling_policy
from rmcore.policy.sampling import prompt_token_ids, sample

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
                    stop_event: threading.Event | None = None,
                    on_progress: Callable[[float, int], None] | None = None) -> dict[str, Any] | None:
    """Sample the held-out prompts and measure: mean proxy reward (and gold), KL to the starting policy
    (a Monte Carlo estimate: the mean of log pi/pi_ref over the policy's own samples), answer length.

    Always the same seed, so two evaluations of a run draw with the same random numbers and their
    difference is the policy's. `answers` holds the first answer of each prompt with its rewards,
    for before/after tables. None when stopped part-way. `on_progress(prompts_done, total)`: the sampling's
    progress (most of the time; scoring and the KL follow in a few seconds).
    """
    if not prompts:
        return None
    was_training = model.training
    model.eval()
    groups = sample(sampling_policy(model), tokenizer, prompts, samples_per_prompt, max_new_tokens, temperature, seed,
                    stop_event=stop_event, on_progress=on_progress)
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
    metrics = _metrics(groups, proxy, gold, log_ratio)
    metrics["answers"] = [
        {"prompt": p, "answer": g[0].text, "reward": proxy[i][0], "tokens": g[0].num_tokens,
         "hit_limit": g[0].hit_limit, **({"gold": gold[i][0]} if gold is not None else {})}
        for i, (p, g) in enumerate(zip(prompts, groups))
    ]
    return metrics


def _metrics(groups, proxy: list[list[float]], gold: list[list[float]] | None,
             log_ratio: torch.Tensor) -> dict[str, Any]:
    """Means (with spread and standard error) of the held-out samples' rewards, KL and length."""
    rewards = torch.tensor([r for group in proxy for r in group])
    lengths = torch.tensor([float(s.num_tokens) for g in groups for s in g])
    metrics: dict[str, Any] = {
        "reward_mean": rewards.mean().item(), "reward_std": _std(rewards), "reward_se": _se(rewards),
        "kl": log_ratio.mean().item(), "kl_se": _se(log_ratio), "length_mean": lengths.mean().item(),
        "hit_limit_share": sum(s.hit_limit for g in groups for s in g) / len(lengths),
    }
    if gold is not None:
        gold_flat = torch.tensor([r for group in gold for r in group])
        metrics.update(gold_mean=gold_flat.mean().item(), gold_std=_std(gold_flat), gold_se=_se(gold_flat))
    return metrics


def _std(values: torch.Tensor) -> float:
    return values.std().item() if len(values) > 1 else 0.0


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
