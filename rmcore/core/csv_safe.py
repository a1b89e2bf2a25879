"""CSV cells that a spreadsheet will not run: every CSV rmcore writes goes through `safe_table`.

Excel, LibreOffice and Google Sheets read a cell starting with `=`, `+`, `-` or `@` (and, after
their own trimming, a tab or carriage return before one) as a formula, so a response text in a data
file could run a formula on the machine of whoever opens the exported CSV. Such text cells get a
leading apostrophe, the spreadsheet convention for "this is text" (OWASP's advice); numbers stay
numbers.
"""

from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def safe_table(frame):
    """A copy of a pandas DataFrame whose text cells (and column names) are safe to write as CSV."""
    from pandas.api.types import is_object_dtype, is_string_dtype  # pandas (numpy): core stays light

    safe = frame.copy()
    for column in safe.columns:
        if is_object_dtype(safe[column].dtype) or is_string_dtype(safe[column].dtype):
            safe[column] = safe[column].map(safe_cell)
    safe.columns = [safe_cell(c) for c in safe.columns]
    return safe
