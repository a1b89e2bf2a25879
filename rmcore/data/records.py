"""Bytes to located records: the layer under `rmcore.data.formats` that reads files, whatever they hold.

A data file becomes a list of `(where, record)` pairs, `where` being "PATH:LINE" (or "PATH:record N",
"PATH:row N") so every later message can say where a problem is. This layer knows about files and
encodings, not about preference formats: it refuses what cannot be read (not a regular file, over the
size limit, binary, UTF-16, not JSON) with one `DataError`, and marks a record it cannot parse as
`Unparsable` with its reason, so one bad line costs that line, never the whole file.

Time and memory stay bounded on any input: files are read with a cap on their (decompressed) size,
parquet files are checked against their metadata and their decoded size before any row becomes a
Python object, and the record count is capped too (a few bytes per record can otherwise cost a few
hundred bytes each in memory). `RMCORE_MAX_DATA_MB` raises both caps.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import gzip
import io
import json
import math
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rmcore.core.errors import DataError
from rmcore.core.files import open_regular_file
from rmcore.data.fields import RECORD_FIELDS

MAX_DATA_ENV = "RMCORE_MAX_DATA_MB"
DEFAULT_MAX_DATA_MB = 256
RECORDS_PER_MB = 2048  # the record cap: 256 MB allows 524,288 records (HH-RLHF has 160k, SHP 349k)
_CHUNK = 1 << 20
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abAB]", re.ASCII)  # how a lone surrogate can enter through JSON
_SURROGATE = re.compile("[\ud800-\udfff]")
_TRAILING_SPACE = re.compile(r"\s*\Z")
_LEADING_SPACE = re.compile(r"\s*")
_SEP_LINE = re.compile(r"sep=(.)\r?\n")  # Excel's first line naming the delimiter


@dataclass
class Unparsable:
    """Stands for a record that could not be parsed at all (a bad JSON line, a broken CSV row)."""

    reason: str


@dataclass
class Records:
    """What a file held: located records in file order, and file-level warnings."""

    items: list[tuple[str, Any]]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_records: int

    @property
    def advice(self) -> str:
        mb = self.max_bytes >> 20
        return f"rmcore reads up to {mb} MB and {self.max_records:,} records; set {MAX_DATA_ENV} to raise the limit"


def limits() -> Limits:
    """The caps on data size and record count, from `RMCORE_MAX_DATA_MB` (default 256)."""
    text = os.environ.get(MAX_DATA_ENV, "").strip()
    try:
        mb = float(text) if text else DEFAULT_MAX_DATA_MB
    except ValueError:
        raise DataError(MAX_DATA_ENV, f"must be a number of megabytes, found {text!r}") from None
    if not 0 < mb < 1 << 30:
        raise DataError(MAX_DATA_ENV, f"must be a positive number of megabytes, found {text!r}")
    return Limits(int(mb * (1 << 20)), max(1, int(mb * RECORDS_PER_MB)))


# ----------------------------------------------------------------------------- getting the bytes


@contextlib.contextmanager
def no_cycle_collection():
    """Records hold no reference cycles: without this, Python's cycle collector walks every record
    built so far again and again while a large file is read (a third of the time for a million)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_path(path: str | Path, name: str) -> Records:
    """Records of a file on disk: only a regular file is read, and never more than the limit."""
    cap = limits()
    # O_NONBLOCK: a named pipe opens at once instead of waiting for a writer; a folder (even one
    # named x.jsonl) or a device is refused before anything is read
    with open_regular_file(path, name, kind="data file", fail=DataError) as stream:
        info = os.fstat(stream.fileno())
        suffix, gz = _suffix(name)
        magic = stream.read(2)
        stream.seek(0)
        if gz or magic == b"\x1f\x8b":
            raw = _gunzip(stream, name, cap)
        else:
            if info.st_size > cap.max_bytes:
                raise DataError(name, f"the file is {info.st_size / 2**20:.0f} MB; {cap.advice}")
            raw = stream.read(cap.max_bytes + 1)
            if len(raw) > cap.max_bytes:  # it grew while we read it
                raise DataError(name, f"the file is over {cap.max_bytes >> 20} MB; {cap.advice}")
    return _records(raw, name, suffix, cap)


def read_bytes(raw: bytes, name: str) -> Records:
    """Records of bytes already in memory (an upload); `name` gives the suffix."""
    cap = limits()
    suffix, gz = _suffix(name)
    if gz or raw[:2] == b"\x1f\x8b":
        raw = _gunzip(io.BytesIO(raw), name, cap)
    elif len(raw) > cap.max_bytes:
        raise DataError(name, f"the file is {len(raw) / 2**20:.0f} MB; {cap.advice}")
    return _records(raw, name, suffix, cap)


def _suffix(name: str) -> tuple[str, bool]:
    lower = name.lower()
    gz = lower.endswith(".gz")
    if gz:
        lower = lower[:-3]
    return Path(lower).suffix, gz


def _gunzip(stream, name: str, cap: Limits) -> bytes:
    """Inflate a gzip stream chunk by chunk, stopping as soon as it passes the size limit."""
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as archive:
            while chunk := archive.read(_CHUNK):
                out += chunk
                if len(out) > cap.max_bytes:
                    raise DataError(name, f"over {cap.max_bytes >> 20} MB once decompressed; {cap.advice}")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(name, f"not a readable gzip file ({exc})") from None
    return bytes(out)


# ----------------------------------------------------------------------------- bytes to records


def _records(raw: bytes, name: str, suffix: str, cap: Limits) -> Records:
    if not raw.strip():
        raise DataError(name, "the file is empty")
    if suffix == ".parquet" or raw[:4] == b"PAR1":
        return Records(_read_parquet(raw, name, cap))
    text = decode(raw, name)
    del raw
    if suffix in (".csv", ".tsv"):
        return _read_csv(text, name, "\t" if suffix == ".tsv" else ",", cap)
    start = _first_non_space(text)
    first = text[start : start + 1]
    if first in ("{", "["):
        return _read_json(text, name, cap)
    if suffix in (".json", ".jsonl"):
        raise DataError(f"{name}:1", "not JSON: expected one JSON object per line (or a JSON array)")
    return _read_csv(text, name, ",", cap)


def _first_non_space(text: str) -> int:
    return _LEADING_SPACE.match(text).end()


def decode(raw: bytes, name: str) -> str:
    """UTF-8 text (a byte-order mark is dropped); UTF-16 and binary data are named as such."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") or _looks_utf16(raw[:4096]):
        raise DataError(name, "UTF-16 (or UTF-32) text; save the file as UTF-8 (in Excel: 'CSV UTF-8')")
    if b"\x00" in raw[:8192]:
        raise DataError(name, "binary data, not a text file (expected UTF-8 JSON lines, JSON, CSV or parquet)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{name}:{line}", f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None


def _looks_utf16(head: bytes) -> bool:
    """UTF-16 without a byte-order mark: every other byte of ASCII text is zero."""
    even, odd = head[0::2], head[1::2]
    if len(head) < 4:
        return False
    return (odd.count(0) >= 0.9 * len(odd) and even.count(0) == 0) or (
        even.count(0) >= 0.9 * len(even) and odd.count(0) == 0
    )


def _lines(text: str, start: int = 0) -> Iterator[tuple[int, int, int]]:
    """(line number, start, end) of each line, splitting on "\\n" only (JSON text may hold U+2028)."""
    number, pos, size = 1 + text.count("\n", 0, start), start, len(text)
    while pos < size:
        end = text.find("\n", pos)
        end = size if end < 0 else end
        yield number, pos, end
        number, pos = number + 1, end + 1


# ----------------------------------------------------------------------------- JSON


class _JsonParser:
    """json.loads that notices duplicate keys (the last value would win silently) and lone surrogates."""

    def __init__(self):
        self.duplicates: list[str] = []
        self._decoder = json.JSONDecoder(object_pairs_hook=self._pairs)

    def _pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        record = dict(pairs)
        if len(record) != len(pairs):
            seen: set[str] = set()
            self.duplicates += [k for k, _ in pairs if k in seen or seen.add(k)]
        return record

    def parse(self, text: str) -> Any:
        self.duplicates = []
        return self._decoder.decode(text)

    def notes(self, text: str, value: Any, where: str) -> tuple[Any, list[str]]:
        """(the value with lone surrogates replaced, warnings about it) for text just parsed."""
        notes = [f"{where}: field '{key}' appears more than once in the record; the last value is used"
                 for key in dict.fromkeys(self.duplicates)]
        if _SURROGATE_ESCAPE.search(text):
            value, replaced = _replace_surrogates(value)
            if replaced:
                notes.append(f"{where}: lone UTF-16 surrogates (such as \\ud800) are not characters; {replaced} "
                             "replaced with U+FFFD")
        return value, notes


def _replace_surrogates(value: Any) -> tuple[Any, int]:
    if isinstance(value, str):
        fixed, count = _SURROGATE.subn("\ufffd", value)
        return fixed, count
    if isinstance(value, list):
        total = 0
        for i, item in enumerate(value):
            value[i], count = _replace_surrogates(item)
            total += count
        return value, total
    if isinstance(value, dict):
        total = 0
        for key in list(value):
            new_key, count_key = _replace_surrogates(key)
            item, count = _replace_surrogates(value.pop(key))
            value[new_key] = item
            total += count + count_key
        return value, total
    return value, 0


def json_problem(exc: ValueError) -> str:
    """"Unterminated string starting at column 25": the parser's words with where, read naturally."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"
    if "integer string conversion" in str(exc):
        return "a number with thousands of digits"
    return str(exc)


_TOO_DEEP = "nested too deeply (thousands of brackets) to be a record"


def _read_json(text: str, name: str, cap: Limits) -> Records:
    parser = _JsonParser()
    number, start, end = next(_lines(text, _first_non_space(text)))
    first_line_is_json = True
    try:
        whole = parser.parse(text[start:end])
        is_last = bool(_TRAILING_SPACE.match(text, end))
    except RecursionError:
        is_last = False
    except ValueError:
        first_line_is_json = is_last = False
    if not first_line_is_json:  # a document over several lines (pretty-printed JSON, an array)
        try:
            whole = parser.parse(text)
            is_last = True
        except RecursionError:
            raise DataError(name, f"the JSON document is {_TOO_DEEP}") from None
        except ValueError as exc:
            if text[start] == "[":
                line = getattr(exc, "lineno", 1)
                raise DataError(f"{name}:{line}", f"not valid JSON: {json_problem(exc)}") from None
    if is_last:  # the file is one JSON value
        records = _document_records(whole, name, cap)
        if records is not None:
            try:
                whole, warnings = parser.notes(text, whole, name)
            except RecursionError:
                raise DataError(name, f"the JSON document is {_TOO_DEEP}") from None
            return Records(records, warnings)
    return _json_lines(text, name, cap)


def _document_records(whole: Any, name: str, cap: Limits) -> list[tuple[str, Any]] | None:
    """A whole-file JSON value as records: an array, an object holding one array, or one record."""
    if isinstance(whole, list):
        _check_count(len(whole), name, cap)
        return [(f"{name}:record {i + 1}", record) for i, record in enumerate(whole)]
    if not isinstance(whole, dict):
        return None
    _refuse_wrong_shape(whole, name)
    nested = {k: v for k, v in whole.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    if len(nested) == 1 and not ({"prompt", "chosen", "responses"} & set(whole)):
        (items,) = nested.values()
        _check_count(len(items), name, cap)
        return [(f"{name}:record {i + 1}", record) for i, record in enumerate(items)]
    return [(f"{name}:1", whole)]


_FIELD_HINT = RECORD_FIELDS  # a key of these: the file is data, in a shape to explain


def _refuse_wrong_shape(whole: dict[str, Any], name: str) -> None:
    """Exports whose shape is not one record per row get a hint on how to write them, not a guess."""
    keys = {str(k).strip().lower() for k in whole}
    splits = {k: v for k, v in whole.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    if len(splits) >= 2 and not (keys & _FIELD_HINT):
        counts = ", ".join(f"{k}: {len(v)} records" for k, v in splits.items())
        raise DataError(name, f"the file holds several lists of records ({counts}); rmcore reads one list per "
                              "file: save each split to its own file (for example one .jsonl per split)")
    fields = keys & _FIELD_HINT
    if not fields:
        return
    values = [v for k, v in whole.items() if str(k).strip().lower() in fields]
    if all(isinstance(v, dict) and v and all(str(i).isdigit() for i in v) for v in values):
        raise DataError(name, "looks like a pandas DataFrame.to_json() export (each column maps row numbers to "
                              "values); write it one record per row: df.to_json(path, orient='records', lines=True)")
    if len(values) >= 2 and all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        # one record has a text prompt, chosen or response; a column holds a list of texts
        texts = [v for k, v in whole.items() if str(k).strip().lower() in ("prompt", "chosen", "rejected", "response")]
        if texts and all(v and all(isinstance(item, str) for item in v) for v in texts):
            raise DataError(name, "looks like columns of lists (one list per field, as pandas to_json(orient="
                                  "'list') or a dict of columns writes); write one record per row: "
                                  "df.to_json(path, orient='records', lines=True)")


def _json_lines(text: str, name: str, cap: Limits) -> Records:
    parser = _JsonParser()
    items: list[tuple[str, Any]] = []
    warnings: list[str] = []
    for number, start, end in _lines(text):
        line = text[start:end]
        if not line.strip():
            continue
        where = f"{name}:{number}"
        if len(items) >= cap.max_records:
            _check_count(len(items) + 1, name, cap)
        try:
            record, notes = parser.notes(line, parser.parse(line), where)
            warnings += notes
        except RecursionError:
            record = Unparsable(f"not usable JSON: {_TOO_DEEP}")
        except ValueError as exc:
            if _TRAILING_SPACE.match(text, end) and items and isinstance(exc, json.JSONDecodeError):
                reason = f"truncated JSON on the last line ({json_problem(exc)}); the file may have been cut off"
            else:
                reason = f"not valid JSON: {json_problem(exc)}"
            record = Unparsable(reason)
        items.append((where, record))
    if items and all(isinstance(r, Unparsable) for _, r in items):
        where, bad = items[0]
        raise DataError(where, bad.reason)
    return Records(items, warnings)


def _check_count(count: int, name: str, cap: Limits) -> None:
    if count > cap.max_records:
        raise DataError(name, f"holds more than {cap.max_records:,} records; {cap.advice}")


# ----------------------------------------------------------------------------- CSV


def _read_csv(text: str, name: str, delimiter: str, cap: Limits) -> Records:
    warnings: list[str] = []
    start = 0
    sep_line = _SEP_LINE.match(text)
    if sep_line:  # Excel writes "sep=;" as a first line to name the delimiter
        delimiter, start = sep_line.group(1), sep_line.end()
    else:
        delimiter = _sniff_delimiter(text, name, delimiter, warnings)
    csv.field_size_limit(max(csv.field_size_limit(), cap.max_bytes + 1))  # a long cell is a long text, not an error
    source = _CsvLines(text, start)
    reader = csv.DictReader(source, delimiter=delimiter)
    offset = 1 + text.count("\n", 0, start) - 1  # line numbers of the file, counting a "sep=" line
    try:
        fieldnames = reader.fieldnames
    except csv.Error as exc:
        raise DataError(f"{name}:{offset + 1}", f"not valid CSV: {exc}") from None
    if not fieldnames or all(not (f or "").strip() for f in fieldnames):
        raise DataError(f"{name}:{offset + 1}", "no header row: the first line must name the columns")
    columns = [str(f).strip().lower() for f in fieldnames]
    for column in dict.fromkeys(c for c in columns if columns.count(c) > 1):
        warnings.append(f"{name}:{offset + 1}: column '{column}' appears {columns.count(column)} times in the "
                        "header; only the last one is read")
    items: list[tuple[str, Any]] = []
    row_start = reader.line_num + 1
    try:
        for row in reader:
            first_line, row_start = row_start, reader.line_num + 1
            where = f"{name}:{offset + first_line}"
            if len(items) >= cap.max_records:
                _check_count(len(items) + 1, name, cap)
            if None in row:  # more cells than header columns
                items.append((where, Unparsable(f"{len(row[None])} more cells than the header has columns")))
                continue
            if reader.line_num > first_line and None in row.values() and source.done:
                reason = (f"a quote opened on line {offset + first_line} is never closed, so lines "
                          f"{offset + first_line}-{offset + reader.line_num} were read as one row; close the "
                          "quote or escape it as \"\"")
                items.append((where, Unparsable(reason)))
                continue
            items.append((where, {k: _csv_cell(v) for k, v in row.items() if k is not None}))
    except csv.Error as exc:
        raise DataError(f"{name}:{offset + reader.line_num}", f"not valid CSV: {exc}") from None
    return Records(items, warnings)


class _CsvLines:
    """The text's lines, ends kept, for csv.reader without copying the text; `done` once the last is read."""

    def __init__(self, text: str, start: int):
        self._lines = ((text[s : e + 1]) for _, s, e in _lines(text, start))
        self.done = False
        self._next = next(self._lines, None)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._next
        if line is None:
            raise StopIteration
        self._next = next(self._lines, None)
        self.done = self._next is None
        return line


_KNOWN_COLUMNS = RECORD_FIELDS | {"margin"}


def _sniff_delimiter(text: str, name: str, delimiter: str, warnings: list[str]) -> str:
    """A '.csv' written with ';' or tabs (Excel in many locales): read it so, and say so."""
    header = text[: text.find("\n") if "\n" in text else len(text)]
    if delimiter != "," or "," in header:
        return delimiter
    for other, label in ((";", "semicolons"), ("\t", "tabs")):
        columns = {c.strip().strip('"').lower() for c in header.split(other)}
        if len(columns) >= 2 and columns & _KNOWN_COLUMNS:
            warnings.append(f"{name}: the columns are separated by {label}, not commas; read with {label}")
            return other
    return delimiter


def _csv_cell(value: str | None) -> Any:
    """CSV cells are text; empty and NaN cells mean "no value", JSON lists are parsed."""
    if value is None:
        return None
    stripped = value.strip()
    if stripped == "" or stripped.lower() in ("nan", "null", "none", "na"):
        return None
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            return json.loads(stripped)
        except (ValueError, RecursionError):
            return value
    return value


# ----------------------------------------------------------------------------- parquet


def _read_parquet(raw: bytes, name: str, cap: Limits) -> list[tuple[str, Any]]:
    """Rows of a parquet file, after checking its size from the metadata and once decoded."""
    import pyarrow.parquet as pq  # pyarrow: only a parquet file needs it (half a second to import)

    try:
        meta = pq.ParquetFile(io.BytesIO(raw)).metadata
        _check_count(meta.num_rows, name, cap)
        stored = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if stored > cap.max_bytes:
            raise DataError(name, f"holds {stored / 2**20:.0f} MB of data once read; {cap.advice}")
        schema = meta.schema
        text_columns = [schema.column(i).path for i in range(len(schema)) if schema.column(i).physical_type ==
                        "BYTE_ARRAY"]
        # Text stays dictionary-encoded while its decoded size is measured: a small file repeating one
        # long text in every row must not be expanded before it is refused.
        table = pq.ParquetFile(io.BytesIO(raw), read_dictionary=text_columns).read()
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises many types for a broken file
        raise DataError(name, f"not a readable parquet file ({type(exc).__name__}: {exc})") from None
    decoded = sum(_decoded_bytes(column.chunks) for column in table.columns)
    if decoded > cap.max_bytes:
        raise DataError(name, f"holds {decoded / 2**20:.0f} MB of data once decoded; {cap.advice}")
    return [(f"{name}:row {i + 1}", _plain(row)) for i, row in enumerate(table.to_pylist())]


def _decoded_bytes(arrays) -> int:
    """Bytes the arrays take once dictionaries are expanded (what to_pylist will build)."""
    import pyarrow as pa  # pyarrow: only a parquet file needs it
    import pyarrow.compute as pc

    total = 0
    for array in arrays:
        kind = array.type
        if pa.types.is_dictionary(kind):
            lengths = pc.binary_length(array.dictionary) if _is_binary(kind.value_type) else None
            if lengths is None:
                total += array.indices.nbytes * 8
            else:
                total += pc.sum(pc.take(lengths, array.indices)).as_py() or 0
                total += 8 * len(array)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
            total += 8 * len(array) + _decoded_bytes([array.flatten()])
        elif pa.types.is_struct(kind):
            total += _decoded_bytes([array.field(i) for i in range(kind.num_fields)])
        elif pa.types.is_map(kind):
            total += _decoded_bytes([array.keys, array.items])
        else:
            total += array.nbytes
    return total


def _is_binary(kind) -> bool:
    import pyarrow as pa  # pyarrow: only a parquet file needs it

    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind) or \
        pa.types.is_large_binary(kind)


def _plain(value: Any) -> Any:
    """NaN (pandas writes it for missing numbers) into None, at any depth."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
