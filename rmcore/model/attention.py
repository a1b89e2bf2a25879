"""Attention for packed shared-prompt rows that skips the blocks the block mask would throw away.

A packed row is [prompt | response 1 | ... | response K | padding] (see rmcore.model.batching). Its block
mask is exact, but SDPA kernels compute every (query, key) block a mask forbids as well as those it
allows: a row of length L costs L^2, while the work that counts is the prompt's causal triangle plus,
for each response, its queries against the prompt and itself. For a 270-token prompt with four
~90-token answers that is half the attention; more for long prompts or larger K.

So inside each attention layer we run, for each row, one causal SDPA over the prompt and one SDPA
per response over [prompt keys | its own keys] (a (r, p + r) mask: all of the prompt, causal on
itself), and concatenate the outputs back in row order. Slices and concatenations carry gradients,
so every response's gradient still flows into the shared prompt. Everything else in the layer
(projections, rotary positions, MLP) runs on the packed rows unchanged.

It is registered with transformers as the attention implementation "rmcore_packed", which behaves
exactly as "sdpa" unless the call carries a `rmcore_layout` (PackedRewardModel's forward passes it,
and switches the model to "rmcore_packed" only for that call).

When scoring, a single row may start after a cached prefix of its prompt (rmcore.model.prompt_cache): the
layout then carries that prefix's keys and values per layer, the row holds only the rest, and every
query also attends to the prefix. The layout can also record each layer's whole-prompt keys and
values, for the cache.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ATTENTION_NAME = "rmcore_packed"
_registered = False


@dataclass
class PackedLayout:
    """Each packed group's prompt length and response lengths, in row order (the rest is padding).

    A row holds one group, or with `groups_per_row` several, one after the other (training's rows of
    several groups, rmcore.model.batching)."""

    prompt_lengths: list[int]  # (G,) prompt tokens of each group (after the cached prefix, if any)
    response_lengths: list[list[int]]  # (G, K_g)
    groups_per_row: list[int] | None = None  # (B,) groups in each row; None: one each
    masks: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)  # made once, used by every layer
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)  # per layer, B == 1
    record: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)  # layer -> kv

    def mask(self, prompt: int, response: int, device: torch.device) -> torch.Tensor:
        """(r, p + r) bool: every prompt key, then causal over the response's own keys."""
        key = (prompt, response, device)
        if key not in self.masks:
            own = torch.ones(response, response, dtype=torch.bool, device=device).tril()
            self.masks[key] = torch.cat([torch.ones(response, prompt, dtype=torch.bool, device=device), own], dim=1)
        return self.masks[key]

    def to(self, device) -> PackedLayout:
        return self  # plain lengths; masks are made on the device that asks for them

    @functools.cached_property
    def rows(self) -> list[list[tuple[int, list[int]]]]:
        """Each row's groups, as (prompt length, response lengths): worked out once, read by every layer."""
        groups = iter(zip(self.prompt_lengths, self.response_lengths))
        return [[next(groups) for _ in range(n)] for n in self.groups_per_row or [1] * len(self.prompt_lengths)]


def _sdpa(query, key, value, *, mask, causal: bool, dropout: float, scaling):
    """SDPA with grouped KV heads: native GQA where the kernels take it, else repeated heads."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and query.device.type != "cpu" and mask is not None:
        # CUDA's masked kernels do not take enable_gqa (it would fall back to the math kernel)
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        groups = 1
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                          scale=scaling, enable_gqa=groups > 1)


def packed_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             is_causal=None, **kwargs):
    """transformers attention interface: (B, H, L, D) in, (B, L, H, D) out (as sdpa_attention_forward)."""
    layout: PackedLayout | None = kwargs.pop("rmcore_layout", None)
    if layout is None or kwargs.get("sliding_window") or getattr(module, "sliding_window", None):
        if layout is not None and (layout.prefix is not None or layout.record is not None):
            raise RuntimeError("a cached prompt prefix needs full attention in every layer (see supports_prefix)")
        # transformers' attention modules take 2 s to import: only a model that runs packed rows needs them
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    length = query.shape[2]
    out = []
    # split/unbind rather than slicing: their backward is one cat/stack, not a zero-filled copy per slice
    for groups, q, k, v in zip(layout.rows, query.unbind(0), key.unbind(0), value.unbind(0)):
        sizes = [n for p, responses in groups for n in (p, *responses)]
        pad = length - sum(sizes)
        q_parts = q.split(sizes + [pad] if pad else sizes, dim=1)  # (H, n, D) each
        k_parts = k.split(sizes + [pad] if pad else sizes, dim=1)  # (Hkv, n, D) each
        v_parts = v.split(sizes + [pad] if pad else sizes, dim=1)
        parts, at = [], 0
        for p, responses in groups:
            span = slice(at, at + 1 + len(responses))
            parts += _group_attention(module, layout, q_parts[span], k_parts[span], v_parts[span], p, responses,
                                      dropout, scaling)
            at = span.stop
        if pad:  # padding: its output is never read
            parts.append(query.new_zeros(query.shape[1], pad, query.shape[3]))
        out.append(torch.cat(parts, dim=1))  # (H, L, D)
    return torch.stack(out).transpose(1, 2), None  # (B, L, H, D)


def _group_attention(module, layout: PackedLayout, q_parts, k_parts, v_parts, p: int, responses: list[int],
                     dropout: float, scaling) -> list[torch.Tensor]:
    """One group's outputs, (H, n, D) per part: the prompt causally, each response over the prompt and itself."""
    device = q_parts[0].device
    k_prompt, v_prompt = k_parts[0][None], v_parts[0][None]  # (1, Hkv, p, D)
    cached = 0
    if layout.prefix is not None:  # keys/values of the prompt's first tokens, from an earlier call
        k_cached, v_cached = layout.prefix[module.layer_idx]
        cached = k_cached.shape[2]
        k_prompt = torch.cat([k_cached.to(k_prompt.dtype), k_prompt], dim=2)  # (1, Hkv, cached + p, D)
        v_prompt = torch.cat([v_cached.to(v_prompt.dtype), v_prompt], dim=2)
    if layout.record is not None:
        layout.record[module.layer_idx] = (k_prompt, v_prompt)
    parts = []
    if p:
        mask = layout.mask(cached, p, device) if cached else None
        parts.append(_sdpa(q_parts[0][None], k_prompt, v_prompt, mask=mask, causal=not cached, dropout=dropout,
                           scaling=scaling)[0])  # (H, p, D)
    for n, r in enumerate(responses, start=1):
        keys = torch.cat([k_prompt, k_parts[n][None]], dim=2)  # (1, Hkv, cached + p + r, D)
        values = torch.cat([v_prompt, v_parts[n][None]], dim=2)
        parts.append(_sdpa(q_parts[n][None], keys, values, mask=layout.mask(cached + p, r, device),
                           causal=False, dropout=dropout, scaling=scaling)[0])  # (H, r, D)
    return parts


def _uses_sdpa(config) -> bool:
    return getattr(config, "_attn_implementation", None) in ("sdpa", ATTENTION_NAME)


def supports_prefix(config) -> bool:
    """Whether a cached prompt prefix can be used: packed attention in every layer (no sliding windows)."""
    if not _uses_sdpa(config):
        return False
    if any("sliding" in str(kind) for kind in getattr(config, "layer_types", None) or []):
        return False
    return not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))


def register() -> None:
    """Make "rmcore_packed" a valid attention implementation (masks built as for sdpa)."""
    global _registered
    if _registered:
        return
    # transformers' attention modules take 2 s to import: only a model that runs packed rows needs them
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, packed_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    _registered = True


@contextlib.contextmanager
def packed_attention(config):
    """Route this forward call's attention through packed_attention_forward, when the model uses sdpa."""
    if not _uses_sdpa(config):
        yield False  # eager, flash-attention, ...: leave the model alone; the block mask is exact there too
        return
    register()
    config._attn_implementation = ATTENTION_NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
