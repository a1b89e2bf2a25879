"""The settings of `rmcore serve`: one dataclass, read by the command line for its options and help.

No torch: `rmcore --help` builds the serve options from these fields.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

from rmcore.core.files import read_small_file


@dataclass
class ServeConfig:
    """Settings of `rmcore serve`; the CLI reads its options, defaults and help from these fields."""

    model: str = field(default="embedded", metadata={
        "help": "the reward model: a folder saved by `rmcore train` (or 'embedded', whose head is untrained)",
        "metavar": "DIR"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port (default 8000; 0 picks a free one)"})
    token_file: str | None = field(default=None, metadata={
        "help": "file holding a bearer token that every request must send (Authorization: Bearer TOKEN)",
        "metavar": "FILE"})
    max_batch_tokens: int = field(default=8192, metadata={
        "help": "token budget of one forward pass: rows x longest row (default 8192); lower it if memory runs out",
        "metavar": "N"})
    dtype: str = field(default="float32", metadata={
        "help": "precision of the trunk (default float32); bfloat16 is faster on GPUs and CPUs with bfloat16 "
                "instructions, with rewards a little off float32's"})
    max_length: int | None = field(default=None, metadata={
        "help": "tokens of prompt + one response; longer ones are cut as in training (default: the model's)",
        "metavar": "N"})
    batch_wait_ms: float = field(default=5.0, metadata={
        "help": "how long the first queued request waits for others to share its forward pass (default 5)",
        "metavar": "MS"})
    max_queue: int = field(default=4096, metadata={
        "help": "responses waiting to be scored before new requests get 503 + Retry-After (default 4096)",
        "metavar": "N"})
    max_responses: int = field(default=256, metadata={
        "help": "responses (or /get_reward texts) in one request (default 256)", "metavar": "N"})
    max_text_chars: int = field(default=100_000, metadata={
        "help": "characters in one prompt or response (default 100000; token truncation applies below it)",
        "metavar": "N"})
    max_body_mb: float = field(default=16.0, metadata={
        "help": "request body size limit in MiB (default 16)", "metavar": "MB"})
    shutdown_timeout: float = field(default=20.0, metadata={
        "help": "seconds SIGTERM or Ctrl-C waits for the requests in flight before dropping the connections "
                "left (a client stalled half-way through its body); default 20", "metavar": "S"})

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rmcore serve` options, one per ServeConfig field."""
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        extra: dict[str, Any] = {"choices": ("float32", "bfloat16")} if f.name == "dtype" else {}
        if "metavar" in f.metadata:
            extra["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=f.metadata["help"], **extra)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    for name in ("max_batch_tokens", "max_queue", "max_responses", "max_text_chars"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.max_length is not None and config.max_length < 16:
        raise ValueError(f"--max-length must be at least 16 tokens (prompt + one response), got {config.max_length}")
    if not 0 <= config.batch_wait_ms <= 1000:
        raise ValueError(f"--batch-wait-ms must be between 0 and 1000, got {config.batch_wait_ms:g}")
    if not 0 < config.max_body_mb <= 1024:
        raise ValueError(f"--max-body-mb must be above 0 and at most 1024, got {config.max_body_mb:g}")
    if not 0 < config.shutdown_timeout <= 3600:
        raise ValueError(f"--shutdown-timeout must be above 0 and at most 3600 s, got {config.shutdown_timeout:g}")
    if not 0 <= config.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {config.port}")
    return config


MAX_TOKEN_FILE_BYTES = 64 << 10  # a bearer token is a line; a file far larger is not a token file


def _token_file_error(name: str, reason: str) -> ValueError:
    return ValueError(f"--token-file {name}: {reason}")


def read_token(path: str) -> str:
    """The bearer token from a file (never from the command line, where `ps` would show it). Only a
    regular file of at most 64 KB is read: a named pipe or /dev/zero is refused at once."""
    raw = read_small_file(path, MAX_TOKEN_FILE_BYTES, str(path), kind="token file", fail=_token_file_error)
    try:
        token = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise ValueError(f"--token-file {path}: not UTF-8 text; put the token on one line") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"--token-file {path}: give the token on one line, no spaces (the file is "
                         f"{'empty' if not token else 'several words'})")
    return token
