"""Preference data: files to located records, every format to ranked groups, rankings, tokenization.

No torch, numpy or transformers are imported here (the app's first page and `rmcore validate
--no-tokenize` stay light). The names below are the package's public surface, as `rmcore.data`
has always offered them; their home is `rmcore.data.formats`.
"""

from rmcore.data.formats import (
    FORMATS,
    MAX_K,
    MAX_MARGIN,
    MAX_RANK,
    RANKED_FORMATS,
    ROLES,
    DataReport,
    Message,
    PreferenceData,
    RankedGroup,
    RowError,
    SkippedRow,
    demo_data_path,
    detect_format,
    groups_fingerprint,
    ordered_pairs,
    read_preferences,
    read_preferences_bytes,
    records_to_preferences,
    split_groups,
    split_hh_dialogue,
    summarize,
    write_ranked_jsonl,
)

__all__ = [
    "FORMATS", "MAX_K", "MAX_MARGIN", "MAX_RANK", "RANKED_FORMATS", "ROLES", "DataReport", "Message",
    "PreferenceData", "RankedGroup", "RowError", "SkippedRow", "demo_data_path", "detect_format",
    "groups_fingerprint", "ordered_pairs", "read_preferences", "read_preferences_bytes", "records_to_preferences",
    "split_groups", "split_hh_dialogue", "summarize", "write_ranked_jsonl",
]
