"""Read human preference data in the formats people actually have, into one shape: ranked groups.

Every format becomes a list of `RankedGroup`: one instruction (a conversation ending with the
user's turn), K responses and their human ranks (1 = best, equal = tie, None = unranked). Pairs are
the K = 2 case. Rows that cannot be used are skipped with a reason that names the file and line,
never dropped silently; a file with no usable row raises `DataError`.

Bytes become located records in `rmcore.data.records` (files, encodings, JSON, CSV, parquet, size
limits); this module knows the preference formats: which fields mean what, and what is usable.
"""

from __future__ import annotations

import difflib
import json
import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rmcore.core.errors import DataError
from rmcore.data.fields import KNOWN_FIELDS
from rmcore.data.records import Records, Unparsable, no_cycle_collection, read_bytes, read_path

Message = dict[str, str]
ROLES = ("system", "user", "assistant", "tool")  # the roles chat templates know
MAX_MARGIN = 1e4
MAX_K = 9  # the README's range of responses per prompt; more is read, with a warning on its cost
MAX_RESPONSES = 64  # ranked responses one prompt may have (2,016 pairs); a prompt with more is skipped, reported

FORMATS = {
    "ranked": "ranked lists: prompt, responses, ranks (1 = best, equal = tie, null = unranked)",
    "pairs": "pairs with explicit prompt: prompt, chosen, rejected (optional margin)",
    "implicit_pairs": "pairs with implicit prompt (HH-RLHF): chosen, rejected sharing the dialogue",
    "conversational": "conversational pairs: prompt/chosen/rejected as lists of {role, content}",
    "tidy": "tidy table: one row per response with prompt, response, rank",
    "oasst": "OpenAssistant message trees: ranked sibling replies",
    "candidates": "unranked candidates to score: prompt, responses (or prompt, response: one row each)",
}
RANKED_FORMATS = {name: text for name, text in FORMATS.items() if name != "candidates"}  # what training reads
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def ordered_pairs(ranks: list[int | None]) -> list[tuple[int, int]]:
    """Every strictly ordered pair (winner, loser) of a ranking (1 = best); ties and None give none."""
    return [
        (w, l)
        for w, rank_w in enumerate(ranks)
        for l, rank_l in enumerate(ranks)
        if rank_w is not None and rank_l is not None and rank_w < rank_l
    ]


def count_pairs(ranks: list[int | None]) -> tuple[int, int]:
    """(strictly ordered pairs, tied pairs) of a ranking, counted without building them: K = 20,000
    responses make 2 x 10^8 pairs, which `ordered_pairs` would hold in gigabytes."""
    counts = Counter(rank for rank in ranks if rank is not None)
    ranked = sum(counts.values())
    ties = sum(c * (c - 1) // 2 for c in counts.values())
    return ranked * (ranked - 1) // 2 - ties, ties


@dataclass
class RankedGroup:
    """One instruction with the responses people compared."""

    prompt: list[Message]  # the conversation so far, ending with the user's turn
    responses: list[str]
    ranks: list[int | None]  # 1 = best; equal numbers = tie; None = left unranked
    margin: float = 0.0  # extra margin a pair must clear (Llama 2 style); 0 = none
    source: str = ""  # "PATH:LINE" the group came from

    def pairs(self) -> list[tuple[int, int]]:
        """Every strictly ordered pair (winner, loser); ties and unranked responses give none."""
        return ordered_pairs(self.ranks)

    @property
    def prompt_text(self) -> str:
        """The last user turn: what a person would call "the instruction"."""
        return self.prompt[-1]["content"] if self.prompt else ""

    def to_record(self) -> dict[str, Any]:
        """The ranked-list record this group would be written as (format "ranked")."""
        if len(self.prompt) == 1 and self.prompt[0]["role"] == "user":
            prompt: Any = self.prompt[0]["content"]
        else:
            prompt = self.prompt
        record: dict[str, Any] = {"prompt": prompt, "responses": self.responses, "ranks": self.ranks}
        if self.margin:
            record["margin"] = self.margin
        return record


@dataclass
class SkippedRow:
    where: str  # "PATH:LINE"
    reason: str


@dataclass
class DataReport:
    """What a file held and what became of it: the validation summary users see."""

    path: str
    format: str
    rows: int = 0  # records read (lines, table rows, trees)
    prompts: int = 0
    responses: int = 0
    k_distribution: dict[int, int] = field(default_factory=dict)
    comparisons: int = 0
    ties: int = 0  # pairs of ranked responses with the same rank (no comparison)
    unranked: int = 0  # responses left without a rank
    skipped: list[SkippedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    truncated_prompts: int | None = None  # set by `rmcore.data.encoding.count_truncated`
    truncated_responses: int | None = None
    max_length: int | None = None

    @property
    def k_max(self) -> int:
        return max(self.k_distribution, default=0)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["k_distribution"] = {str(k): v for k, v in sorted(self.k_distribution.items())}
        out["k_max"] = self.k_max
        out["format_description"] = FORMATS.get(self.format, "")
        return out

    def summary_lines(self) -> list[str]:
        k = ", ".join(f"K={k}: {n}" for k, n in sorted(self.k_distribution.items()))
        lines = [
            f"file:        {self.path}",
            f"format:      {self.format} ({FORMATS.get(self.format, '')})",
            f"rows read:   {self.rows}",
            f"prompts:     {self.prompts}",
            f"responses:   {self.responses} ({k})",
            f"comparisons: {self.comparisons} ordered pairs",
            f"ties:        {self.ties} tied pairs (no comparison)",
            f"unranked:    {self.unranked} responses",
        ]
        if self.truncated_prompts is not None:
            lines.append(
                f"truncated:   {self.truncated_prompts} prompts (from the left), "
                f"{self.truncated_responses} responses at --max-length {self.max_length}"
            )
        lines.append(f"skipped:     {len(self.skipped)} rows")
        for row in self.skipped[:20]:
            lines.append(f"  {row.where}: {row.reason}")
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        for warning in self.warnings[:20]:
            lines.append(f"warning: {warning}")
        if len(self.warnings) > 20:
            lines.append(f"warning: ... and {len(self.warnings) - 20} more")
        return lines


@dataclass
class PreferenceData:
    groups: list[RankedGroup]
    report: DataReport


class RowError(ValueError):
    """A record that cannot be used; the message says why, the reader adds where (`SkippedRow`).

    Public because `split_hh_dialogue` raises it for a pair that shares no dialogue."""


# ----------------------------------------------------------------------------- reading files


def read_preferences(path: str | Path, *, display_name: str | None = None, for_scoring: bool = False
                     ) -> PreferenceData:
    """Read a preference file (.jsonl/.json/.csv/.parquet, optionally .gz) and detect its format.

    For training and evaluation a group needs two responses of different rank; with `for_scoring`
    (rewards only) any group with a response is kept, ranked or not.
    """
    name = display_name or str(path)
    with no_cycle_collection():
        return records_to_preferences(read_path(path, name), name, for_scoring=for_scoring)


def read_preferences_bytes(raw: bytes, name: str, *, for_scoring: bool = False) -> PreferenceData:
    """Same as `read_preferences`, for bytes already in memory (an upload); `name` gives the suffix."""
    with no_cycle_collection():
        return records_to_preferences(read_bytes(raw, name), name, for_scoring=for_scoring)


def records_to_preferences(records: Records | list[tuple[str, Any]], name: str, *, for_scoring: bool = False
                           ) -> PreferenceData:
    """Turn located records ((where, record) pairs) into ranked groups, detecting the format from the fields."""
    if not isinstance(records, Records):
        records = Records(list(records))
    skipped: list[SkippedRow] = []
    warnings = list(records.warnings)
    objects: list[tuple[str, dict[str, Any]]] = []
    items, records.items = records.items, []  # each record is dropped once read: the groups replace them
    for where, record in items:
        if isinstance(record, Unparsable):
            skipped.append(SkippedRow(where, record.reason))
        elif not isinstance(record, dict):
            skipped.append(SkippedRow(where, f"expected an object with fields, found {_kind(record)}"))
        else:
            fields = record if all(type(k) is str and k == k.strip().lower() for k in record) else {
                str(k).strip().lower(): v for k, v in record.items()}
            if len(fields) < len(record):
                warnings.append(f"{where}: fields that differ only in case or spaces (such as 'Prompt' and "
                                "'prompt') are read as one; the last one is used")
            objects.append((where, fields))
    if not objects:
        first = skipped[0] if skipped else SkippedRow(name, "no records")
        raise DataError(first.where, first.reason if skipped else "the file holds no records")
    fmt = detect_format(objects[0][1], objects[0][0])
    report = DataReport(path=name, format=fmt, rows=len(items), skipped=skipped, warnings=warnings)
    groups = _GROUP_READERS[fmt](objects, report)
    usable = []
    for group in groups:
        reason = _why_unscorable(group) if for_scoring else _why_unusable(group)
        if reason:
            report.skipped.append(SkippedRow(group.source, reason))
        else:
            usable.append(group)
    if fmt != "oasst":  # a row of another shape among the rows: say which format the file was read as
        for row in report.skipped:
            if row.reason.endswith("is missing"):
                row.reason += f" (the file was read as '{fmt}', from the fields of {objects[0][0]})"
    report.skipped.sort(key=lambda row: _line_of(row.where))
    if not usable:
        reasons = Counter(row.reason for row in report.skipped).most_common(1)
        detail = f" (most common reason: {reasons[0][0]})" if reasons else ""
        first = report.skipped[0].where if report.skipped else name
        raise DataError(first, f"no {'response to score' if for_scoring else 'usable comparison'} in the file{detail}")
    _fill_stats(report, usable)
    report.warnings += _shape_warnings(usable)
    return PreferenceData(usable, report)


def _shape_warnings(groups: list[RankedGroup]) -> list[str]:
    """What is read but worth a look: prompts ending with an assistant turn, K far above the usual."""
    warnings = [f"{g.source}: the prompt ends with an assistant turn, so the response follows another "
                "assistant turn; a prompt usually ends with the user's turn" for g in groups
                if g.prompt and g.prompt[-1]["role"] == "assistant"]
    large = [len(g.responses) for g in groups if len(g.responses) > MAX_K]
    if large:
        k = max(large)
        pairs = k * (k - 1) // 2
        warnings.append(
            f"{len(large)} prompts have more than {MAX_K} responses (up to K = {k}); rmcore is tuned for K up to "
            f"{MAX_K}: a prompt with K = {k} costs about {k / MAX_K:.1f}x the compute of K = {MAX_K} per step and "
            f"gives {pairs} pairs against {MAX_K * (MAX_K - 1) // 2}, so its pairs dominate the loss; keeping "
            "the best-ranked responses is faster")
    return warnings


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {str: "text", list: "a list", dict: "an object", bool: "true/false"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _line_of(where: str) -> int:
    match = re.search(r":(?:record |row )?(\d+)$", where)
    return int(match.group(1)) if match else 0


# ----------------------------------------------------------------------------- format detection

def _misspellings(keys: set[str], missing_only: bool = False) -> list[str]:
    """"'promt' looks like a misspelling of 'prompt'" for each unknown key close to a known field.

    A key holding the field's name (prompt_id beside prompt) is another column, not a misspelling.
    With `missing_only`, only fields the record lacks are suggested.
    """
    hints = []
    for key in sorted(keys - set(KNOWN_FIELDS))[:200]:
        close = difflib.get_close_matches(key, KNOWN_FIELDS, n=1, cutoff=0.7)
        if close and close[0] not in key and not (missing_only and close[0] in keys):
            hints.append(f"'{key}' looks like a misspelling of '{close[0]}' (did you mean '{close[0]}'?)")
    return hints


def _field_list(keys: set[str]) -> str:
    names = sorted(keys)
    return ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "") if names else "none"


def _refuse_struct_prompt(record: dict[str, Any], where: str) -> None:
    """An object as prompt is an OpenAssistant root message; anything else (a parquet struct) is named."""
    prompt = record.get("prompt")
    if isinstance(prompt, dict) and "message_tree_id" not in record and not ({"role", "replies"} & set(prompt)):
        raise DataError(where, f"'prompt' is an object with fields ({_field_list(set(map(str, prompt)))}), "
                               "perhaps a struct column; expected text, a list of {role, content} messages, or "
                               "an OpenAssistant tree (message_tree_id, prompt with text, role and replies)")


def _refuse_misspelled_rank(keys: set[str], where: str) -> None:
    """Prompt and responses without ranks are candidates to score, unless a rank column is misspelled."""
    hints = [h for h in _misspellings(keys) if h.endswith(("'rank'?)", "'ranks'?)"))]
    if hints:
        raise DataError(where, "found responses but no ranks; " + "; ".join(hints))


def detect_format(record: dict[str, Any], where: str = "") -> str:
    """Name the format from a record's fields (see FORMATS)."""
    keys = set(record)
    _refuse_struct_prompt(record, where)
    if "message_tree_id" in keys or isinstance(record.get("prompt"), dict):
        return "oasst"
    if "prompt" not in keys:  # without it, a file of pairs reads as HH-RLHF dialogues and fails row by row
        hints = [h for h in _misspellings(keys, missing_only=True) if h.endswith("'prompt'?)")]
        if hints:
            raise DataError(where, "no 'prompt' field; " + "; ".join(hints))
    if {"responses", "ranks"} <= keys:
        return "ranked"
    if {"response", "rank"} <= keys:
        return "tidy"
    if {"prompt", "responses"} <= keys or {"prompt", "response"} <= keys:
        _refuse_misspelled_rank(keys, where)
        return "candidates"
    if {"chosen", "rejected"} <= keys:
        if isinstance(record.get("prompt"), list) or isinstance(record.get("chosen"), list):
            return "conversational"
        return "pairs" if "prompt" in keys else "implicit_pairs"
    hints = _misspellings(keys)
    found = _field_list(keys)
    message = (
        f"cannot tell the format from the fields ({found}); expected prompt+responses+ranks, "
        "prompt+response+rank, [prompt+]chosen+rejected, an OpenAssistant tree, or (to score) prompt+responses"
    )
    if hints:
        message += "; " + "; ".join(hints)
    raise DataError(where, message)


# ----------------------------------------------------------------------------- per-format readers


def _text(value: Any, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        if value is None:
            raise RowError(f"'{what}' is missing")
        raise RowError(f"'{what}' must be text, found {_kind(value)}")
    if not allow_empty and not value.strip():
        raise RowError(f"'{what}' is empty")
    return value


MAX_RANK = 1_000_000  # ranks are positions in a list; a larger number is a mistake, not a rank


def _shown(value: Any) -> str:
    """A value from the file as a message quotes it: repr (control characters escaped), kept short."""
    if isinstance(value, int) and abs(value) > 10**40:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _rank(value: Any, what: str, first: int = 1) -> int | None:
    """A rank as rmcore counts it (1 = best); `first` is the best rank in the file's own numbering."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    wrong = f"{what} must be a whole number ({first} = best) or null, found {_shown(value)}"
    if isinstance(value, bool):
        raise RowError(wrong)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RowError(wrong) from None
    if not isinstance(value, (int, float)):
        raise RowError(wrong)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise RowError(wrong)
    if value < first:
        raise RowError(f"{what} is {int(value)}: ranks start at {first} (best)")
    if value - first + 1 > MAX_RANK:
        raise RowError(f"{what} is {_shown(value)}: ranks are positions from {first} (best) to at most {MAX_RANK:,}")
    return int(value) - first + 1


def _prompt_messages(value: Any, what: str = "prompt") -> list[Message]:
    if isinstance(value, list):
        return _messages(value, what)
    return [{"role": "user", "content": _text(value, what)}]


def _messages(value: Any, what: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RowError(f"'{what}' must be a non-empty list of {{role, content}} messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowError(f"'{what}' message {i + 1} must be an object with role and content")
        for key in ("role", "content"):
            if key not in message:
                raise RowError(f"'{what}' message {i + 1} has no '{key}'")
        role = _text(message["role"], f"{what} message {i + 1} role").strip().lower()
        if role not in ROLES:
            raise RowError(f"'{what}' message {i + 1} has role {_shown(message['role'])}; expected "
                            f"{', '.join(ROLES)} (rename the roles, e.g. human -> user, gpt -> assistant)")
        content = _text(message["content"], f"{what} message {i + 1} content", allow_empty=True)
        messages.append({"role": role, "content": content})
    return messages


def _margin(record: dict[str, Any]) -> float:
    value = record.get("margin")
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise RowError(f"'margin' must be a number, found {_shown(value)}")
    try:
        margin = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"'margin' must be a number, found {_shown(value)}") from None
    if math.isnan(margin):
        return 0.0
    if not abs(margin) <= MAX_MARGIN:
        raise RowError(f"'margin' is {_shown(value)}; margins are small numbers (at most {MAX_MARGIN:g} either way)")
    return margin


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        raise RowError(f"'{what}' is missing")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError(f"'{what}' must be a list, found text") from None
    if not isinstance(value, list):
        raise RowError(f"'{what}' must be a list, found {_kind(value)}")
    return value


def _ranked_groups(objects: list[tuple[str, dict[str, Any]]], report: DataReport, *, ranked: bool = True
                   ) -> list[RankedGroup]:
    groups = []
    for where, record in objects:
        try:
            prompt = _prompt_messages(record.get("prompt"))
            responses = _list(record.get("responses"), "responses")
            ranks = _list(record.get("ranks"), "ranks") if ranked or "ranks" in record else [None] * len(responses)
            if len(ranks) != len(responses):
                raise RowError(f"{len(ranks)} ranks for {len(responses)} responses: give one rank per response")
            texts, kept_ranks = [], []
            for i, (response, rank) in enumerate(zip(responses, ranks)):
                rank = _rank(rank, f"the rank of response {i + 1}")
                text = _text(response, f"response {i + 1}", allow_empty=True)
                if not text.strip():
                    report.warnings.append(f"{where}: response {i + 1} is empty; dropped")
                    continue
                texts.append(text)
                kept_ranks.append(rank)
            groups.append(RankedGroup(prompt, texts, kept_ranks, _margin(record), where))
        except RowError as exc:
            report.skipped.append(SkippedRow(where, str(exc)))
    return groups


def _tidy_groups(objects: list[tuple[str, dict[str, Any]]], report: DataReport) -> list[RankedGroup]:
    by_prompt: dict[str, RankedGroup] = {}
    if any("margin" in record for _, record in objects[:1]):
        report.warnings.append(f"{objects[0][0]}: the 'margin' column is ignored: a tidy table gives one row per "
                               "response, and margins belong to pairs (prompt, chosen, rejected, margin)")
    for where, record in objects:
        try:
            prompt = _text(record.get("prompt"), "prompt")
            response = _text(record.get("response"), "response")
            rank = _rank(record.get("rank"), "rank")  # missing (candidates to score) = unranked
        except RowError as exc:
            report.skipped.append(SkippedRow(where, str(exc)))
            continue
        group = by_prompt.setdefault(prompt, RankedGroup([{"role": "user", "content": prompt}], [], [], 0.0, where))
        group.responses.append(response)
        group.ranks.append(rank)
    return list(by_prompt.values())


def _pair_group(prompt: list[Message], chosen: str, rejected: str, margin: float, where: str) -> RankedGroup:
    if chosen.strip() == rejected.strip():
        raise RowError("chosen and rejected are identical: no preference to learn")
    return RankedGroup(prompt, [chosen, rejected], [1, 2], margin, where)


def _pair_groups(objects: list[tuple[str, dict[str, Any]]], report: DataReport) -> list[RankedGroup]:
    groups = []
    for where, record in objects:
        try:
            prompt = _prompt_messages(record.get("prompt"))
            chosen = _text(record.get("chosen"), "chosen")
            rejected = _text(record.get("rejected"), "rejected")
            groups.append(_pair_group(prompt, chosen, rejected, _margin(record), where))
        except RowError as exc:
            report.skipped.append(SkippedRow(where, str(exc)))
    return groups


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Split an HH-RLHF pair at the last "\\n\\nAssistant:" both share: (prompt messages, chosen, rejected).

    Raises `RowError` (a ValueError) when the two share no such dialogue.
    """
    cut = chosen.rfind(_HH_ASSISTANT)
    while cut >= 0 and not rejected.startswith(chosen[: cut + len(_HH_ASSISTANT)]):
        cut = chosen.rfind(_HH_ASSISTANT, 0, cut)
    if cut < 0:
        raise RowError("chosen and rejected share no dialogue ending in '\\n\\nAssistant:'")
    head = chosen[:cut]
    start = cut + len(_HH_ASSISTANT)
    parts = _HH_TURN.split(head)
    messages: list[Message] = []
    if parts[0].strip():
        messages.append({"role": "user", "content": parts[0].strip()})
    for role, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    if not messages:
        raise RowError("the shared dialogue has no human turn")
    return messages, chosen[start:].strip(), rejected[start:].strip()


def _implicit_pair_groups(objects: list[tuple[str, dict[str, Any]]], report: DataReport) -> list[RankedGroup]:
    groups = []
    for where, record in objects:
        try:
            chosen = _text(record.get("chosen"), "chosen")
            rejected = _text(record.get("rejected"), "rejected")
            prompt, chosen_reply, rejected_reply = split_hh_dialogue(chosen, rejected)
            if not chosen_reply or not rejected_reply:
                raise RowError("the last assistant reply of chosen or rejected is empty")
            groups.append(_pair_group(prompt, chosen_reply, rejected_reply, _margin(record), where))
        except RowError as exc:
            report.skipped.append(SkippedRow(where, str(exc)))
    return groups


def _reply_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return _text(value, what)
    messages = _messages(value, what)
    replies = [m["content"] for m in messages if m["role"] == "assistant"] or [messages[-1]["content"]]
    return _text("\n".join(replies), what)


def _conversational_groups(objects: list[tuple[str, dict[str, Any]]], report: DataReport) -> list[RankedGroup]:
    groups = []
    for where, record in objects:
        try:
            if record.get("prompt") is not None:
                prompt = _prompt_messages(record["prompt"])
                chosen = _reply_text(record.get("chosen"), "chosen")
                rejected = _reply_text(record.get("rejected"), "rejected")
            else:  # implicit prompt: the messages chosen and rejected share
                chosen_msgs = _messages(record.get("chosen"), "chosen")
                rejected_msgs = _messages(record.get("rejected"), "rejected")
                shared = 0
                while (
                    shared < min(len(chosen_msgs), len(rejected_msgs)) - 1
                    and chosen_msgs[shared] == rejected_msgs[shared]
                ):
                    shared += 1
                if shared == 0:
                    raise RowError("chosen and rejected share no prompt messages (and there is no 'prompt')")
                prompt = chosen_msgs[:shared]
                chosen = _reply_text(chosen_msgs[shared:], "chosen")
                rejected = _reply_text(rejected_msgs[shared:], "rejected")
            groups.append(_pair_group(prompt, chosen, rejected, _margin(record), where))
        except RowError as exc:
            report.skipped.append(SkippedRow(where, str(exc)))
    return groups


_OASST_ROLES = {"prompter": "user", "assistant": "assistant", "user": "user"}


def _oasst_groups(objects: list[tuple[str, dict[str, Any]]], report: DataReport) -> list[RankedGroup]:
    groups: list[RankedGroup] = []
    for where, record in objects:
        root = record.get("prompt")
        if not isinstance(root, dict):
            report.skipped.append(SkippedRow(where, "'prompt' must be the tree's root message (an object)"))
            continue
        found: list[RankedGroup] = []
        unranked: list[SkippedRow] = []
        try:
            _walk_oasst(root, [], where, found, unranked)
        except RowError as exc:
            report.skipped.append(SkippedRow(where, str(exc)))
            continue
        if not found:
            report.skipped.append(SkippedRow(where, "message tree has no ranked assistant replies"))
        else:
            report.skipped.extend(unranked)
        groups.extend(found)
    return groups


_OASST_MAX_DEPTH = 200  # turns in one conversation; deeper trees are refused before recursion runs out


def _walk_oasst(node: dict[str, Any], history: list[Message], where: str, out: list[RankedGroup],
                unranked: list[SkippedRow]) -> None:
    """Every set of two or more ranked sibling replies to a prompter message becomes a group."""
    role = _OASST_ROLES.get(str(node.get("role", "")))
    if role is None:
        raise RowError(f"message role {_shown(node.get('role'))} is neither 'prompter' nor 'assistant'")
    if len(history) >= _OASST_MAX_DEPTH:
        raise RowError(f"the message tree is more than {_OASST_MAX_DEPTH} turns deep")
    conversation = history + [{"role": role, "content": _text(node.get("text"), "text", allow_empty=True)}]
    replies = node.get("replies")
    if replies is None:
        replies = []
    if not isinstance(replies, list):
        raise RowError(f"'replies' of message {_shown(node.get('message_id', '?'))} must be a list, "
                        f"found {_kind(replies)}")
    replies = [r for r in replies if isinstance(r, dict)]
    if role == "user" and replies:
        label = f"{where} (reply group of message {node.get('message_id', '?')})"
        # OpenAssistant ranks count from 0 (best)
        ranks = [_rank(r.get("rank"), f"the rank of reply {i + 1}", first=0) for i, r in enumerate(replies)]
        if sum(rank is not None for rank in ranks) >= 2:
            texts = [r.get("text") if isinstance(r.get("text"), str) else "" for r in replies]
            keep = [i for i, text in enumerate(texts) if text.strip()]
            out.append(RankedGroup(conversation, [texts[i] for i in keep], [ranks[i] for i in keep], 0.0, label))
        elif len(replies) >= 2:
            unranked.append(SkippedRow(label, f"{len(replies)} sibling replies but fewer than two ranked: "
                                              "nothing to compare"))
    for reply in replies:
        _walk_oasst(reply, conversation, where, out, unranked)


def _candidate_groups(objects: list[tuple[str, dict[str, Any]]], report: DataReport) -> list[RankedGroup]:
    """Prompts with responses and no ranks (to score): a list per row, or one row per response."""
    if "responses" in objects[0][1]:
        return _ranked_groups(objects, report, ranked=False)
    return _tidy_groups(objects, report)


_GROUP_READERS = {
    "ranked": _ranked_groups,
    "tidy": _tidy_groups,
    "pairs": _pair_groups,
    "implicit_pairs": _implicit_pair_groups,
    "conversational": _conversational_groups,
    "oasst": _oasst_groups,
    "candidates": _candidate_groups,
}


# ----------------------------------------------------------------------------- checks and stats


def _why_unusable(group: RankedGroup) -> str | None:
    if len(group.responses) < 2:
        return "only one response: nothing to compare"
    k = len(group.responses)
    if k > MAX_RESPONSES:
        return (f"{k:,} responses to one prompt; rmcore compares at most {MAX_RESPONSES} per prompt "
                f"({MAX_RESPONSES * (MAX_RESPONSES - 1) // 2:,} pairs, where K = {k:,} would give "
                f"{k * (k - 1) // 2:,} and dominate the loss): keep the {MAX_RESPONSES} best-ranked responses, or "
                "split them into several prompts")
    ranked = [r for r in group.ranks if r is not None]
    if not ranked:
        return "no response is ranked, so nothing to compare; to score unranked responses use rmcore score --data"
    if len(ranked) < 2:
        return "fewer than two ranked responses: nothing to compare"
    if len(set(ranked)) < 2:
        return "every ranked response is tied: no comparison"
    return None


def _why_unscorable(group: RankedGroup) -> str | None:
    return None if group.responses else "no response to score"


def _fill_stats(report: DataReport, groups: list[RankedGroup]) -> None:
    report.prompts = len(groups)
    report.responses = sum(len(g.responses) for g in groups)
    report.k_distribution = dict(sorted(Counter(len(g.responses) for g in groups).items()))
    counted = [count_pairs(g.ranks) for g in groups]  # counted, never built: K responses make K(K-1)/2 pairs
    report.comparisons = sum(pairs for pairs, _ in counted)
    report.unranked = sum(r is None for g in groups for r in g.ranks)
    report.ties = sum(ties for _, ties in counted)


def summarize(groups: list[RankedGroup], name: str = "(in memory)", fmt: str = "ranked") -> DataReport:
    """A report for groups built or edited in memory (the app's editor)."""
    report = DataReport(path=name, format=fmt, rows=len(groups))
    _fill_stats(report, groups)
    return report


def split_groups(
    groups: list[RankedGroup], eval_fraction: float, seed: int = 0
) -> tuple[list[RankedGroup], list[RankedGroup]]:
    """Hold out whole prompts (never pairs of one prompt on both sides) for evaluation."""
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(groups) * eval_fraction))
    if eval_fraction > 0 and len(groups) >= 2:
        n_eval = min(max(n_eval, 1), len(groups) - 1)
    held = set(order[:n_eval])
    train = [g for i, g in enumerate(groups) if i not in held]
    held_out = [g for i, g in enumerate(groups) if i in held]
    return train, held_out


def write_ranked_jsonl(groups: list[RankedGroup], path: str | Path | None = None) -> str:
    """Write groups as ranked-list JSON lines (the app's download); returns the text."""
    text = "".join(json.dumps(g.to_record(), ensure_ascii=False) + "\n" for g in groups)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def groups_fingerprint(groups: list[RankedGroup]) -> str:
    """16 hex digits that change whenever any group changes (text, ranks, order): a key for results
    computed from the groups, such as the app's estimates, splits and evaluations."""
    import hashlib  # OpenSSL, 5 ms: only a fingerprint needs it, and `import rmcore.data` stays light

    digest = hashlib.sha256()
    for group in groups:
        digest.update(json.dumps(group.to_record(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def demo_data_path() -> Path:
    """The project's own demo set (written by the rmcore authors): ranked lists, K = 3..6."""
    return Path(__file__).parents[1] / "demo" / "demo_ranked.jsonl"
