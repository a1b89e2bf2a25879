"""Per-session state: the data set being edited, kept in st.session_state (one per browser tab).

Nothing here is shared between sessions: each tab parses its own upload into its own copies of the
groups, so one person's edits never show up in another's tab.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from rmcore.data import (
    DataReport,
    PreferenceData,
    RankedGroup,
    demo_data_path,
    groups_fingerprint,
    read_preferences_bytes,
    summarize,
)

DATA_KEY = "rm_data"


@dataclass
class LoadedData:
    """A data set as read from a file, plus the user's edits (re-ranks, new best responses, exclusions)."""

    name: str
    groups: list[RankedGroup]  # this session's own copies; the Data page edits them in place
    report: dict[str, Any]  # the validation report of the file as read (DataReport.to_dict)
    excluded: set[int] = field(default_factory=set)  # "too hard to rank": left out of training and download
    edited: set[int] = field(default_factory=set)  # groups the user changed
    revisions: dict[int, int] = field(default_factory=dict)  # bumped when a group's editor must be rebuilt
    version: int = 0  # bumped on every edit: invalidates estimates and splits computed earlier
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # in widget keys: a new file, new widgets

    def active(self) -> list[RankedGroup]:
        """The groups training uses: not excluded, with at least one comparison left after edits."""
        return [g for i, g in enumerate(self.groups) if i not in self.excluded and g.pairs()]

    def unusable(self) -> list[int]:
        return [i for i, g in enumerate(self.groups) if i not in self.excluded and not g.pairs()]

    def summary(self) -> DataReport:
        return summarize(self.active(), self.name, self.report.get("format", "ranked"))

    def touch(self, index: int | None = None, rebuild: bool = False) -> None:
        self.version += 1
        if index is not None:
            self.edited.add(index)
            if rebuild:
                self.revisions[index] = self.revisions.get(index, 0) + 1

    def fingerprint(self) -> str:
        """Changes whenever the active data changes (a key for caches of estimates and splits)."""
        return groups_fingerprint(self.active())

    @property
    def stem(self) -> str:
        name = self.name.rsplit("/", 1)[-1]
        for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        return name or "data"


def from_preferences(preferences: PreferenceData, name: str) -> LoadedData:
    return LoadedData(
        name=name, groups=copy.deepcopy(preferences.groups), report=preferences.report.to_dict()
    )


def parse_upload(raw: bytes, name: str) -> LoadedData:
    """Parse uploaded bytes at once (an upload lives in memory only); DataError carries the message."""
    return from_preferences(read_preferences_bytes(raw, name), name)


def load_demo() -> LoadedData:
    path = demo_data_path()
    return from_preferences(read_preferences_bytes(path.read_bytes(), path.name), path.name)


def get_data() -> LoadedData | None:
    return st.session_state.get(DATA_KEY)


def set_data(data: LoadedData | None) -> None:
    st.session_state[DATA_KEY] = data


def session_id() -> str:
    """This browser session's own id (who owns a training job), kept in its session state."""
    if "rm_session_id" not in st.session_state:
        st.session_state["rm_session_id"] = uuid.uuid4().hex
    return st.session_state["rm_session_id"]
