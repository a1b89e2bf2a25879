"""The argparse types and help texts the `rmcore` commands share.

Each type refuses a bad value with a message argparse prints as "argument --x: <message>".
"""

from __future__ import annotations

import argparse

from rmcore.data import RANKED_FORMATS


def int_at_least(minimum: int, wanted: str):
    """An argparse type: a whole number of at least `minimum`; `wanted` says so in the error."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{wanted}, got {value}")
        return value

    parse.__name__ = "int"  # argparse's own message then reads "invalid int value"
    return parse


positive_int = int_at_least(1, "must be at least 1")
steps_count = int_at_least(0, "must be 0 (each epoch) or a number of steps")
max_length_tokens = int_at_least(16, "must be at least 16 tokens (prompt + one response)")


def at_least(minimum: int):
    """A whole number of at least `minimum`, saying so when it is not."""
    return int_at_least(minimum, f"must be at least {minimum}")


def coefficient(text: str) -> float:
    """A finite number >= 0 (a loss weight, a KL coefficient)."""
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1) (the held-out fraction)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (a temperature, a learning rate)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def turns(text: str) -> int | str:
    """--max-turns: a number of messages (at least 1), 'all' or 'auto' (rmcore.training.config.TrainConfig)."""
    word = text.strip().lower()
    if word in ("all", "auto"):
        return word
    try:
        value = int(word)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a number of messages (1, 3, ...), 'all' or 'auto', got {text!r}")
    return value


def duration(parse):
    """An argparse type from a duration parser (rmcore.training.config.parse_duration): "30m", "90s"."""
    def read(text: str) -> float:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = "duration"
    return read


MODEL_HELP = "base or trained model: 'embedded' (SmolLM2-135M-Instruct, the default) or a local HF folder"


DTYPE_OPTION = {"choices": ("float32", "bfloat16"), "default": "float32",
                "help": "precision of the trunk (default float32); bfloat16 is faster on GPUs and on CPUs with "
                        "bfloat16 instructions, with rewards a little off float32's"}


POLICY_HELP = ("the policy that writes answers: 'embedded' (SmolLM2-135M-Instruct, the default) "
               "or a local causal-LM folder")
PROMPTS_HELP = ("prompts: a .txt file with one instruction per line, or any data file rmcore reads "
                "(its prompts, each once)")


def formats() -> str:
    """The ranked formats rmcore reads, one line each, for a command's description."""
    return "".join(f"\n  {name:15} {text}" for name, text in RANKED_FORMATS.items())
