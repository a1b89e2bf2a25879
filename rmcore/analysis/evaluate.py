"""Evaluate a reward model on held-out ranked data: is it right, is it calibrated, what does it reward?

Every accuracy comes with its binomial standard error and the accuracy of the simplest rival, "the
longer answer wins" (the length-only baseline): a reward model that does not beat it may only have
learned length. `compare` tells whether one model is better than another on the same data, with a
paired bootstrap interval over prompts (pairs of one prompt share their answers, so they are not
independent draws).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmcore.core.progress import count
from rmcore.data import RankedGroup
from rmcore.data.ranking import pair_loss
from rmcore.data.records import read_path
from rmcore.model.reward_model import RewardModel, sigmoid

CLOSE_LENGTH = 0.1  # two answers are "of similar length" when they differ by at most 10% of the longer
TRACKS_LENGTH_AGREEMENT = 0.8  # share of pairs where the model prefers the longer answer, to warn
TRACKS_LENGTH_CORRELATION = 0.6  # |corr(reward, tokens)| to warn
CATEGORY_COLUMNS = ("category", "subset")  # RewardBench-style columns a per-category report reads


@dataclass
class EvalResult:
    summary: dict[str, Any]  # the numbers (JSON-ready): accuracy, by_rank_gap, calibration, ...
    responses: list[dict[str, Any]]  # one row per response: group, prompt, response, rank, reward, length
    pairs: list[dict[str, Any]]  # one row per ordered pair: winner/loser rewards, p = sigma(r_w - r_l)


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return statistics.correlation(xs, ys)


def binomial_se(accuracy: float | None, n: int) -> float | None:
    """Standard error of a share measured on n independent trials: sqrt(p (1 - p) / n)."""
    if accuracy is None or n <= 0:
        return None
    return math.sqrt(accuracy * (1 - accuracy) / n)


def _share(hits: list[float]) -> dict[str, Any]:
    """{"accuracy", "se", "comparisons"} of a list of 1 (right), 0 (wrong) and 0.5 (a tie)."""
    n = len(hits)
    accuracy = sum(hits) / n if n else None
    return {"accuracy": accuracy, "se": binomial_se(accuracy, n), "comparisons": n}


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
             on_progress: Callable[[float], None] | None = None,
             categories: list[str | None] | None = None) -> EvalResult:
    """Pairwise accuracy over every strictly ordered pair, by rank gap, calibration and length bias.

    `on_progress(share)` reports the share of tokens scored so far (see RewardModel.rewards_for).
    `categories` (one per group, see `categories_for`) adds accuracy per category.
    """
    encoded = [model.encode(g.prompt, g.responses) for g in groups]
    for enc, group in zip(encoded, groups):
        enc.ranks = list(group.ranks)
        enc.margin = group.margin
    rewards = model.rewards_for(encoded, batch_size=batch_size, on_progress=on_progress)
    tokens = [[len(ids) for ids in enc.response_ids] for enc in encoded]
    return result_from_rewards(groups, rewards, tokens, model.name, model.trained, categories)


def result_from_rewards(groups: list[RankedGroup], rewards: list[list[float]], tokens: list[list[int]] | None = None,
                        name: str = "", trained: bool = True,
                        categories: list[str | None] | None = None) -> EvalResult:
    """Every metric from the rewards of each group's responses (no model needed: ensembles and tests
    use it directly). `tokens` are the responses' token counts as scored (default: characters)."""
    tokens = tokens or [[len(text) for text in g.responses] for g in groups]
    responses, pairs = _scored_rows(groups, rewards, tokens, categories)
    n = len(pairs)
    accuracy = sum(p["correct"] for p in pairs) / n if n else None
    summary = {
        "model": name,
        "trained": trained,
        "prompts": len(groups),
        "responses": len(responses),
        "comparisons": n,
        "accuracy": accuracy,
        "accuracy_se": binomial_se(accuracy, n),
        "length_baseline": length_baseline(pairs),
        # training's loss per comparison (no margin), averaged over comparisons: rmcore.training.loss
        "mean_log_loss": sum(pair_loss(p["margin"]) for p in pairs) / n if n else None,
        "mean_margin": statistics.fmean(p["margin"] for p in pairs) if n else None,
        "by_rank_gap": _by_rank_gap(pairs),
        "calibration": calibration_bins(pairs),
        "length_correlation": _pearson([float(r["tokens"]) for r in responses], [r["reward"] for r in responses]),
        "length_agreement": length_agreement(pairs),
        "length_controlled": length_controlled(pairs),
        "length_logistic": length_logistic_accuracy(pairs),
        "best_of_group_accuracy": _best_of_group_accuracy(groups, rewards),
        "ranking": ranking_metrics(groups, rewards),
        "by_category": by_category(pairs) if categories else None,
        "rewards": _reward_statistics(responses),
    }
    summary["length_warning"] = length_warning(summary)
    return EvalResult(summary, responses, pairs)


def _scored_rows(groups: list[RankedGroup], rewards: list[list[float]], tokens: list[list[int]],
                 categories: list[str | None] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per response (its rank, reward, length) and one per strictly ordered pair (who won, by how much)."""
    responses, pairs = [], []
    for gi, (group, rs) in enumerate(zip(groups, rewards)):
        for k, (text, rank, r) in enumerate(zip(group.responses, group.ranks, rs)):
            responses.append({"group": gi, "prompt": group.prompt_text, "response": text, "rank": rank,
                              "reward": r, "tokens": tokens[gi][k], "chars": len(text)})
        for w, l in group.pairs():
            diff = rs[w] - rs[l]
            pairs.append({"group": gi, "prompt": group.prompt_text, "winner": group.responses[w],
                          "loser": group.responses[l], "winner_rank": group.ranks[w], "loser_rank": group.ranks[l],
                          "rank_gap": group.ranks[l] - group.ranks[w], "reward_winner": rs[w], "reward_loser": rs[l],
                          "margin": diff, "p": sigmoid(diff), "correct": diff > 0, "source": group.source,
                          "winner_chars": len(group.responses[w]), "loser_chars": len(group.responses[l]),
                          "category": categories[gi] if categories else None})
    return responses, pairs


def _by_rank_gap(pairs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy for each rank gap (1: neighbours in the ranking; larger gaps should be easier)."""
    by_gap: dict[int, list[bool]] = {}
    for pair in pairs:
        by_gap.setdefault(pair["rank_gap"], []).append(pair["correct"])
    return {str(g): {"comparisons": len(v), "accuracy": sum(v) / len(v), "se": binomial_se(sum(v) / len(v), len(v))}
            for g, v in sorted(by_gap.items())}


def _reward_statistics(responses: list[dict[str, Any]]) -> dict[str, float | None]:
    """The rewards' mean, spread and range, and the mean of the human-best answers against the others."""
    all_rewards = [r["reward"] for r in responses]
    best = [r["reward"] for r in responses if r["rank"] == 1]
    rest = [r["reward"] for r in responses if r["rank"] is not None and r["rank"] > 1]
    return {
        "mean": statistics.fmean(all_rewards) if all_rewards else None,
        "std": statistics.pstdev(all_rewards) if len(all_rewards) > 1 else None,
        "min": min(all_rewards, default=None),
        "max": max(all_rewards, default=None),
        "best_mean": statistics.fmean(best) if best else None,
        "others_mean": statistics.fmean(rest) if rest else None,
    }


# ----------------------------------------------------------------------------- length


def length_baseline(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """"The longer answer wins" (in characters; equal lengths count half): the rival every accuracy
    is shown beside. Characters, not tokens, so truncation to the model's max length cannot tie them."""
    hits = [0.5 if p["winner_chars"] == p["loser_chars"] else float(p["winner_chars"] > p["loser_chars"])
            for p in pairs]
    return _share(hits)


def length_baseline_of_groups(groups: list[RankedGroup]) -> dict[str, Any]:
    """`length_baseline` straight from ranked groups, no model needed (training records it for the
    held-out prompts, so the model card can show it beside the held-out accuracy)."""
    hits = [0.5 if len(g.responses[w]) == len(g.responses[l]) else float(len(g.responses[w]) > len(g.responses[l]))
            for g in groups for w, l in g.pairs()]
    return _share(hits)


def length_agreement(pairs: list[dict[str, Any]]) -> float | None:
    """Share of pairs of different lengths where the model gives the longer answer the higher reward."""
    votes = [(p["margin"] > 0) == (p["winner_chars"] > p["loser_chars"])
             for p in pairs if p["winner_chars"] != p["loser_chars"] and p["margin"] != 0]
    return sum(votes) / len(votes) if votes else None


def _close(pair: dict[str, Any], tolerance: float) -> bool:
    longer = max(pair["winner_chars"], pair["loser_chars"], 1)
    return abs(pair["winner_chars"] - pair["loser_chars"]) <= tolerance * longer


def length_controlled(pairs: list[dict[str, Any]], tolerance: float = CLOSE_LENGTH) -> dict[str, Any]:
    """The model's accuracy on pairs whose lengths differ by at most `tolerance` of the longer one,
    where length cannot explain a preference (and the length baseline is near 0.5 by construction)."""
    close = [p for p in pairs if _close(p, tolerance)]
    out = _share([float(p["correct"]) for p in close])
    out["max_relative_difference"] = tolerance
    out["length_baseline"] = length_baseline(close)["accuracy"]
    return out


def _length_features(pair: dict[str, Any]) -> tuple[float, float]:
    """(difference in thousands of characters, difference of log characters), winner minus loser."""
    w, l = pair["winner_chars"], pair["loser_chars"]
    return (w - l) / 1000.0, math.log1p(w) - math.log1p(l)


def _fit_logistic(rows: list[tuple[tuple[float, float], int]], l2: float = 1e-3,
                  steps: int = 25) -> tuple[float, float]:
    """Logistic regression without intercept on two features, by Newton's method (a 2 x 2 system)."""
    a = b = 0.0
    for _ in range(steps):
        g0 = g1 = h00 = h01 = h11 = 0.0
        for (x0, x1), y in rows:
            p = sigmoid(a * x0 + b * x1)
            g0 += (p - y) * x0
            g1 += (p - y) * x1
            w = p * (1 - p)
            h00, h01, h11 = h00 + w * x0 * x0, h01 + w * x0 * x1, h11 + w * x1 * x1
        g0, g1, h00, h11 = g0 + l2 * a, g1 + l2 * b, h00 + l2, h11 + l2
        det = h00 * h11 - h01 * h01
        if det <= 1e-12:
            break
        a, b = a - (h11 * g0 - h01 * g1) / det, b - (h00 * g1 - h01 * g0) / det
    return a, b


def length_logistic_accuracy(pairs: list[dict[str, Any]], folds: int = 5) -> dict[str, Any]:
    """Held-out accuracy of a logistic model that sees only the two lengths (their difference and
    the difference of their logs), fitted on the other folds of prompts: how far length alone goes
    when it may learn "shorter wins" as well as "longer wins"."""
    if len({p["group"] for p in pairs}) < folds:
        return {"accuracy": None, "se": None, "comparisons": len(pairs), "folds": folds}
    hits = []
    for fold in range(folds):
        train = [p for p in pairs if p["group"] % folds != fold]
        test = [p for p in pairs if p["group"] % folds == fold]
        rows = []
        for p in train:  # each pair both ways round, so no intercept is needed
            x0, x1 = _length_features(p)
            rows += [((x0, x1), 1), ((-x0, -x1), 0)]
        a, b = _fit_logistic(rows)
        for p in test:
            x0, x1 = _length_features(p)
            score = a * x0 + b * x1
            hits.append(0.5 if score == 0 else float(score > 0))
    out = _share(hits)
    out["folds"] = folds
    return out


def against_length(accuracy: float, se: float, baseline: float) -> str:
    """The accuracy against "the longer answer wins", said as a test a non-engineer can read: significantly
    better (its interval of two standard errors lies above the baseline), not significantly better, or
    significantly worse."""
    low, high = accuracy - 2 * se, accuracy + 2 * se
    interval = f"{accuracy:.3f} ± {se:.3f}, so likely between {max(0.0, low):.3f} and {min(1.0, high):.3f}"
    longer = f"the {baseline:.3f} that \u201cthe longer answer wins\u201d gets"
    if high < baseline:
        return f"Its accuracy ({interval}) is significantly worse than {longer}."
    if low <= baseline:
        return (f"Its accuracy ({interval}) is not significantly better than {longer}: the difference is within "
                "two standard errors, so on this data the model has not shown that it learned more than length.")
    return f"Its accuracy ({interval}) is significantly better than {longer}."


def length_warning(summary: dict[str, Any]) -> str | None:
    """Plain words when the reward mostly tracks length, or does no better than length alone; else None.
    The CLI prints it and the app shows it: one text for both."""
    agreement, corr = summary.get("length_agreement"), summary.get("length_correlation")
    baseline = (summary.get("length_baseline") or {}).get("accuracy")
    if summary.get("accuracy") is None:
        return None
    accuracy, se = summary["accuracy"], summary.get("accuracy_se") or 0.0
    tracks = (agreement is not None and agreement >= TRACKS_LENGTH_AGREEMENT) or (
        corr is not None and abs(corr) >= TRACKS_LENGTH_CORRELATION)
    if not tracks:
        if baseline is not None and accuracy <= baseline + 2 * se:
            return against_length(accuracy, se, baseline)
        return None
    parts = ["This reward mostly tracks length:"]
    if agreement is not None:
        parts.append(f"it gives the longer answer the higher reward in {agreement:.0%} of the pairs whose lengths "
                     "differ" + ("," if corr is not None else "."))
    if corr is not None:
        parts.append(f"{'and its' if agreement is not None else 'its'} correlation with the answer's length is "
                     f"{corr:+.2f}.")
    if baseline is not None:
        parts.append(against_length(accuracy, se, baseline))
    controlled = summary.get("length_controlled") or {}
    if controlled.get("accuracy") is not None:
        n = controlled["comparisons"]
        parts.append(f"On the {count(n, 'pair')} of similar length, where length cannot decide, it scores "
                     f"{controlled['accuracy']:.3f}" + (f" ± {controlled['se']:.3f}" if controlled.get("se") else "")
                     + (": too few to tell." if n < 10 else "."))
    return " ".join(parts)


# ----------------------------------------------------------------------------- ranking, categories


def kendall_tau(ranks: list[int], rewards: list[float]) -> float | None:
    """Kendall's tau-b between people's order (rank 1 = best) and the rewards' order; ties in either
    count as neither concordant nor discordant. None when either side has no order at all."""
    concordant = discordant = ties_rank = ties_reward = 0
    for i in range(len(ranks)):
        for j in range(i + 1, len(ranks)):
            human = ranks[j] - ranks[i]  # > 0: i ranked better
            model = rewards[i] - rewards[j]  # > 0: i scored higher
            if human == 0 and model == 0:
                continue
            if human == 0:
                ties_rank += 1
            elif model == 0:
                ties_reward += 1
            elif (human > 0) == (model > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_rank) * (concordant + discordant + ties_reward))
    return (concordant - discordant) / denominator if denominator else None


def ranking_metrics(groups: list[RankedGroup], rewards: list[list[float]]) -> dict[str, Any]:
    """For prompts with more than two ranked answers: mean Kendall's tau per prompt and best-of-K
    accuracy (the highest reward goes to an answer people ranked best)."""
    taus, best_hits = [], []
    for group, rs in zip(groups, rewards):
        ranked = [i for i, r in enumerate(group.ranks) if r is not None]
        if len(ranked) < 3:
            continue
        tau = kendall_tau([group.ranks[i] for i in ranked], [rs[i] for i in ranked])
        if tau is None:
            continue
        taus.append(tau)
        top = min(group.ranks[i] for i in ranked)
        best_hits.append(float(group.ranks[max(ranked, key=lambda i: rs[i])] == top))
    best = _share(best_hits)
    return {"prompts": len(taus), "kendall_tau": statistics.fmean(taus) if taus else None,
            "kendall_tau_se": statistics.stdev(taus) / math.sqrt(len(taus)) if len(taus) > 1 else None,
            "best_of_k_accuracy": best["accuracy"], "best_of_k_se": best["se"]}


def by_category(pairs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Accuracy and the length baseline per category (RewardBench-style report)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for pair in pairs:
        out.setdefault(str(pair["category"]), []).append(pair)
    return {name: {**_share([float(p["correct"]) for p in rows]),
                   "length_baseline": length_baseline(rows)["accuracy"]}
            for name, rows in sorted(out.items())}


def categories_for(path: str | Path, groups: list[RankedGroup]) -> list[str | None] | None:
    """Each group's `category` (or `subset`) from the row it came from, or None when the file has
    no such column. Groups know their row by `source` ("FILE:LINE")."""
    return categories_from_records(read_path(path, str(path)).items, groups)


def categories_from_records(items: list[tuple[str, Any]], groups: list[RankedGroup]) -> list[str | None] | None:
    """`categories_for` on records already read (`rmcore.data.records`: an upload's bytes, say)."""
    by_line: dict[str, str] = {}
    column = None
    for where, record in items:
        if not isinstance(record, dict):
            continue
        column = column or next((c for c in CATEGORY_COLUMNS if c in record), None)
        if column is not None and record.get(column) is not None:
            by_line[where.rsplit(":", 1)[-1]] = str(record[column])
    if column is None:
        return None
    return [by_line.get(g.source.rsplit(":", 1)[-1]) for g in groups]


# ----------------------------------------------------------------------------- comparing two models


def paired_bootstrap(correct_a: list[float], correct_b: list[float], clusters: list[int],
                     resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Accuracy of B minus accuracy of A, with a percentile bootstrap interval that resamples whole
    clusters (prompts): the pairs of one prompt share answers, so resampling pairs alone would make
    the interval too narrow."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    totals = np.zeros((len(ids), 3))  # per cluster: right by A, right by B, pairs
    for a, b, c in zip(correct_a, correct_b, clusters, strict=True):
        totals[ids[c]] += (a, b, 1.0)
    n = totals[:, 2].sum()
    if not n:
        return {"difference": None, "low": None, "high": None, "confidence": confidence, "resamples": 0}
    difference = float((totals[:, 1].sum() - totals[:, 0].sum()) / n)
    picked = np.random.default_rng(seed).integers(0, len(totals), size=(resamples, len(totals)))
    sums = totals[picked].sum(axis=1)  # (resamples, 3)
    diffs = (sums[:, 1] - sums[:, 0]) / sums[:, 2]
    tail = (1 - confidence) / 2
    low, high = (float(x) for x in np.quantile(diffs, [tail, 1 - tail]))
    return {"difference": difference, "low": low, "high": high, "confidence": confidence, "resamples": resamples}


def compare(a: EvalResult, b: EvalResult, top: int = 10, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Model B against model A on the same data: both accuracies, B - A with a paired bootstrap
    interval, the share of pairs where they pick the same answer, and where they disagree most."""
    if len(a.pairs) != len(b.pairs) or any(
            (x["group"], x["winner"], x["loser"]) != (y["group"], y["winner"], y["loser"])
            for x, y in zip(a.pairs, b.pairs)):
        raise ValueError("the two evaluations are not on the same pairs; evaluate both models on the same data")
    interval = paired_bootstrap([float(p["correct"]) for p in a.pairs], [float(p["correct"]) for p in b.pairs],
                                [p["group"] for p in a.pairs], resamples=resamples, seed=seed)
    same = [(x["margin"] > 0) == (y["margin"] > 0) for x, y in zip(a.pairs, b.pairs)]
    disagreements = sorted(
        ({"prompt": x["prompt"], "winner": x["winner"], "loser": x["loser"], "source": x["source"],
          "p_a": x["p"], "p_b": y["p"], "a_correct": x["correct"], "b_correct": y["correct"]}
         for x, y in zip(a.pairs, b.pairs) if x["correct"] != y["correct"]),
        key=lambda row: -abs(row["p_a"] - row["p_b"]))
    return {
        "model_a": a.summary["model"], "model_b": b.summary["model"],
        "accuracy_a": a.summary["accuracy"], "accuracy_b": b.summary["accuracy"],
        "accuracy_a_se": a.summary["accuracy_se"], "accuracy_b_se": b.summary["accuracy_se"],
        "difference": interval["difference"], "difference_low": interval["low"],
        "difference_high": interval["high"], "confidence": interval["confidence"],
        "agreement": sum(same) / len(same) if same else None,
        "comparisons": len(same),
        "disagreements": len(disagreements),
        "top_disagreements": disagreements[:top],
    }


def compare_sentence(comparison: dict[str, Any]) -> str:
    """Whether B is better than A, in words a user can act on."""
    low, high, diff = comparison["difference_low"], comparison["difference_high"], comparison["difference"]
    if diff is None:
        return "No pairs to compare."
    level = f"{comparison['confidence']:.0%}"
    if low > 0:
        verdict = "B is better than A"
    elif high < 0:
        verdict = "B is worse than A"
    else:
        verdict = "the data cannot tell them apart"
    return (f"B - A = {diff:+.3f} ({level} interval {low:+.3f} to {high:+.3f}): {verdict}. "
            f"They pick the same answer in {comparison['agreement']:.0%} of the {comparison['comparisons']} pairs.")


# ----------------------------------------------------------------------------- small helpers


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
