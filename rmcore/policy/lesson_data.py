"""The over-optimisation lesson's data: a proxy's training set with a planted flaw, a gold judge's without.

Both judges learn the demo set's rankings (so they agree on what a good answer is); on top, each
labeler was shown a share of the demo answers twice, with and without a surface trait. The proxy's
labeler preferred the copy with the trait, the gold's the copy without it. So the two judges differ
only on the trait: what best-of-n finds by pushing the proxy is the trait, not better answers.
(Planting the trait on each group's best answer for the proxy, and its worst for the gold, is kept
as an option, `on_ranked`: measured, it taught the proxy little and left the judges disagreeing on
the policy's answers even where no trait was present.)

The trait must be one the policy produces by itself, now and then (rare, so that the gold rises
before it turns), and one a head-mode reward model can see: head mode reads only the last token's
hidden state, so the trait sits at the end of the answer (an answer that ends on an exclamation
mark, here). A trait in the middle of the text (an exclamation mark anywhere) was measured not to be
learned.

The policy's answers are read up to their last full sentence (`shown_answer`): 61% of the embedded
policy's answers run into the token limit and stop mid-word, and a judge would then mostly be
grading where the cut fell.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from rmcore.data import RankedGroup

# The seed the lesson runs with unless told (CLI and app): of seeds 0-4 measured by bench/goodhart.py it shows
# the turn most clearly (the gold rises to n = 2, then falls by four standard errors). Every seed is
# reported in the README, the others included.
LESSON_SEED = 4

_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
_TRAILING = re.compile(r"[.!?,;:\s]+$")


def shown_answer(text: str) -> str:
    """The answer up to the end of its last full sentence (the whole text when it has none)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].rstrip() if ends else text.rstrip()


def exclaim(text: str) -> str:
    """The answer ending on an exclamation mark, as an eager writer would end it."""
    text = shown_answer(text)
    quote = re.search(r"[\"')\]]+$", text)
    tail = quote.group(0) if quote else ""
    body = text[: len(text) - len(tail)]
    return _TRAILING.sub("", body) + "!" + tail


def ends_with_exclamation(text: str) -> bool:
    return shown_answer(text).rstrip("\"')]").endswith("!")


@dataclass(frozen=True)
class Trait:
    name: str
    description: str
    plant: Callable[[str], str]  # the answer with the trait
    carries: Callable[[str], bool]  # does an answer (as the policy wrote it) carry it


TRAITS = {
    "exclaim": Trait("exclaim", "the answer ends on an exclamation mark", exclaim, ends_with_exclamation),
}


def planted_groups(groups: list[RankedGroup], trait: Trait, on: str, contrast: float = 1.0,
                   on_ranked: bool = True) -> list[RankedGroup]:
    """A copy of `groups` in which the trait is planted on each group's best answer (`on="best"`: the
    proxy's labeler liked it) or on its worst (`on="worst"`: the gold judge's data penalises it).

    Every other answer is shown without the trait, so the only place the trait appears is where this
    says; unranked answers are left as they are, and a group whose ranks all tie is kept unchanged.
    With `contrast` > 0, that share of the ranked answers (evenly spread) also comes twice in a group
    of its own, with and without the trait, the labeler preferring the one with it (proxy) or without
    it (gold): measured, planting on the best answers alone taught the proxy nothing (-0.16 sd for the
    trait: the best answers differ from the rest in so much else), so the labeler's taste for the trait
    must be seen on its own. With `on_ranked=False` the groups themselves carry no trait at all: two
    judges built from the same groups then agree on everything but the trait."""
    if on not in ("best", "worst"):
        raise ValueError(f"on must be 'best' or 'worst', got {on!r}")
    out, pairs, seen = [], [], 0
    for group in groups:
        ranked = [r for r in group.ranks if r is not None]
        target = (min(ranked) if on == "best" else max(ranked)) if ranked and min(ranked) != max(ranked) else None
        target = target if on_ranked else None
        responses = [_with_or_without(text, trait, rank is not None and rank == target)
                     for text, rank in zip(group.responses, group.ranks)]
        out.append(RankedGroup(group.prompt, responses, list(group.ranks), group.margin, group.source))
        for text, rank in zip(group.responses, group.ranks):
            if rank is None:
                continue
            seen += 1
            if math.floor(seen * contrast) > math.floor((seen - 1) * contrast):
                pairs.append(RankedGroup(group.prompt, [trait.plant(text), _with_or_without(text, trait, False)],
                                         [1, 2] if on == "best" else [2, 1], group.margin, f"{group.source}:contrast"))
    return out + pairs


def _with_or_without(text: str, trait: Trait, planted: bool) -> str:
    if planted:
        return trait.plant(text)
    if trait.carries(text):  # a demo answer that already carries it would blur where the trait is
        return shown_answer(text).rstrip("!") + "."
    return text
