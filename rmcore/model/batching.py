"""Pack a group's prompt and its K responses into one row, so the prompt is computed once.

A row is [prompt | response 1 | response 2 | ... | response K | padding]. A block attention mask
lets each response see the prompt and itself (causally) but not its siblings, and position ids
restart after the prompt for every response, so each response's hidden states equal those of
"prompt + response" run alone. Gradients from every response flow back into the shared prompt.
Rows of one batch come from groups of similar length (see `length_bucketed_batches`), so little
compute goes to padding. Training and its held-out evaluation put several groups in a row instead
(`row_tokens`: [group 1 | group 2 | ... | padding], up to ROW_TOKENS tokens a row; each group sees only
itself), which saves most of the padding's share of the linear layers (6-9% of the tokens of
length-bucketed HH batches of 8, more in evaluation batches, which are not sorted by length). The
row's block mask grows as its length squared, hence the cap. The batch also carries a `PackedLayout`
(rmcore.model.attention) with which attention skips the blocks the mask forbids, instead of computing
and discarding them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rmcore.data.encoding import EncodedGroup
from rmcore.model.attention import PackedLayout

ROW_TOKENS = 4096  # a row of several groups holds at most this many tokens (its bool mask: 16 MB)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, L) token ids, padded with pad_id
    position_ids: torch.Tensor  # (B, L) restart at len(prompt) for every response
    attention_mask: torch.Tensor  # (B, 1, L, L) bool, True = may attend
    last_index: torch.Tensor  # (N,) flat index into B*L of each response's last token
    group_sizes: list[int]  # K of each group, in order; sum(group_sizes) == N
    real_tokens: int  # tokens that are not padding
    layout: PackedLayout | None = None  # prompt and response lengths per row, for rmcore.model.attention

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.attention_mask.to(device),
            self.last_index.to(device),
            self.group_sizes,
            self.real_tokens,
            self.layout.to(device) if self.layout is not None else None,
        )


def pack_groups(groups: list[EncodedGroup], pad_id: int, *, row_tokens: int | None = None) -> PackedBatch:
    """Build the packed rows of a batch of groups: one row per group, or with `row_tokens` as many groups
    a row, in order, as fit in that many tokens (a longer group gets a row of its own).

    A response of no tokens has no last token to read its reward at (it would read its neighbour's):
    it is refused, and callers check their input before it gets here."""
    for group in groups:
        if not all(group.response_ids):
            raise ValueError("a response has no tokens; its reward would be read at another token")
    rows = _rows_of(groups, row_tokens) if row_tokens else [[group] for group in groups]
    length = max(sum(g.num_tokens for g in row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    owner = torch.full((len(rows), length), -1, dtype=torch.long)  # the group a token belongs to, -1 = pad
    segment = torch.zeros((len(rows), length), dtype=torch.long)  # 0 = prompt, k = response k
    last_index, prompt_lengths, spans = [], [], []
    number = 0
    for row, row_groups in enumerate(rows):
        start = 0
        for group in row_groups:
            last_index += _place(group, row, start, length, input_ids, position_ids, segment)
            owner[row, start : start + group.num_tokens] = number
            prompt_lengths.append(len(group.prompt_ids))
            spans.append([len(ids) for ids in group.response_ids])
            start += group.num_tokens
            number += 1
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L)
    same_group = (owner[:, :, None] == owner[:, None, :]) & (owner[:, :, None] >= 0)  # (B, L, L)
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]
    allowed = causal & same_group & ((seg_q == seg_k) | (seg_k == 0))
    allowed |= torch.eye(length, dtype=torch.bool)  # padding attends to itself: no empty softmax rows
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=allowed[:, None, :, :],
        last_index=torch.tensor(last_index, dtype=torch.long),
        group_sizes=[len(g.response_ids) for g in groups],
        real_tokens=sum(g.num_tokens for g in groups),
        layout=PackedLayout(prompt_lengths, spans, groups_per_row=[len(r) for r in rows] if row_tokens else None),
    )


def _rows_of(groups: list[EncodedGroup], row_tokens: int) -> list[list[EncodedGroup]]:
    rows: list[list[EncodedGroup]] = []
    used = 0
    for group in groups:
        if rows and used + group.num_tokens <= row_tokens:
            rows[-1].append(group)
            used += group.num_tokens
        else:
            rows.append([group])
            used = group.num_tokens
    return rows


def _place(group: EncodedGroup, row: int, start: int, length: int, input_ids, position_ids, segment) -> list[int]:
    """Write `group` into `row` from `start`: its tokens, positions restarting after the prompt for every
    response, and segments. Returns the flat indices (into B*L) of its responses' last tokens."""
    p = len(group.prompt_ids)
    input_ids[row, start : start + p] = torch.tensor(group.prompt_ids, dtype=torch.long)
    position_ids[row, start : start + p] = torch.arange(p)
    at, last = start + p, []
    for k, ids in enumerate(group.response_ids, start=1):
        n = len(ids)
        input_ids[row, at : at + n] = torch.tensor(ids, dtype=torch.long)
        position_ids[row, at : at + n] = torch.arange(p, p + n)
        segment[row, at : at + n] = k
        last.append(row * length + at + n - 1)
        at += n
    return last


def length_bucketed_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, *, shuffle: bool = True
) -> list[list[int]]:
    """Batches of indices with similar lengths, in a random order fixed by (seed, epoch).

    Indices are shuffled, cut into windows of 16 batches, sorted by length inside each window and
    cut into batches; the batches are shuffled again. Padding stays small while every epoch still
    sees a different order, and the order can be replayed exactly when training resumes.
    """
    order = list(range(len(lengths)))
    rng = random.Random(seed * 100_003 + epoch)
    if shuffle:
        rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


def split_by_tokens(indices: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Cut one batch into micro-batches whose padded size (rows x longest row) stays within `max_tokens`.

    Groups are taken shortest first, so rows of a micro-batch have similar lengths; a group longer
    than the budget gets a micro-batch of its own (a group is never split: its responses share the
    prompt and their pairs share one loss term). Gradients of the parts add up to the whole batch's.
    """
    parts: list[list[int]] = []
    for i in sorted(indices, key=lambda j: lengths[j]):
        if parts and (len(parts[-1]) + 1) * lengths[i] <= max_tokens:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts
