"""`rmcore serve` and `rmcore embedded`: a model as a service, and where the embedded model lives."""

from __future__ import annotations

from rmcore.model.embedded import embedded_model_dir
from rmcore.serving.service import main as serve


def cmd_serve(args) -> int:
    return serve(args)


def cmd_embedded(args) -> int:
    print(embedded_model_dir())
    return 0
