"""What in a model folder is rmcore's, so that saving replaces only that and loses nothing of the user's.

A save writes a hidden sibling folder `.NAME.tmp-XXXX`, renames the existing folder to
`.NAME.old-XXXX`, renames the new one into place, moves every entry rmcore did not write (a user's
notes, the data file they trained from) from the old folder into the new one, and deletes the old
folder only when nothing of the user's is left in it. `rmcore.json` lists the files a save wrote
(`files`); folders saved before that list existed are read with the names rmcore has always written.

A save killed half-way (kill -9, out of memory, a second Ctrl-C) leaves those hidden folders behind.
The next save into the same folder recovers them: a temporary folder holds only what rmcore wrote
and is deleted (after moving back a training checkpoint it had carried); an old folder is put back
when the model folder is missing, or else its user entries are moved over before it is deleted.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rmcore.core.errors import ModelError
from rmcore.core.files import read_small_file
from rmcore.core.outputs import check_writable_folder, refuse_inputs

METADATA_FILE = "rmcore.json"
POLICY_METADATA_FILE = "rmcore_policy.json"  # a policy fine-tuned by `rmcore rlhf` (rmcore.policy.rlhf)
CHECKPOINT_DIR = "checkpoint"
HELD_OUT_FILE = "held_out.jsonl"  # the held-out prompts a model (or every ensemble member) was measured on
MAX_METADATA_BYTES = 64 << 20  # rmcore.json is a few kilobytes; a file far larger is not one
# What rmcore wrote into a model folder before rmcore.json listed its files, and what a save may write.
RMCORE_NAMES = (
    METADATA_FILE, POLICY_METADATA_FILE, "metrics.jsonl", "README.md", CHECKPOINT_DIR, ".checkpoint.*", "config.json",
    "generation_config.json", "model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model",
)


def owned_entries(folder: Path) -> set[str]:
    """Names of the entries of `folder` that rmcore wrote (its checkpoint included)."""
    folder = Path(folder)
    entries = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    listed = _listed_files(folder)
    if listed is not None:
        return {name for name in entries
                if name in listed or name == CHECKPOINT_DIR or name.startswith(f".{CHECKPOINT_DIR}.")}
    return {name for name in entries if any(fnmatch.fnmatchcase(name, pattern) for pattern in RMCORE_NAMES)}


def user_entries(folder: Path) -> set[str]:
    """Names of the entries of `folder` that rmcore did not write: never replaced, never deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir()} - owned_entries(folder)


def read_metadata(folder: str | os.PathLike, metadata_file: str = METADATA_FILE) -> dict[str, Any]:
    """What rmcore saved beside a model (`rmcore.json`) or a policy (`POLICY_METADATA_FILE`), as a dict;
    {} when the folder has no such file. A damaged file raises ModelError, one line naming it.

    For the library and the app alike: it needs no torch, so the app can list folders before any model loads."""
    file = Path(folder) / metadata_file
    return read_json_object(file) if file.is_file() else {}


def read_json_object(file: Path) -> dict[str, Any]:
    """A model folder's small JSON file (rmcore.json, config.json) as a dict, or one line naming what is
    wrong; only a regular file is read, its size checked first, so a huge file or a named pipe costs nothing."""
    raw = read_small_file(file, MAX_METADATA_BYTES, fail=model_error)  # never a FIFO, a device or gigabytes
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{file}: not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(value, dict):
        raise ModelError(f"{file}: expected a JSON object, found {type(value).__name__}; the file is damaged")
    return value


def model_error(name: str, reason: str) -> ModelError:
    """The refusal of a file of a model folder, for rmcore.core.files' readers."""
    return ModelError(f"{name}: {reason}")


def _listed_files(folder: Path) -> set[str] | None:
    try:
        name = METADATA_FILE if (folder / METADATA_FILE).is_file() else POLICY_METADATA_FILE
        metadata = read_metadata(folder, name)
    except ModelError:
        return None
    files = metadata.get("files")
    return set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


def check_output_folder(out_dir: Path, resume: bool, metadata_file: str = METADATA_FILE,
                        what: str = "model", inputs: tuple = (), read_folders: tuple = ()) -> bool:
    """Refuse, before any work, an output folder where training or saving would lose something.

    Returns True when the folder holds a finished model that this run replaces. The folder must be
    new, empty, an rmcore model of the same kind (`metadata_file`: a reward model or a policy), or a
    stopped or killed run's folder (only continued with `resume`); a user's file whose name a save
    would write is refused, other user files are kept. `inputs` are the files the command reads and
    `read_folders` the model folders: the output may be none of them and lie in no model folder.
    """
    out_dir = Path(out_dir)
    refuse_inputs(out_dir, "--out", inputs=inputs, read_folders=read_folders)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"{out_dir}: is a file; the output must be a folder (it is created if missing)")
    _refuse_other_kind(out_dir, metadata_file, what)
    check_writable_folder(out_dir.parent, str(out_dir), create=True)
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise ModelError(f"{out_dir}: the folder cannot be written")
    _recover_checkpoint(out_dir)
    entries = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    has_checkpoint = (out_dir / CHECKPOINT_DIR / "state.json").is_file()
    has_model = metadata_file in entries
    if resume and not has_checkpoint:
        raise ModelError(f"{out_dir}: no checkpoint to resume (a stopped run leaves one in {CHECKPOINT_DIR}/; "
                         "a finished run does not). Leave out --resume to train from the start")
    if has_checkpoint and not resume:
        raise ModelError(f"{out_dir}: holds the checkpoint of a stopped run; add --resume to continue it, or "
                         "choose another output folder (delete this one to start over)")
    users = user_entries(out_dir)
    if users and not (has_model or has_checkpoint):
        shown = ", ".join(sorted(users)[:3]) + (", ..." if len(users) > 3 else "")
        raise ModelError(f"{out_dir}: the folder is not empty and holds no rmcore {what} ({shown}). "
                         "Choose a new or empty folder")
    clashes = sorted(name for name in users if any(fnmatch.fnmatchcase(name, p) for p in RMCORE_NAMES))
    if clashes:
        raise ModelError(f"{out_dir / clashes[0]}: not written by rmcore, and saving the {what} would replace it; "
                         "move it elsewhere or choose another output folder")
    return has_model and not has_checkpoint


KINDS = {METADATA_FILE: "reward model", POLICY_METADATA_FILE: "policy"}  # what each metadata file marks


def _refuse_other_kind(out_dir: Path, metadata_file: str, what: str) -> None:
    """A folder that holds an rmcore save of another kind is not "an rmcore model to replace"."""
    for other, kind in KINDS.items():
        if other != metadata_file and (out_dir / other).is_file():
            raise ModelError(f"{out_dir}: holds an rmcore {kind} ({other}), and this command saves a {what}; "
                             f"it never replaces a {kind}: choose another output folder")


def _recover_checkpoint(out_dir: Path) -> None:
    """A run killed between the two renames of a checkpoint save leaves it as `.checkpoint.old`: put it back."""
    current, previous = out_dir / CHECKPOINT_DIR, out_dir / f".{CHECKPOINT_DIR}.old"
    if (previous / "state.json").is_file() and not (current / "state.json").is_file():
        if current.is_dir():
            shutil.rmtree(current)
        os.rename(previous, current)


def recover_interrupted_saves(out: Path) -> list[str]:
    """Clean up after saves into `out` that were killed half-way; returns what was done, in words."""
    out = Path(out)
    notes: list[str] = []
    if not out.parent.is_dir():
        return notes
    for leftover in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not leftover.is_dir() or leftover.is_symlink():
            continue
        if not out.exists():
            os.rename(leftover, out)
            notes.append(f"put back {out} from {leftover.name}, left by an interrupted save")
        else:
            notes.extend(_retire_old_folder(leftover, out))
    for leftover in sorted(out.parent.glob(f".{out.name}.tmp-*")):
        if not leftover.is_dir() or leftover.is_symlink():
            continue
        carried = leftover / CHECKPOINT_DIR
        if carried.is_dir() and out.is_dir() and not (out / CHECKPOINT_DIR).exists():
            os.rename(carried, out / CHECKPOINT_DIR)
        size = _size(leftover)
        shutil.rmtree(leftover, ignore_errors=True)
        notes.append(f"removed {leftover.name} ({size / 2**20:.0f} MB), left by an interrupted save")
    return notes


def save_folder(out_dir: str | os.PathLike, write: Callable[[Path], None], metadata: dict[str, Any],
                metadata_file: str = METADATA_FILE, keep: tuple[str, ...] = (),
                on_note: Callable[[str], None] | None = None) -> Path:
    """The one atomic save of a folder rmcore writes: reward models, policies and ensemble members.

    `write(tmp)` fills a hidden sibling folder; `metadata_file` (with `files`: every name this save
    wrote) is added, the folder gets the permissions a plain mkdir would, and it is swapped in by
    rename (`swap_in`): a process killed while saving leaves the previous folder intact, and the next
    save cleans up after it and says so through `on_note`. `keep` names rmcore's own entries of the
    existing folder to carry over (the checkpoint of a stopped run); a user's entries always are.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = recover_interrupted_saves(out)
    with _temporary_sibling(out) as tmp:
        write(tmp)
        files = sorted({p.name for p in tmp.iterdir()} | {metadata_file})
        (tmp / metadata_file).write_text(json.dumps({**metadata, "files": files}, indent=2, default=str))
        _apply_umask(tmp)
        notes += swap_in(tmp, out, keep)
    for note in notes:
        if on_note is not None:
            on_note(note)
    return out


@contextlib.contextmanager
def _temporary_sibling(out: Path) -> Iterator[Path]:
    """A hidden folder `.NAME.tmp-XXXX` beside `out`, removed afterwards unless it was swapped in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _apply_umask(folder: Path) -> None:
    """Give a saved folder the permissions a plain mkdir would (mkdtemp makes it private to its owner)."""
    try:
        status = Path("/proc/self/status").read_text()
        umask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError):
        umask = 0o022
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def swap_in(tmp: Path, out: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Put the finished folder `tmp` in the place of `out`, carrying `keep` and every user entry over."""
    for name in keep:
        if (out / name).exists():
            os.rename(out / name, tmp / name)
    old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")  # unique: never a user's folder
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    return _retire_old_folder(old, out) if old.exists() else []


def _retire_old_folder(old: Path, out: Path) -> list[str]:
    """Move the user's entries of a replaced folder into `out`, then delete it if nothing of theirs is left."""
    notes = []
    for name in sorted(user_entries(old)):
        if (out / name).exists() or (out / name).is_symlink():
            continue
        os.rename(old / name, out / name)
    left = user_entries(old)
    if left:
        notes.append(f"kept {old} because it holds {', '.join(sorted(left)[:3])}, which rmcore did not write and "
                     f"{out} already has")
    else:
        shutil.rmtree(old, ignore_errors=True)
    return notes


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
