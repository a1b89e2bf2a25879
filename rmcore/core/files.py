"""Reading the small files rmcore opens besides data (a token, a prompts list, a samples file, a model
folder's JSON) without ever blocking on a named pipe or reading a device without end.

Data files go through rmcore.data.records.read_path, which applies the same rules: only a regular
file is read (a symlink is followed first), it is opened with O_NONBLOCK so that a named pipe cannot
hang the open, and no more than a limit is read, so `/dev/zero` or a file that grows while it is read
costs at most the limit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from rmcore.core.errors import RmcoreError

Fail = Callable[[str, str], Exception]  # (the file's name, what is wrong) -> the exception to raise


def _error(name: str, reason: str) -> Exception:
    return RmcoreError(f"{name}: {reason}")


NOT_REGULAR = "is not a regular file (a named pipe, device or socket)"


def open_regular_file(path: str | os.PathLike, name: str | None = None, *, kind: str = "file",
                      fail: Fail = _error) -> BinaryIO:
    """A binary stream of `path`, refused at once unless it is a regular file (a FIFO never blocks the open).
    `kind` names what the file should be in the refusals ("data file": "is a folder, not a data file")."""
    name = str(path) if name is None else name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise fail(name, "no such file") from None
    except IsADirectoryError:
        raise fail(name, f"is a folder, not a {kind}") from None
    except OSError as exc:
        raise fail(name, f"cannot open the file ({exc.strerror or type(exc).__name__})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise fail(name, f"is a folder, not a {kind}")
        if not stat.S_ISREG(mode):
            raise fail(name, f"{NOT_REGULAR}; give a {kind}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_small_file(path: str | os.PathLike, max_bytes: int, name: str | None = None, *, kind: str = "file",
                    fail: Fail = _error) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, or one line saying why not."""
    name = str(path) if name is None else name
    with open_regular_file(path, name, kind=kind, fail=fail) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > max_bytes:
            raise fail(name, f"{_size(size)} is far too large for this file (at most {_size(max_bytes)})")
        raw = stream.read(max_bytes + 1)
    if len(raw) > max_bytes:  # it grew while being read
        raise fail(name, f"over {_size(max_bytes)}, far too large for this file")
    return raw


def check_regular_file(path: str | os.PathLike, name: str | None = None, *, fail: Fail = _error) -> None:
    """Refuse, without opening it, a path that is not a regular file once links are followed."""
    name = str(path) if name is None else name
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        raise fail(name, "no such file (or a link to nothing)") from None
    except OSError as exc:
        raise fail(name, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(mode):
        raise fail(name, f"{'is a folder' if stat.S_ISDIR(mode) else NOT_REGULAR}, not a file rmcore can read")


def _size(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / 2**20:,.0f} MB"
    if size >= 1 << 10:
        return f"{size / 2**10:,.0f} KB"
    return f"{size} bytes"
