"""Evaluate a reward model on held-out ranked data: is it right, is it calibrated, is it biased?"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rmcore.data import RankedGroup
from rmcore.model import RewardModel, sigmoid


@dataclass
class EvalResult:
    summary: dict[str, Any]  # the numbers (JSON-ready): accuracy, by_rank_gap, calibration, ...
    responses: list[dict[str, Any]]  # one row per response: group, prompt, response, rank, reward, length
    pairs: list[dict[str, Any]]  # one row per ordered pair: winner/loser rewards, p = sigma(r_w - r_l)


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)


def calibration_bins(pairs: list[dict[str, Any]], bins: int = 10) -> list[dict[str, Any]]:
    """Predicted P(first preferred) against how often it was, in equal-width bins.

    Each comparison counts in both orientations, (p, preferred) and (1 - p, not preferred), so the
    curve does not depend on which response a file happened to list first.
    """
    counts = [[0, 0.0, 0] for _ in range(bins)]  # n, sum of predicted, observed preferred
    for pair in pairs:
        for p, observed in ((pair["p"], 1), (1.0 - pair["p"], 0)):
            b = min(int(p * bins), bins - 1)
            counts[b][0] += 1
            counts[b][1] += p
            counts[b][2] += observed
    return [
        {"bin_low": b / bins, "bin_high": (b + 1) / bins, "count": n,
         "predicted": s / n if n else None, "observed": o / n if n else None}
        for b, (n, s, o) in enumerate(counts)
    ]


def evaluate(model: RewardModel, groups: list[RankedGroup], batch_size: int = 8,
             on_progress: Callable[[float], None] | None = None) -> EvalResult:
    """Pairwise accuracy over every strictly ordered pair, by rank gap, calibration and length bias.

    `on_progress(share)` reports the share of tokens scored so far (see RewardModel.rewards_for).
    """
    encoded = [model.encode(g.prompt, g.responses) for g in groups]
    for enc, group in zip(encoded, groups):
        enc.ranks = list(group.ranks)
        enc.margin = group.margin
    rewards = model.rewards_for(encoded, batch_size=batch_size, on_progress=on_progress)
    responses, pairs = [], []
    for gi, (group, enc, rs) in enumerate(zip(groups, encoded, rewards)):
        for k, (text, rank, r) in enumerate(zip(group.responses, group.ranks, rs)):
            responses.append({"group": gi, "prompt": group.prompt_text, "response": text, "rank": rank,
                              "reward": r, "tokens": len(enc.response_ids[k]), "chars": len(text)})
        for w, l in group.pairs():
            diff = rs[w] - rs[l]
            pairs.append({"group": gi, "prompt": group.prompt_text, "winner": group.responses[w],
                          "loser": group.responses[l], "winner_rank": group.ranks[w], "loser_rank": group.ranks[l],
                          "rank_gap": group.ranks[l] - group.ranks[w], "reward_winner": rs[w], "reward_loser": rs[l],
                          "margin": diff, "p": sigmoid(diff), "correct": diff > 0, "source": group.source})
    by_gap: dict[int, list[bool]] = {}
    for pair in pairs:
        by_gap.setdefault(pair["rank_gap"], []).append(pair["correct"])
    all_rewards = [r["reward"] for r in responses]
    best = [r["reward"] for r in responses if r["rank"] == 1]
    rest = [r["reward"] for r in responses if r["rank"] is not None and r["rank"] > 1]
    n = len(pairs)
    log_loss = sum(-math.log(max(p["p"], 1e-12)) for p in pairs) / n if n else None
    summary = {
        "model": model.name,
        "trained": model.trained,
        "prompts": len(groups),
        "responses": len(responses),
        "comparisons": n,
        "accuracy": sum(p["correct"] for p in pairs) / n if n else None,
        "mean_log_loss": log_loss,
        "mean_margin": statistics.fmean(p["margin"] for p in pairs) if n else None,
        "by_rank_gap": {
            str(g): {"comparisons": len(v), "accuracy": sum(v) / len(v)} for g, v in sorted(by_gap.items())
        },
        "calibration": calibration_bins(pairs),
        "length_correlation": _pearson([float(r["tokens"]) for r in responses], all_rewards),
        "best_of_group_accuracy": _best_of_group_accuracy(groups, rewards),
        "rewards": {
            "mean": statistics.fmean(all_rewards) if all_rewards else None,
            "std": statistics.pstdev(all_rewards) if len(all_rewards) > 1 else None,
            "min": min(all_rewards, default=None),
            "max": max(all_rewards, default=None),
            "best_mean": statistics.fmean(best) if best else None,
            "others_mean": statistics.fmean(rest) if rest else None,
        },
    }
    return EvalResult(summary, responses, pairs)


def _best_of_group_accuracy(groups: list[RankedGroup], rewards: list[list[float]]) -> float | None:
    """How often the top-reward response is one people ranked best (best-of-n selection)."""
    hits = total = 0
    for group, rs in zip(groups, rewards):
        ranked = [i for i, r in enumerate(group.ranks) if r is not None]
        if len(ranked) < 2:
            continue
        top = min(group.ranks[i] for i in ranked)
        pick = max(ranked, key=lambda i: rs[i])
        hits += group.ranks[pick] == top
        total += 1
    return hits / total if total else None


def worst_pairs(result: EvalResult, n: int = 10) -> list[dict[str, Any]]:
    """The comparisons the model gets most wrong (largest r_l - r_w)."""
    return sorted(result.pairs, key=lambda p: p["margin"])[:n]
