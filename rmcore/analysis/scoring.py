"""Rewards for every response of many prompts: labelling samples for best-of-n or RLHF data.

`scored_records` yields one record per group, in file order, as the ranked-list record the group
would be written as plus its rewards, so the output reads back as data. Groups are scored a chunk
at a time (batched by similar length inside a chunk), so a caller can write or show records as
they come.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from rmcore.data import RankedGroup
from rmcore.data.encoding import EncodedGroup
from rmcore.model.reward_model import RewardModel


def scored_record(group: RankedGroup, encoded: EncodedGroup, rewards: list[float]) -> dict[str, Any]:
    """The group as a ranked-list record plus `rewards`, `best` and `source` (and what was cut to fit
    the model's max length, when anything was); `ranks` only when some response has one."""
    record = group.to_record()
    if all(rank is None for rank in group.ranks):
        del record["ranks"]
    record["rewards"] = rewards
    record["best"] = max(range(len(rewards)), key=rewards.__getitem__)
    record["source"] = group.source
    if encoded.prompt_truncated or encoded.truncated:
        record["truncated_prompt"], record["truncated_responses"] = encoded.prompt_truncated, list(encoded.truncated)
    return record


def scored_records(model: RewardModel, groups: list[RankedGroup], batch_size: int = 8,
                   on_progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """One `scored_record` per group, in order; `on_progress(groups_done)` after every batch (inside a chunk,
    groups done are counted by the share of the chunk's tokens done)."""
    chunk = 8 * batch_size
    for first in range(0, len(groups), chunk):
        part = groups[first : first + chunk]
        encoded = [model.encode(g.prompt, g.responses) for g in part]
        within = None if on_progress is None else _groups_done(on_progress, first, len(part))
        scored = model.rewards_for(encoded, batch_size=batch_size, on_progress=within)
        for group, enc, rewards in zip(part, encoded, scored, strict=True):
            yield scored_record(group, enc, rewards)
        if on_progress is not None:
            on_progress(first + len(part))


def _groups_done(on_progress: Callable[[int], None], first: int, size: int) -> Callable[[float], None]:
    """rewards_for's share of a chunk's tokens, as groups done so far (the chunk's last one at its end)."""
    return lambda share: on_progress(first + min(size - 1, int(share * size)))
