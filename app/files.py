"""Files the app hands to people: a model folder as a zip."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def zip_folder(folder: Path, include_checkpoint: bool = False) -> bytes:
    """The model folder as a zip whose top folder is the model's name (weights stored, text compressed).

    Hidden entries (temporary files of a save in progress) and symlinks are left out; so is the
    training checkpoint unless asked for.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if (
                not path.is_file()
                or path.is_symlink()
                or any(part.startswith(".") for part in relative.parts)
            ):
                continue
            if relative.parts[0] == "checkpoint" and not include_checkpoint:
                continue
            compress = zipfile.ZIP_STORED if path.suffix in (".safetensors", ".pt") else zipfile.ZIP_DEFLATED
            archive.write(path, f"{folder.name}/{relative.as_posix()}", compress_type=compress)
    return buffer.getvalue()
