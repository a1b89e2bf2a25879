"""`rmcore validate`, and reading a data file the way every command does (skipped rows said in one line)."""

from __future__ import annotations

import json
import sys

from rmcore.core.errors import printable
from rmcore.data import read_preferences
from rmcore.data.encoding import count_truncated, encode_groups


def read_data(path: str, limit: int | None = None, announce: bool = True):
    """The groups of a data file (the first `limit`), saying in one line what was skipped unless told not to."""
    data = read_preferences(path)
    if limit:
        data.groups = data.groups[:limit]
    if announce:
        say_what_was_skipped(data.report)
    return data


def say_what_was_skipped(report) -> None:
    """One line each on stderr for skipped rows and warnings, as validate lists them in full."""
    if report.skipped:
        first = report.skipped[0]
        print(printable(f"skipped {len(report.skipped)} of {report.rows} rows, the first {first.where}: "
                        f"{first.reason} (rmcore validate {report.path} lists them)"), file=sys.stderr)
    if report.warnings:
        more = f" and {len(report.warnings) - 1} more" if len(report.warnings) > 1 else ""
        print(printable(f"warning: {report.warnings[0]}{more} (rmcore validate lists them)"), file=sys.stderr)


def cmd_validate(args) -> int:
    data = read_data(args.data, announce=False)  # the report lists every skipped row and warning
    if not args.no_tokenize:
        # torch and transformers, for the tokenizer: `validate --no-tokenize` (the app's first page) needs neither
        from rmcore.model.reward_model import choose_pad_token, load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(args.model)[0])
        choose_pad_token(tokenizer)
        prompts, responses = count_truncated(encode_groups(tokenizer, data.groups, args.max_length))
        data.report.truncated_prompts, data.report.truncated_responses = prompts, responses
        data.report.max_length = args.max_length
    if args.json:
        print(json.dumps(data.report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(printable("\n".join(data.report.summary_lines()), keep_newlines=True))
    return 0
