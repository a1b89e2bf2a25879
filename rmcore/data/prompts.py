"""Prompts as the policy commands take them: a plain instruction or a conversation, read from files.

A prompt is a string (one user turn) or a list of chat messages. Both forms of the same
conversation render to the same text, so they share one key: sampling's resumable files, the GRPO
reward's grouping and anything else that asks "have I seen this prompt?" use `prompt_key`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rmcore.core.errors import DataError
from rmcore.core.files import read_small_file
from rmcore.data.formats import Message, read_preferences
from rmcore.data.records import decode, limits

Prompt = str | list[Message]


def as_messages(prompt: Prompt) -> list[Message]:
    """The conversation of a prompt: a string is one user turn (as TRL's conversational format has it)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_key(prompt: Prompt) -> str:
    """A hashable key of a prompt (chat prompts are lists): the same for "text" and [user: "text"]."""
    return json.dumps(as_messages(prompt), sort_keys=True, ensure_ascii=False)


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompts from a plain .txt (one instruction per line) or from any file rmcore reads (its prompts,
    each once, in file order)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DataError(str(path), "no such file")
    if path.is_dir():
        raise DataError(str(path), "is a folder, not a prompts file")
    if path.suffix.lower() == ".txt":
        # as a data file is read: a regular file only (never a named pipe or /dev/zero), under the size
        # limit, UTF-8 (UTF-16 and binary files are refused, not sampled as garbage)
        raw = read_small_file(path, limits().max_bytes, str(path), kind="prompts file", fail=DataError)
        lines = decode(raw, str(path)).split("\n") if raw.strip() else []
        prompts: list[Prompt] = [line.strip() for line in lines if line.strip()]
    else:
        groups = read_preferences(path, for_scoring=True).groups
        prompts = unique_prompts([g.prompt for g in groups])
    if not prompts:
        raise DataError(str(path), "no prompts in the file (a .txt needs one instruction per line)")
    return prompts


def unique_prompts(conversations: list[list[Message]]) -> list[Prompt]:
    """Each prompt once, in order; a single user turn becomes its plain text."""
    seen: set[str] = set()
    prompts: list[Prompt] = []
    for messages in conversations:
        key = prompt_key(messages)
        if key not in seen:
            seen.add(key)
            single = len(messages) == 1 and messages[0]["role"] == "user"
            prompts.append(messages[0]["content"] if single else messages)
    return prompts
