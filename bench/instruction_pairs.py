"""Pairs no length can solve: an instruction's own answer against another instruction's answer of about
the same length.

A reward model that only learned "longer is better" (or any trait of the answer alone) scores 0.5 on
these pairs: both answers are well-formed, of the length of answers in the data, and only one of
them answers the instruction. Built from any ranked groups (HH dialogues, OASST trees): each prompt
keeps its best answer as the winner, and the loser is the best answer of the prompt whose best
answer is next in length, alternately just shorter and just longer, so "the longer answer wins"
is right on half of them. Deterministic for a seed.
"""

from __future__ import annotations

import random

from rmcore.data import RankedGroup


def best_answer(group: RankedGroup) -> str | None:
    ranked = [(rank, i) for i, rank in enumerate(group.ranks) if rank is not None]
    return group.responses[min(ranked)[1]] if ranked else None


def mismatch_pairs(groups: list[RankedGroup], seed: int = 0) -> list[RankedGroup]:
    """One two-answer group per usable prompt: (its best answer, ranked 1; a length-neighbour's, ranked 2)."""
    usable = [(g, best_answer(g)) for g in groups if g.pairs()]
    usable = [(g, a) for g, a in usable if a and a.strip()]
    by_length = sorted(range(len(usable)), key=lambda i: (len(usable[i][1]), usable[i][0].source))
    position = {index: place for place, index in enumerate(by_length)}
    rng = random.Random(seed)
    out = []
    for i, (group, own) in enumerate(usable):
        other = _neighbour(by_length, position[i], usable, group, prefer_longer=rng.random() < 0.5)
        if other is None:
            continue
        out.append(RankedGroup(group.prompt, [own, other], [1, 2], source=f"{group.source} (vs another answer)"))
    return out


def _neighbour(by_length: list[int], place: int, usable, group: RankedGroup, prefer_longer: bool) -> str | None:
    """The nearest answer in length from a different prompt, on the preferred side when there is one."""
    own_prompt = group.prompt_text
    sides = (1, -1) if prefer_longer else (-1, 1)
    for side in sides:
        step = place + side
        while 0 <= step < len(by_length):
            candidate, answer = usable[by_length[step]]
            if candidate.prompt_text != own_prompt and answer != usable[by_length[place]][1]:
                return answer
            step += side
    return None
