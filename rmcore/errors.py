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
