"""Head mode's trunk features on disk, kept per prompt group so that changed data reuses the rest.

Head-mode training is logistic regression on the frozen trunk's last-token features, and computing
those features is nearly all of its time. They depend only on the model, its precision and the
tokens of one group (its prompt and its responses: groups never attend to each other; cutting to
the max length shows in the tokens), so the cache is keyed that way: a folder per (model weights,
precision) holding shards of features with the key of every group they cover. A run whose data
matches a shard exactly loads it whole; otherwise it takes each group it can find in any shard and
computes only the rest, which is what happens after editing one answer, re-ranking (ranks do not
change features: nothing is recomputed), or choosing another held-out fraction. A new shard
replaces the shards it contains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rmcore.core.outputs import atomic_path
from rmcore.core.paths import cache_dir
from rmcore.data.encoding import EncodedGroup


def group_key(group: EncodedGroup) -> int:
    """A 63-bit key of one group's exact token ids (its features depend on nothing else)."""
    digest = hashlib.sha256(json.dumps([group.prompt_ids, group.response_ids]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def model_key(model_path: str, precision: str = "no") -> str:
    """Key of a model's weights files (path, size, modification time) and the precision."""
    digest = hashlib.sha256()
    folder = Path(model_path)
    if folder.is_dir():
        for f in sorted(folder.glob("*.safetensors")) + [folder / "config.json"]:
            stat = f.stat()
            digest.update(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        digest.update(model_path.encode())
    digest.update(precision.encode())
    return digest.hexdigest()[:32]


@dataclass
class FeatureCache:
    """The feature shards of one model at one precision."""

    folder: Path

    @classmethod
    def for_model(cls, model_path: str, precision: str = "no") -> FeatureCache:
        return cls.from_key(model_key(model_path, precision))

    @classmethod
    def from_key(cls, key: str) -> FeatureCache:
        """The cache a `model_key` names (a head-mode model records its base model's)."""
        return cls(cache_dir() / "features" / key)

    def shard_path(self, keys: list[int]) -> Path:
        """The shard that holds exactly these groups, in this order."""
        return self.folder / f"{hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:32]}.safetensors"

    def cached_keys(self) -> set[int]:
        """Every group key some shard holds (reads only the keys, not the features)."""
        found: set[int] = set()
        for _, keys, _ in self._shard_indexes():
            found.update(keys)
        return found

    def load(self, encoded: list[EncodedGroup]) -> list[torch.Tensor | None]:
        """Features (K, H) of every group found in a shard, None for the others; in group order."""
        keys = [group_key(g) for g in encoded]
        exact = self.shard_path(keys)
        wanted: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            wanted.setdefault(key, []).append(i)
        out: list[torch.Tensor | None] = [None] * len(encoded)
        for path, shard_keys, sizes in self._shard_indexes(first=exact):
            rows = [(start, size, wanted.pop(k)) for k, start, size in _rows(shard_keys, sizes) if k in wanted]
            if not rows:
                continue
            try:
                with safe_open(str(path), framework="pt") as f:
                    features = f.get_slice("features")  # reads only the rows asked for
                    for start, size, indexes in rows:
                        part = features[start : start + size]
                        for i in indexes:
                            out[i] = part
            except (OSError, ValueError):  # removed by another run meanwhile: compute those instead
                continue
            if not wanted:
                break
        return out

    def save(self, encoded: list[EncodedGroup], per_group: list[torch.Tensor]) -> Path:
        """Write one shard with these groups' features; remove the shards it now contains."""
        keys = [group_key(g) for g in encoded]
        path = self.shard_path(keys)
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "features": torch.cat(per_group).float().contiguous() if per_group else torch.zeros(0),
            "keys": torch.tensor(keys, dtype=torch.int64),
            "sizes": torch.tensor([len(f) for f in per_group], dtype=torch.int64),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        covered = set(keys)
        for other, other_keys, _ in self._shard_indexes():
            if other != path and set(other_keys) <= covered:
                other.unlink(missing_ok=True)
        return path

    def _shard_indexes(self, first: Path | None = None) -> list[tuple[Path, list[int], list[int]]]:
        """(path, group keys, responses per group) of every readable shard, `first` first if present."""
        if not self.folder.is_dir():
            return []
        paths = sorted(self.folder.glob("*.safetensors"), key=lambda p: p != first)
        indexes = []
        for path in paths:
            try:
                with safe_open(str(path), framework="pt") as f:
                    indexes.append((path, f.get_tensor("keys").tolist(), f.get_tensor("sizes").tolist()))
            except Exception:  # a shard from an older rmcore, half-deleted, or damaged: not used
                continue
        return indexes


def _rows(keys: list[int], sizes: list[int]):
    start = 0
    for key, size in zip(keys, sizes):
        yield key, start, size
        start += size
