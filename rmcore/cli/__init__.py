"""The `rmcore` command line (the console script is `rmcore.cli:main`)."""

from rmcore.cli.commands import main

__all__ = ["main"]
