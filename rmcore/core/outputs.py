"""Where rmcore writes, decided in one place: nothing of the user's is ever overwritten or lost.

Every output is checked before any work starts (a refusal after a 30-minute run loses the run), and
written to a hidden temporary name beside the target, then renamed into place, so a crash or Ctrl-C
leaves either the old file or the new one, never half of one. The temporary names start with a dot
and end in a random suffix, so they can never be a user's file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rmcore.core.errors import RmcoreError


class OutputError(RmcoreError):
    """An output path that rmcore will not write: it exists, it is an input, or it cannot be written."""


def check_output_file(name: str | os.PathLike | None, flag: str, *, inputs: tuple = (), read_folders: tuple = (),
                      overwrite: bool = False, append: bool = False) -> Path | None:
    """The output file `name` (given with option `flag`), checked before any work; None when not given.

    The one guard of every output file of every command. Refused: an existing file unless `overwrite`
    (or `append`: the caller continues its own file and checks its content); one of the `inputs`, or a
    path inside one of the `read_folders` (the models being read), even with `overwrite`; a folder;
    a place that cannot be written.
    """
    if not name:
        return None
    out = Path(name)
    refuse_inputs(out, flag, inputs=inputs, read_folders=read_folders)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is a folder; give a file name")
    if (out.exists() or out.is_symlink()) and not append:
        if not overwrite:
            raise OutputError(f"{flag} {out} already exists; choose another name, or add --overwrite to replace it")
        if not out.is_file():
            raise OutputError(f"{flag} {out} is not a regular file; rmcore replaces only files")
    check_writable_folder(out.parent, f"{flag} {out}")
    return out


def refuse_inputs(out: Path, flag: str, *, inputs: tuple = (), read_folders: tuple = ()) -> None:
    """Refuse an output that is one of the command's inputs, or lies inside a folder the command reads.

    `inputs` are files or folders the command reads (a data file, a reward model folder): an output
    equal to one of them would replace what is being read. `read_folders` are the model folders it
    reads: rmcore never writes inside one. Names that do not exist are skipped (the embedded model,
    an optional input not given).
    """
    resolved = Path(out).resolve()
    for given in (*inputs, *read_folders):
        if given and Path(given).exists() and resolved == Path(given).resolve():
            kind = "folder" if Path(given).is_dir() else "file"
            raise OutputError(f"{flag} {out} is the input {kind} {given} of this command, which must not be "
                              "replaced; choose another output")
    for folder in read_folders:
        if folder and Path(folder).is_dir() and resolved.is_relative_to(Path(folder).resolve()):
            raise OutputError(f"{flag} {out} is inside the model folder {folder}, which rmcore never writes into; "
                              "choose a path outside it")


def check_writable_folder(folder: Path, what: str, create: bool = False) -> None:
    """Fail now, with the reason, if nothing can be written in `folder` (created first when `create`)."""
    folder = Path(folder)
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{what}: cannot create the folder {folder} ({_reason(exc)})") from None
    if not folder.is_dir():
        if folder.exists():
            raise OutputError(f"{what}: {folder} is a file, not a folder; choose a path in a folder")
        if any(parent.exists() and not parent.is_dir() for parent in folder.parents):
            raise OutputError(f"{what}: {folder} lies under a file, not in a folder; choose a path in a folder")
        raise OutputError(f"{what}: no such folder {folder}")
    try:
        probe = tempfile.mkdtemp(prefix=".rmcore-write-check-", dir=folder)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputError(f"{what}: cannot write in {folder} ({_reason(exc)})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary path beside `path` for a writer that takes a file name (safetensors);
    renamed onto `path` once the block succeeds, deleted if it fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _apply_umask_to_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a hidden temporary file beside `path`; on success rename it onto `path`, on failure delete it."""
    with atomic_path(path) as tmp, open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as handle:
        handle.write(text)


def _apply_umask_to_file(path: str) -> None:
    """mkstemp makes files 0600; give the new file the permissions a plain open() would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
