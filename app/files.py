"""Files the app hands to people: a model folder as a zip, whole or head only.

A zip's size is known before it is built (weights are stored, not compressed: the sum of the files is an
upper bound a few bytes per file off), so the Export page says it on the button; a large zip is built
into a temporary file with a progress bar first, instead of while the browser waits with no sign of it.

A head-mode model of the embedded base model can also go without its trunk: the trunk shard is the
embedded SmolLM2-135M-Instruct's weights to the last bit (rmcore.model.shared_trunk names it by their
hash), so the head-only zip holds everything else plus `restore_trunk.py`, which writes the shard back
from the embedded model wherever rmcore is installed, and checks the hash.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from rmcore.model.embedded import EMBEDDED_ALIASES
from rmcore.model.shared_trunk import INDEX_FILE, TRUNK_SHARD, trunk_hash, trunks_dir

CHUNK = 16 << 20
RESTORE_SCRIPT = "restore_trunk.py"
HEAD_ONLY_NOTE = "HEAD_ONLY.md"


def included(folder: Path, include_checkpoint: bool = False, head_only: bool = False) -> list[Path]:
    """The files a zip of `folder` holds: hidden entries (a save in progress) and symlinks are left out; so is
    the training checkpoint unless asked for, and the trunk shard of a head-only zip."""
    files = []
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or path.is_symlink() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.parts[0] == "checkpoint" and not include_checkpoint:
            continue
        if head_only and relative.as_posix() == TRUNK_SHARD:
            continue
        files.append(path)
    return files


def zip_size(files: list[Path], extra: dict[str, str] | None = None) -> int:
    """The zip's size, at most a few bytes per file off (text is compressed, so it is an upper bound)."""
    overhead = 120  # local header, central directory entry and name, per file
    texts = sum(len(text.encode()) for text in (extra or {}).values())
    return sum(path.stat().st_size + overhead for path in files) + texts + overhead * len(extra or {}) + 22


def _entries(folder: Path, files: list[Path]) -> Iterator[tuple[Path, str]]:
    for path in files:
        yield path, f"{folder.name}/{path.relative_to(folder).as_posix()}"


def write_zip(folder: Path, files: list[Path], target, extra: dict[str, str] | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> None:
    """Write the zip of `files` (paths inside `folder`, under a top folder named like it) and of `extra` texts
    (name -> text) into `target`, a path or a binary stream; `on_progress(bytes_done, bytes_total)`."""
    total = max(1, sum(path.stat().st_size for path in files))
    done = 0
    with zipfile.ZipFile(target, "w", allowZip64=True) as archive:
        for path, name in _entries(folder, files):
            stored = path.suffix in (".safetensors", ".pt")
            info = zipfile.ZipInfo.from_file(path, name)
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w", force_zip64=info.file_size > 2**31) as sink:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total)
        for name, text in (extra or {}).items():
            info = zipfile.ZipInfo(f"{folder.name}/{name}", date_time=time.localtime()[:6])
            info.external_attr = 0o644 << 16  # rw-r--r--, as the folder's own files
            archive.writestr(info, text, compress_type=zipfile.ZIP_DEFLATED)


def zip_folder(folder: Path, include_checkpoint: bool = False) -> bytes:
    """The whole model folder as a zip in memory (small folders: a policy, a test's tiny model)."""
    buffer = io.BytesIO()
    write_zip(Path(folder), included(Path(folder), include_checkpoint), buffer)
    return buffer.getvalue()


def prepared_zip(folder: Path, name: str, session: str, files: list[Path], extra: dict[str, str] | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> Path:
    """The zip written into this session's temporary folder (the one before it is removed: one at a time)."""
    where = Path(tempfile.gettempdir()) / "rmcore-app-downloads" / session
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)
    target = where / name
    partial = where / f".{name}.partial"
    write_zip(folder, files, partial, extra, on_progress)
    os.replace(partial, target)
    return target


# ----------------------------------------------------------------------------- head only


def embedded_head_model(folder: Path, metadata: dict) -> bool:
    """A head-mode model of the embedded base model, with its trunk in a shard of its own: its trunk is the
    embedded model's weights (frozen in head mode), which rmcore can write back anywhere."""
    config = metadata.get("config") or {}
    return (metadata.get("mode") == "head" and str(config.get("model", "")).lower() in EMBEDDED_ALIASES
            and (folder / TRUNK_SHARD).is_file() and (folder / INDEX_FILE).is_file())


def trunk_names(folder: Path) -> list[str]:
    """The tensors the index puts in the trunk shard."""
    weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    return sorted(name for name, shard in weight_map.items() if shard == TRUNK_SHARD)


def known_trunk_hash(folder: Path) -> str | None:
    """The trunk's hash prefix when its shard is a hard link to rmcore's trunk cache (the cache file's name),
    without reading the 540 MB; None when it is a copy."""
    shard = folder / TRUNK_SHARD
    try:
        for cached in trunks_dir().glob("*.safetensors"):
            if os.path.samefile(cached, shard):
                return cached.stem
    except OSError:
        return None
    return None


def trunk_fingerprint(folder: Path) -> str:
    """The trunk's hash prefix (as rmcore's trunk cache names it): from the cache when shared, else read."""
    return known_trunk_hash(folder) or trunk_hash(folder / TRUNK_SHARD, trunk_names(folder))[:40]


def head_only_extras(name: str, fingerprint: str, size: int) -> dict[str, str]:
    """The two files a head-only zip adds: the script that writes the trunk back, and a note on using it."""
    script = RESTORE_TEMPLATE.replace("@FINGERPRINT@", fingerprint).replace("@SHARD@", TRUNK_SHARD)
    note = (f"# {name}: head only\n\nThis download leaves out `{TRUNK_SHARD}`, the frozen trunk ({size / 1e6:,.0f} "
            "MB): it is the embedded SmolLM2-135M-Instruct's weights, to the last bit. Write it back, where rmcore "
            f"is installed, before loading the model:\n\n    python {name}/{RESTORE_SCRIPT}\n\nThe script checks "
            "the trunk's hash; the folder is then the same standard Hugging Face model the whole download holds.\n")
    return {RESTORE_SCRIPT: script, HEAD_ONLY_NOTE: note}


RESTORE_TEMPLATE = '''"""Write this head-only reward model's trunk shard back from rmcore's embedded model.

    python restore_trunk.py          (where rmcore is installed; it converts the embedded model once if needed)

The trunk of a head-mode model is its base model's weights, frozen: the embedded model's tensors are
written into @SHARD@ and their hash is checked against the one the model was saved with.
"""

import json
import os
import sys
from pathlib import Path

FINGERPRINT = "@FINGERPRINT@"
SHARD = "@SHARD@"


def restore(folder: Path, source: Path | None = None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from rmcore.model.shared_trunk import INDEX_FILE, trunk_hash

    if source is None:
        from rmcore.model.embedded import embedded_model_dir

        source = embedded_model_dir() / "model.safetensors"
    weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
    names = sorted(name for name, shard in weight_map.items() if shard == SHARD)
    if trunk_hash(source, names)[:len(FINGERPRINT)] != FINGERPRINT:
        raise SystemExit(f"{source} is not the trunk this model was trained on (its hash differs): not written")
    with safe_open(str(source), framework="pt") as reader:
        metadata = reader.metadata()
        tensors = {name: reader.get_tensor(name) for name in names}
    partial = folder / f".{SHARD}.partial"
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, folder / SHARD)
    return folder / SHARD


if __name__ == "__main__":
    print(f"wrote {restore(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)}")
'''
