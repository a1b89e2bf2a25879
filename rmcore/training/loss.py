"""The Bradley-Terry loss over every strictly ordered pair of a prompt's responses.

P(w preferred over l) = sigma(r_w - r_l), so the negative log-likelihood of one comparison is
-log sigma(r_w - r_l - margin). As in InstructGPT, the C(K,2) pairs of one prompt form one batch
element: the loss is averaged over a prompt's pairs, then over prompts, and each response is run
through the model once however many pairs it is in.

This is the one loss training optimises and reports on held-out prompts. Evaluation reports the same
per-pair term without a margin, averaged over comparisons instead of prompts, as `mean_log_loss`
(rmcore.analysis.evaluate, through rmcore.data.ranking.pair_loss, its torch-free twin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rmcore.data.encoding import EncodedGroup


@dataclass
class PairIndex:
    """Flat indices of every ordered pair of a batch, into the batch's flat reward vector."""

    winner: torch.Tensor  # (P,) index of the preferred response
    loser: torch.Tensor  # (P,)
    weight: torch.Tensor  # (P,) 1 / (pairs in its group * groups): the loss is a mean of group means
    margin: torch.Tensor  # (P,)
    rank_gap: torch.Tensor  # (P,) rank(loser) - rank(winner)
    prompts: int = 0  # groups with at least one pair: the loss is their mean

    def to(self, device) -> PairIndex:
        tensors = (self.winner, self.loser, self.weight, self.margin, self.rank_gap)
        return PairIndex(*(t.to(device) for t in tensors), prompts=self.prompts)


def pair_index(groups: list[EncodedGroup]) -> PairIndex:
    """Pairs of each group, offset by where its responses start in the flat reward vector."""
    winner, loser, weight, margin, gap = [], [], [], [], []
    offset = 0
    usable = sum(1 for g in groups if g.pairs())
    for group in groups:
        pairs = group.pairs()
        for w, l in pairs:
            winner.append(offset + w)
            loser.append(offset + l)
            weight.append(1.0 / (len(pairs) * usable))
            margin.append(group.margin)
            gap.append(group.ranks[l] - group.ranks[w])
        offset += len(group.response_ids)
    return PairIndex(
        torch.tensor(winner, dtype=torch.long),
        torch.tensor(loser, dtype=torch.long),
        torch.tensor(weight, dtype=torch.float32),
        torch.tensor(margin, dtype=torch.float32),
        torch.tensor(gap, dtype=torch.long),
        prompts=usable,
    )


def bradley_terry_loss(
    rewards: torch.Tensor, pairs: PairIndex, center_coefficient: float = 0.0, *,
    batch_prompts: int | None = None, batch_responses: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over prompts of the mean over their pairs of -log sigma(r_w - r_l - margin).

    `center_coefficient` adds c * mean(r^2) (TRL's reward centering) to keep rewards near zero,
    since the Bradley-Terry likelihood only sees differences. When `rewards` are one micro-batch of
    a larger batch, `batch_prompts` (the batch's prompts with a comparison) and `batch_responses`
    scale this part so the parts add up to the whole batch's loss, hence its gradients.
    """
    diff = rewards[pairs.winner] - rewards[pairs.loser]  # (P,)
    per_pair = -F.logsigmoid(diff - pairs.margin)
    loss = (per_pair * pairs.weight).sum()
    if batch_prompts:
        loss = loss * (pairs.prompts / batch_prompts)
    if center_coefficient:
        squares = rewards.pow(2)
        loss = loss + center_coefficient * (squares.sum() / batch_responses if batch_responses else squares.mean())
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "accuracy": float((diff > 0).float().mean()) if len(diff) else float("nan"),
            "margin": float(diff.mean()) if len(diff) else float("nan"),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "comparisons": int(len(diff)),
        }
    return loss, stats
