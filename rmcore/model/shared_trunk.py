"""Head-mode models without a copy of the frozen trunk each: a sharded checkpoint with a shared trunk shard.

A head-mode model is its base model's trunk plus one trained neuron, yet `save_pretrained` writes the
whole trunk again (542 MB for SmolLM2-135M) for every run. Here the folder stays a standard Hugging Face
sharded checkpoint that plain transformers loads (`model.safetensors.index.json` maps every tensor to
its shard), but the trunk shard is a hard link to one file in rmcore's cache, written once per trunk:

    model-00001-of-00002.safetensors   the trunk: a hard link to CACHE/trunks/<sha256 of the tensors>.safetensors
    model-00002-of-00002.safetensors   the reward head (a few kilobytes)
    model.safetensors.index.json       which shard holds which tensor

The cache file is named by a hash of the trunk's tensor names, types, shapes and bytes, so a trunk is
shared only with trunks that are equal to the last bit. Where a hard link cannot be made (the models
folder on another filesystem than the cache), the trunk is copied into the folder and the caller is
told. Deleting a model folder removes its link; the bytes stay on disk while the cache or another
model links them. A zip of the folder (Export) or a plain `cp -r` holds every shard as its own bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rmcore.core.paths import cache_dir

SINGLE_FILE = "model.safetensors"
TRUNK_SHARD = "model-00001-of-00002.safetensors"
HEAD_SHARD = "model-00002-of-00002.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_CHUNK = 16 << 20


def trunks_dir() -> Path:
    folder = cache_dir() / "trunks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def read_header(file: Path) -> tuple[dict, int]:
    """(the safetensors header, the offset where tensor bytes start)."""
    with file.open("rb") as stream:
        size = int.from_bytes(stream.read(8), "little")
        return json.loads(stream.read(size)), 8 + size


def trunk_hash(file: Path, names: list[str]) -> str:
    """sha256 over the named tensors' names, dtypes, shapes and bytes, read straight from the file."""
    header, start = read_header(file)
    digest = hashlib.sha256()
    with file.open("rb") as stream:
        for name in sorted(names):
            entry = header[name]
            digest.update(json.dumps([name, entry["dtype"], entry["shape"]]).encode())
            begin, end = entry["data_offsets"]
            stream.seek(start + begin)
            left = end - begin
            while left:
                chunk = stream.read(min(_CHUNK, left))
                if not chunk:
                    raise ValueError(f"{file}: cut short")
                digest.update(chunk)
                left -= len(chunk)
    return digest.hexdigest()


def _write_subset(source: Path, names: list[str], target: Path) -> None:
    """A safetensors file holding `names` of `source` (same metadata), written under a temporary name first."""
    # safetensors.torch imports torch: the Export page reads folder sizes from here without it
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as reader:
        metadata = reader.metadata()
        tensors = {name: reader.get_tensor(name) for name in names}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cached_trunk(source: Path, names: list[str]) -> Path:
    """The cache's file of this trunk, written now if no earlier save wrote it."""
    cached = trunks_dir() / f"{trunk_hash(source, names)[:40]}.safetensors"
    if cached.is_file():
        header, _ = read_header(cached)
        if sorted(k for k in header if k != "__metadata__") == sorted(names):
            return cached
    _write_subset(source, names, cached)
    return cached


def share_trunk(folder: Path, head_names: list[str]) -> str | None:
    """Turn `folder/model.safetensors` (as save_pretrained wrote it) into a trunk shard shared through the
    cache, a head shard and the index. Returns a note for the user when the trunk had to be copied."""
    folder = Path(folder)
    single = folder / SINGLE_FILE
    header, _ = read_header(single)
    names = [k for k in header if k != "__metadata__"]
    head = [k for k in names if k in set(head_names)]
    trunk = [k for k in names if k not in set(head_names)]
    if not head or not trunk:
        return None  # nothing to split: leave the single file
    _write_subset(single, head, folder / HEAD_SHARD)
    cached = _cached_trunk(single, trunk)
    note = None
    try:
        os.link(cached, folder / TRUNK_SHARD)
    except OSError as exc:
        shutil.copyfile(cached, folder / TRUNK_SHARD)
        note = (f"the trunk ({cached.stat().st_size / 2**20:.0f} MB) was copied into {folder.name}, not shared "
                f"with the cache {cached.parent} ({exc.strerror or exc}: another filesystem?)")
    total = sum(_tensor_bytes(header[k]) for k in names)
    index = {"metadata": {"total_size": total},
             "weight_map": {k: (HEAD_SHARD if k in head else TRUNK_SHARD) for k in sorted(names)}}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    single.unlink()
    return note


def read_weights(folder: Path) -> dict:
    """Every tensor of a model folder by name, from model.safetensors or from the shards its index lists."""
    from safetensors.torch import load_file  # imports torch: folder sizes (the Export page) do not need it

    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        shards = sorted(set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()))
        return {name: tensor for shard in shards for name, tensor in load_file(str(folder / shard)).items()}
    return load_file(str(folder / SINGLE_FILE))


def _tensor_bytes(entry: dict) -> int:
    begin, end = entry["data_offsets"]
    return int(end) - int(begin)


# ----------------------------------------------------------------------------- sizes and copies


@dataclass
class FolderSize:
    """Disk use of a folder, counting hard links honestly."""

    own: int  # bytes of files with no other link: freed when the folder is deleted
    shared: int  # bytes of files also linked elsewhere (a trunk shared with the cache and other models)

    @property
    def total(self) -> int:
        return self.own + self.shared


def folder_size(folder: Path) -> FolderSize:
    own = shared = 0
    seen: set[tuple[int, int]] = set()
    for path in Path(folder).rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        stat = path.stat()
        if (stat.st_dev, stat.st_ino) in seen:
            continue
        seen.add((stat.st_dev, stat.st_ino))
        used = getattr(stat, "st_blocks", 0) * 512 or stat.st_size
        if stat.st_nlink > 1:
            shared += used
        else:
            own += used
    return FolderSize(own, shared)


def disk_used(folders: list[Path]) -> int:
    """Bytes the folders use together, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += getattr(stat, "st_blocks", 0) * 512 or stat.st_size
    return total
