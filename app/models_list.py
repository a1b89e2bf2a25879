"""The models folder as a table: each model's size on disk (hard links counted honestly) and a way to delete it.

Head-mode models share their trunk shard with rmcore's cache by a hard link (rmcore.model.shared_trunk), so a
folder's apparent size is not what deleting it frees: the table shows both. Deleting asks first and
goes through settings.delete_model, which deletes only rmcore's own model folders.
"""

from __future__ import annotations

import datetime

import streamlit as st

from app import settings
from app.jobs import manager
from app.ui import md
from rmcore.model.shared_trunk import FolderSize, disk_used, folder_size

CONFIRM_KEY = "models_confirm_delete"


def megabytes(count: int) -> str:
    """A size in words: kB below a megabyte (a head shard), MB, GB."""
    if count < 1e6:
        return f"{count / 1e3:,.0f} kB"
    return f"{count / 1e6:,.1f} MB" if count < 1e9 else f"{count / 1e9:,.2f} GB"


def _busy_name() -> str | None:
    """The model a running training job is writing (not deletable while it runs)."""
    job = manager().current()
    if job is None:
        return None
    snap = job.snapshot()
    return snap.model_name if snap.active else None


def models_section() -> None:
    st.subheader("Models folder")
    entries = settings.list_models()
    root = settings.models_dir()
    if not entries:
        st.caption(f"No model in {md(root)} yet.")
        return
    sizes = {e.name: folder_size(e.path) for e in entries}
    st.caption(
        f"{len(entries)} models in {md(root)}, using **{megabytes(disk_used([e.path for e in entries]))}** of disk "
        "together. A head-mode model's trunk is the base model's: its shard is a hard link to one file in "
        "rmcore's cache, shared by every head-mode model of that base, so it is stored once; the zip above "
        "holds it as its own bytes."
    )
    rows = [
        {
            "model": e.name,
            "mode": e.metadata.get("mode", "?") if e.metadata else "not rmcore's",
            "saved": datetime.datetime.fromtimestamp(e.mtime).strftime("%Y-%m-%d %H:%M"),
            "freed if deleted": megabytes(sizes[e.name].own),
            "shared (trunk)": megabytes(sizes[e.name].shared) if sizes[e.name].shared else "–",
        }
        for e in entries
    ]
    st.dataframe(rows, hide_index=True, key="models_table")
    deletable = [e.name for e in entries if e.metadata]
    if deletable:
        delete_section(deletable, sizes)


def delete_section(deletable: list[str], sizes: dict[str, FolderSize]) -> None:
    """Pick a model, press Delete..., then confirm: only rmcore's own model folders are offered."""
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    name = left.selectbox("Delete a model", deletable, key="models_delete_pick", persist_state="session")
    if right.button("Delete...", icon=":material/delete:", key="models_delete"):
        st.session_state[CONFIRM_KEY] = name
    pending = st.session_state.get(CONFIRM_KEY)
    if pending is None:
        return
    if pending not in deletable:
        st.session_state.pop(CONFIRM_KEY, None)
        return
    has_checkpoint = (settings.model_path(pending) / "checkpoint").is_dir()
    st.warning(
        f"Delete **{md(pending)}** for good? This frees {megabytes(sizes[pending].own)}"
        + (" and removes its training checkpoint (no resuming it)" if has_checkpoint else "")
        + ". It cannot be undone.",
        icon=":material/warning:",
    )
    yes, no = st.columns(2)
    if yes.button(f"Yes, delete {pending}", type="primary", key="models_delete_yes"):
        st.session_state.pop(CONFIRM_KEY, None)
        delete(pending)
        return  # the reason it was not deleted is shown (a deletion reruns the page)
    if no.button("Cancel", key="models_delete_no"):
        st.session_state.pop(CONFIRM_KEY, None)
        st.rerun()


def delete(name: str) -> None:
    """Delete the model (not while a job writes it); the next run says what was freed."""
    if name == _busy_name():
        st.error(f"{md(name)} is being trained right now: stop the run first.", icon=":material/error:")
        return
    try:
        freed = settings.delete_model(name)
    except (ValueError, OSError) as exc:
        st.error(md(exc), icon=":material/error:")
        return
    st.session_state["models_deleted"] = f"Deleted {md(name)}: {megabytes(freed)} freed."
    st.rerun()


def deleted_message() -> None:
    """The outcome of the last deletion, shown once after the rerun that removed the model."""
    message = st.session_state.pop("models_deleted", None)
    if message:
        st.success(message, icon=":material/check:")
