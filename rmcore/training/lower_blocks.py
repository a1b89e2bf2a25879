"""Frozen lower blocks run once: with `trainable_layers` = N, later passes start at the first trained block.

Below the top N blocks nothing trains (rmcore.training.modes), so the hidden state entering the first
trained block is the same at every epoch and every held-out evaluation. The first forward pass over a
group keeps it (a forward pre-hook on that block copies its input, row by row); every later pass over
the group hands it to the trunk as its input and runs only the top N blocks, so an epoch after the
first, and every evaluation after the first, pays for N blocks instead of all of them.

Kept in memory, float32 as the trunk computes it (2.3 KB per token for SmolLM2-135M), up to
MAX_BYTES; groups past that run whole, as without the cache. Only for trunks that take their input
unscaled and attend the same way in every block (Llama, Mistral, Qwen without sliding windows).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from rmcore.data.encoding import EncodedGroup
from rmcore.model.attention import supports_prefix
from rmcore.model.batching import PackedBatch
from rmcore.model.reward_model import PackedRewardModel
from rmcore.training.config import TrainConfig
from rmcore.training.modes import decoder_blocks

MAX_BYTES = 2 << 30  # hidden states kept at most; a 24 GB laptop has room, and past it nothing breaks
CACHED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}  # trunks whose blocks start from inputs_embeds as is


class LowerBlocks:
    """The hidden state entering block `first` of each group seen, and the forward passes that use it."""

    def __init__(self, packed: PackedRewardModel, first: int, max_bytes: int = MAX_BYTES):
        self.first, self.max_bytes = first, max_bytes
        self.block = decoder_blocks(packed.classifier)[first]
        self.kept: dict[int, torch.Tensor] = {}  # id(EncodedGroup) -> (tokens, H)
        self.bytes = 0

    @classmethod
    def for_run(cls, config: TrainConfig, packed: PackedRewardModel) -> LowerBlocks | None:
        """The cache where it is exact and useful: lora or full on the top N blocks of a supported trunk."""
        if config.mode == "head" or not config.trainable_layers:
            return None
        trunk_config = packed.trunk().config
        if trunk_config.model_type not in CACHED_MODEL_TYPES or not supports_prefix(trunk_config):
            return None
        first = len(decoder_blocks(packed.classifier)) - config.trainable_layers
        return cls(packed, first) if first > 0 else None

    def has(self, group: EncodedGroup) -> bool:
        return id(group) in self.kept

    def forward(self, module, batch: PackedBatch, groups: list[EncodedGroup]) -> torch.Tensor:
        """`module(batch)`'s rewards: from the kept hidden states when every group has them, else a whole
        pass that keeps those of the groups not yet seen."""
        start = self._gather(batch, groups)
        if start is not None:
            return module(batch, start=(start, self.first))
        with self.keeping(groups):
            return module(batch)

    def _gather(self, batch: PackedBatch, groups: list[EncodedGroup]) -> torch.Tensor | None:
        kept = [self.kept.get(id(g)) for g in groups]
        if any(k is None for k in kept):
            return None
        rows, length = batch.input_ids.shape
        start = torch.zeros(rows, length, kept[0].shape[-1], dtype=kept[0].dtype, device=batch.input_ids.device)
        for row, hidden in enumerate(kept):
            start[row, : hidden.shape[0]] = hidden
        return start

    @contextmanager
    def keeping(self, groups: list[EncodedGroup]):
        """A pre-hook on the first trained block copies each new group's row of its input (real tokens only),
        during any forward pass of `groups` packed in this order (head mode's features pass too: --mode auto)."""
        def keep(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            for row, group in enumerate(groups):
                size = group.num_tokens * hidden.shape[-1] * hidden.element_size()
                if id(group) in self.kept or self.bytes + size > self.max_bytes:
                    continue
                self.kept[id(group)] = hidden[row, : group.num_tokens].detach().clone()
                self.bytes += size

        handle = self.block.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
