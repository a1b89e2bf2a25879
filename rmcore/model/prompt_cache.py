"""Keys and values of recently scored prompts, so scoring does not recompute a prompt it has seen.

Scoring runs a prompt through every layer once, then each candidate against it (rmcore.model.batching).
The prompt's keys and values at each layer depend only on its own tokens (attention is causal), so
they can be kept and reused whenever a later prompt starts with the same tokens:

- every prompt rendered with a chat template starts with the same system turn (SmolLM2's is ~25
  tokens), so even a new instruction skips those;
- probing one instruction with other candidates, best-of-n in a loop, or a conversation that grows
  by a turn skip the whole prompt, or all but its newest part.

The cache is an LRU of whole prompts bounded in bytes; a lookup returns the longest cached prefix of
the asked-for prompt. Entries remember a fingerprint of the model's weights (parameter versions,
which every in-place update such as an optimizer step bumps), so a model that was trained after it
scored never reuses stale keys.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

LayerKV = tuple[torch.Tensor, torch.Tensor]  # (1, kv heads, tokens, head dim) keys and values of one layer
DEFAULT_MAX_BYTES = 256 * 2**20


@dataclass
class CachedPrompt:
    ids: tuple[int, ...]
    layers: list[LayerKV]
    nbytes: int


def weights_fingerprint(model: nn.Module) -> tuple[int, int, str]:
    """Changes whenever any parameter is updated in place, replaced, or moved to another device."""
    params = list(model.parameters())
    first = params[0]
    return sum(p._version for p in params), first.data_ptr(), str(first.device)


def common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PromptCache:
    """Least-recently-used prompts' per-layer keys and values, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], CachedPrompt] = OrderedDict()
        self._fingerprint: tuple | None = None
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits_tokens = 0  # prompt tokens served from the cache, for tests and the benchmark

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def lookup(self, prompt_ids: list[int], fingerprint: tuple) -> tuple[int, list[LayerKV] | None]:
        """(n, per-layer keys/values of the prompt's first n tokens) for the longest cached prefix; n may be 0."""
        with self._lock:
            if fingerprint != self._fingerprint:  # the weights changed: nothing cached is valid any more
                self._entries.clear()
                self._bytes = 0
                self._fingerprint = fingerprint
            best, best_n = None, 0
            for entry in self._entries.values():
                n = common_prefix(entry.ids, prompt_ids)
                if n > best_n:
                    best, best_n = entry, n
            if best is None:
                return 0, None
            self._entries.move_to_end(best.ids)
            self.hits_tokens += best_n
            return best_n, [(k[:, :, :best_n], v[:, :, :best_n]) for k, v in best.layers]

    def store(self, prompt_ids: list[int], layers: list[LayerKV], fingerprint: tuple) -> None:
        """Keep a prompt's keys and values (all of its tokens), dropping the least recently used if full."""
        key = tuple(prompt_ids)
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        if not key or nbytes > self.max_bytes:
            return
        with self._lock:
            if fingerprint != self._fingerprint:
                return  # the weights changed while this prompt was computed
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            self._entries[key] = CachedPrompt(key, layers, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
