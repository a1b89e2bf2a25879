"""Rankings as labelers edit them, and the Bradley-Terry numbers of a pair, without torch.

The app's Data page re-ranks, clears ranks and adds a labeler's own best answer; the Probe and
Learn pages show sigma(r_i - r_j) and the pair loss. The arithmetic lives here, tested once, so
the app only draws it.
"""

from __future__ import annotations

import math

from rmcore.data.formats import RankedGroup


def dense_ranks(ranks: list[int | None]) -> list[int | None]:
    """The same order and ties, numbered 1, 2, 3, ... without gaps (unranked stays None)."""
    place = {rank: n for n, rank in enumerate(sorted({r for r in ranks if r is not None}), start=1)}
    return [None if r is None else place[r] for r in ranks]


def read_ranks(values: list) -> list[int | None]:
    """Ranks typed in a form (numbers or empty) as whole numbers, None for unranked."""
    return [None if value is None else int(value) for value in values]


def with_best_response(group: RankedGroup, text: str, replace: int | None = None) -> RankedGroup:
    """`group` with a labeler's own response as the new rank 1, every ranked response one place down.

    `replace` names a response the new one is an edit of (it is taken out). Ranks come out dense.
    """
    ranks = [None if r is None else r + 1 for r in group.ranks]
    responses = list(group.responses)
    if replace is not None:
        del responses[replace], ranks[replace]
    return RankedGroup(group.prompt, [text] + responses, dense_ranks([1] + ranks), group.margin, group.source)


def best_response(group: RankedGroup) -> str:
    """The response ranked best ("" when nothing is ranked); the first of tied best ones."""
    ranked = [i for i, r in enumerate(group.ranks) if r is not None]
    return group.responses[min(ranked, key=lambda i: group.ranks[i])] if ranked else ""


def preference_probability(difference: float) -> float:
    """sigma(r_i - r_j): the Bradley-Terry probability that i is preferred over j (no overflow)."""
    if difference >= 0:
        return 1.0 / (1.0 + math.exp(-difference))
    return math.exp(difference) / (1.0 + math.exp(difference))


def pair_loss(difference: float) -> float:
    """-log sigma(r_w - r_l), the loss of one ordered pair, stable for large differences of either sign."""
    return math.log1p(math.exp(-difference)) if difference > -30 else -difference
