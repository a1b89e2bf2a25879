"""The `rmcore` command line (the console script is `rmcore.cli:main`).

The parser (rmcore.cli.parser) is light; each command's module is imported only when the command
runs, so `rmcore --help` and `rmcore validate` do not pay seconds for torch and transformers.
Every failure a user can cause (bad data, a missing model folder, bad options) prints one line on
stderr and exits with status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from rmcore.cli.parser import build_parser
from rmcore.core.errors import RmcoreError, printable
from rmcore.core.progress import SlowNotice

COMMANDS = {  # command -> (module of rmcore.cli, function)
    "validate": ("data", "cmd_validate"), "train": ("train", "cmd_train"), "score": ("score", "cmd_score"),
    "eval": ("score", "cmd_eval"), "probe": ("score", "cmd_probe"), "serve": ("model", "cmd_serve"),
    "embedded": ("model", "cmd_embedded"), "sample": ("policy", "cmd_sample"), "bon": ("policy", "cmd_bon"),
    "rlhf": ("policy", "cmd_rlhf"), "lesson": ("lesson", "cmd_lesson"),
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    _say_notes()
    module, name = COMMANDS[args.command]
    try:
        with SlowNotice(f"starting {args.command}: importing torch and transformers"):
            command = getattr(importlib.import_module(f"rmcore.cli.{module}"), name)
        return command(args)
    except RmcoreError as exc:
        print(printable(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(printable(f"rmcore {args.command}: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rmcore validate FILE | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


def _say_notes() -> None:
    """rmcore's one-off notes (the embedded model's first conversion) as `[rmcore] ...` lines on stderr."""
    logger = logging.getLogger("rmcore")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[rmcore] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _quiet_libraries() -> None:
    """Our own progress output only: no per-file progress bars or init warnings from transformers."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    if "transformers" in sys.modules:  # a library caller imported it already: set its logging now
        from transformers.utils import logging as hf_logging  # present: it was imported

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
