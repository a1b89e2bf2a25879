"""Kept so that code written against earlier rmcore keeps working (the README documents this path);
the home of these names is `rmcore.analysis.scoring`."""

from rmcore.analysis.scoring import scored_record, scored_records

__all__ = ["scored_record", "scored_records"]
