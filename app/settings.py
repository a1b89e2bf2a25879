"""Where the app keeps things and which models it may load, read from the environment at call time.

The model pickers only ever offer subfolders of one folder, the project's models folder
(RMCORE_MODELS_DIR, default ./models): a name chosen in the app never becomes an arbitrary path.

Environment variables (all optional):
- RMCORE_MODELS_DIR        trained models are written to and listed from here (default: <project>/models)
- RMCORE_APP_BASE_MODEL    the default base model: "embedded" (SmolLM2-135M-Instruct) or a folder;
                           tests point it at a tiny random model
- RMCORE_APP_GENERATOR     the instruct LLM that samples candidates on the Probe page
                           (default: the base model)
- RMCORE_APP_MAX_UPLOAD_MB the upload limit the Data page enforces (default 50, as .streamlit/config.toml)
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rmcore.core.errors import ModelError
from rmcore.core.folders import HELD_OUT_FILE, METADATA_FILE, read_metadata, user_entries
from rmcore.model.embedded import EMBEDDED_NAME
from rmcore.model.shared_trunk import folder_size

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = "embedded"
NOTEBOOKS_DIR = ROOT / "notebooks"
# What people may upload on the Data page (rmcore detects the format from the fields).
UPLOAD_TYPES = ["jsonl", "json", "csv", "tsv", "parquet", "gz"]
TRAIN_DATA_FILE = "train_data.jsonl"  # a stopped run's training prompts, so it can resume after a restart
APP_FILES = (HELD_OUT_FILE, TRAIN_DATA_FILE)  # what the app itself writes beside a model rmcore saved


def models_dir() -> Path:
    folder = Path(os.environ.get("RMCORE_MODELS_DIR") or ROOT / "models").expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def base_model() -> str:
    """The default base model: "embedded" or a folder given by RMCORE_APP_BASE_MODEL."""
    return os.environ.get("RMCORE_APP_BASE_MODEL") or EMBEDDED


def base_model_label(name: str | None = None) -> str:
    name = name or base_model()
    if name == EMBEDDED:
        return f"embedded ({EMBEDDED_NAME})"
    return Path(name).name


def generator_model() -> str:
    return os.environ.get("RMCORE_APP_GENERATOR") or base_model()


def upload_limit_mb() -> int:
    return int(os.environ.get("RMCORE_APP_MAX_UPLOAD_MB") or 50)


# ----------------------------------------------------------------------------- the models folder

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def clean_model_name(text: str) -> str:
    """A folder name made from what the user typed: letters, digits, '.', '_' and '-' only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip(".-_")
    return name[:80]


def model_path(name: str) -> Path:
    """The folder of model `name` inside the models folder; refuses anything that would leave it."""
    if not _NAME.match(name or "") or ".." in name:
        raise ValueError(f"{name!r} is not a model name (letters, digits, '.', '_' and '-' only)")
    root = models_dir()
    path = (root / name).resolve()  # a symlink pointing elsewhere resolves outside root: refused
    if path.parent != root:
        raise ValueError(f"{name!r} is not inside the models folder {root}")
    return path


@dataclass
class ModelEntry:
    name: str
    path: Path
    is_reward_model: bool  # a trained reward model (rmcore.json or a 1-label classifier)
    metadata: dict = field(default_factory=dict)
    mtime: float = 0.0

    @property
    def label(self) -> str:
        meta = self.metadata
        if not meta:
            return self.name
        acc = ((meta.get("metrics") or {}).get("eval") or {}).get("eval_accuracy")
        parts = [meta.get("mode", "?")]
        if acc is not None:
            parts.append(f"held-out acc {acc:.2f}")
        if meta.get("stopped"):
            parts.append("stopped early")
        return f"{self.name} ({', '.join(parts)})"


def list_models(reward_only: bool = False) -> list[ModelEntry]:
    """Loadable model folders directly under the models folder, newest first.

    A folder counts when it holds config.json and safetensors weights; folders being written
    (hidden temp names), half-finished runs and anything outside the models folder are left out.
    """
    root = models_dir()
    entries = []
    for child in root.iterdir():
        if child.name.startswith(".") or not _NAME.match(child.name):
            continue
        try:
            path = model_path(child.name)
        except ValueError:
            continue
        if not path.is_dir() or not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
            continue
        try:
            meta = read_metadata(path)
        except ModelError:
            meta = {}  # a damaged rmcore.json: listed by its config alone, loading it says what is wrong
        try:
            reward = bool(meta) or _is_reward_model_folder(path)
        except (OSError, ValueError):
            continue
        if reward_only and not reward:
            continue
        entries.append(ModelEntry(child.name, path, reward, meta, (path / "config.json").stat().st_mtime))
    return sorted(entries, key=lambda e: e.mtime, reverse=True)


def _is_reward_model_folder(path: Path) -> bool:
    """A folder without rmcore.json that is still a reward model (a 1-label classifier saved elsewhere)."""
    from rmcore.model.reward_model import is_reward_model_folder  # torch: only a folder without rmcore.json needs it

    return is_reward_model_folder(str(path))


def delete_model(name: str) -> int:
    """Delete the rmcore model `name` from the models folder; returns the bytes freed on disk.

    Only a folder directly inside the models folder, holding rmcore.json (a model rmcore saved) and
    nothing that neither rmcore nor the app wrote, is deleted: anything else is refused with the reason. The folder is
    first renamed to a hidden name, so a deletion cut short never leaves a half model in the pickers.
    A hard-linked trunk shard only loses this link (its bytes stay for the cache and other models).
    """
    path = model_path(name)
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{name!r} is not a folder in the models folder {models_dir()}")
    if not (path / METADATA_FILE).is_file():
        raise ValueError(f"{name!r} was not saved by rmcore (no rmcore.json): delete it yourself if you mean to")
    mine = sorted(user_entries(path) - set(APP_FILES))
    if mine:
        raise ValueError(f"{name!r} holds files rmcore did not write ({', '.join(mine[:3])}): move them out "
                         "first, or delete the folder yourself")
    freed = folder_size(path).own
    doomed = path.with_name(f".{name}.deleting-{uuid.uuid4().hex[:8]}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)
    return freed


def notebooks() -> list[tuple[str, str]]:
    """(file name, title) of each notebook in notebooks/: the .ipynb, or its jupytext .py pair."""
    if not NOTEBOOKS_DIR.is_dir():
        return []
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(NOTEBOOKS_DIR.glob("*.py")) + sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        title = path.stem.replace("_", " ")
        if path.suffix == ".py":
            text = path.read_text(encoding="utf-8", errors="replace")
            if "# %%" not in text:
                continue  # a helper module, not a notebook
            heading = next((line[4:].strip() for line in text.splitlines() if line.startswith("# # ")), None)
            title = heading or title
        name = f"{path.stem}.ipynb" if path.suffix == ".py" else path.name
        found[path.stem] = (name, found.get(path.stem, (name, title))[1])
    return list(found.values())
