"""Pack a group's prompt and its K responses into one row, so the prompt is computed once.

A row is [prompt | response 1 | response 2 | ... | response K | padding]. A block attention mask
lets each response see the prompt and itself (causally) but not its siblings, and position ids
restart after the prompt for every response, so each response's hidden states equal those of
"prompt + response" run alone. Gradients from every response flow back into the shared prompt.
Rows of one batch come from groups of similar length (see `length_bucketed_batches`), so little
compute goes to padding. The batch also carries a `PackedLayout` (rmcore.model.attention) with which
attention skips the blocks the mask forbids, instead of computing and discarding them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from rmcore.data.encoding import EncodedGroup
from rmcore.model.attention import PackedLayout


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


def pack_groups(groups: list[EncodedGroup], pad_id: int) -> PackedBatch:
    """Build the packed rows of a batch of groups (one row per group).

    A response of no tokens has no last token to read its reward at (it would read its neighbour's):
    it is refused, and callers check their input before it gets here."""
    for group in groups:
        if not all(group.response_ids):
            raise ValueError("a response has no tokens; its reward would be read at another token")
    length = max(g.num_tokens for g in groups)
    batch = len(groups)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    segment = torch.full((batch, length), -1, dtype=torch.long)  # 0 = prompt, k = response k, -1 = pad
    last_index, sizes = [], []
    prompt_lengths, spans = [], []
    for row, group in enumerate(groups):
        p = len(group.prompt_ids)
        input_ids[row, :p] = torch.tensor(group.prompt_ids, dtype=torch.long)
        position_ids[row, :p] = torch.arange(p)
        segment[row, :p] = 0
        prompt_lengths.append(p)
        spans.append([])
        start = p
        for k, ids in enumerate(group.response_ids, start=1):
            n = len(ids)
            input_ids[row, start : start + n] = torch.tensor(ids, dtype=torch.long)
            position_ids[row, start : start + n] = torch.arange(p, p + n)
            segment[row, start : start + n] = k
            last_index.append(row * length + start + n - 1)
            spans[-1].append(n)
            start += n
        sizes.append(len(group.response_ids))
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L)
    seg_q = segment[:, :, None]  # (B, L, 1)
    seg_k = segment[:, None, :]  # (B, 1, L)
    allowed = causal & ((seg_q == seg_k) & (seg_q >= 0) | ((seg_k == 0) & (seg_q > 0)))
    allowed |= torch.eye(length, dtype=torch.bool)  # padding attends to itself: no empty softmax rows
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=allowed[:, None, :, :],
        last_index=torch.tensor(last_index, dtype=torch.long),
        group_sizes=sizes,
        real_tokens=sum(g.num_tokens for g in groups),
        layout=PackedLayout(prompt_lengths, spans),
    )


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
