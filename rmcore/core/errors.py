"""Errors that carry a message fit to show a user as is (CLI: stderr and exit 2; app: on the page)."""

from __future__ import annotations


class RmcoreError(Exception):
    """Base class: the message alone tells the user what is wrong and where."""


class DataError(RmcoreError):
    """A data file cannot be used. `where` is "PATH:LINE" (or just PATH) so messages read PATH:LINE: what."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class ModelError(RmcoreError):
    """A model folder or name cannot be loaded or saved."""


class TrainingError(RmcoreError):
    """Training cannot continue (non-finite loss, out of memory, ...)."""


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]}
_CONTROL.update({c: f"\\u{c:04x}" for c in [0x2028, 0x2029, *range(0x202a, 0x202f), *range(0x2066, 0x206a)]})
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: object, keep_newlines: bool = False) -> str:
    """Text safe to print on a terminal: control characters (escape sequences, carriage returns, bidi
    overrides) from a file's names or values are shown escaped, so a file can neither rewrite the
    screen nor fake another line of output."""
    table = _CONTROL if not keep_newlines else {k: v for k, v in _CONTROL.items() if k != ord("\n")}
    return str(text).translate(table)
