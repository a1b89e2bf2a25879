"""Small pieces every page uses: the sidebar, model pickers, error display, number formatting."""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass

import streamlit as st

from app import settings, state
from app.jobs import manager
from app.resources import ModelChoice
from app.wording import budget_text, duration
from rmcore.core.errors import RmcoreError

log = logging.getLogger(__name__)
# Markdown, Streamlit directives (:red[...], :emoji:) and LaTeX ($) read these; a backslash escapes them.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-!|<>~$:&])")


def md(text) -> str:
    """User text (a file name, an error quoting a column) made literal inside markdown elements."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


@contextlib.contextmanager
def user_errors(what: str = ""):
    """Show errors a user can cause (bad data, a model that cannot load) as one message, not a traceback."""
    try:
        yield
    except RmcoreError as exc:
        st.error(f"{what}{': ' if what else ''}{md(exc)}", icon=":material/error:")
    except (ValueError, FileExistsError, OSError) as exc:
        log.info("user error", exc_info=True)
        st.error(f"{what}{': ' if what else ''}{md(exc)}", icon=":material/error:")
    except Exception as exc:  # a bug or an input nobody foresaw: one line on the page, the traceback in the log
        log.exception("unexpected error")
        st.error(f"{what}{': ' if what else ''}{md(error_text(exc))}", icon=":material/error:")


def error_text(exc: BaseException, limit: int = 300) -> str:
    """One readable line for any exception: its own message for rmcore's errors, else its kind and message,
    cut short (the full traceback, with server paths, goes to the server log only)."""
    if isinstance(exc, RmcoreError):
        return str(exc)
    text = " ".join(str(exc).split()) or "no details"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"unexpected error ({type(exc).__name__}: {text}); details are in the server log"


def fmt(value, digits: int = 3, missing: str = "–") -> str:
    if value is None:
        return missing
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@dataclass(frozen=True)
class KeptUpload:
    """An uploaded file kept in the session, so it is still there after a visit to another page."""

    name: str
    data: bytes
    file_id: str

    def getvalue(self) -> bytes:
        return self.data


def kept_upload(label: str, key: str, **options) -> KeptUpload | None:
    """A file uploader whose file survives a visit to another page (an uploader cannot be given a file back:
    the file is kept beside it, said so, and can be removed)."""
    kept_key = f"{key}_kept"
    upload = st.file_uploader(label, key=key, **options)
    if upload is not None:
        st.session_state[kept_key] = KeptUpload(upload.name, upload.getvalue(), upload.file_id)
    kept = st.session_state.get(kept_key)
    if upload is None and kept is not None:
        left, right = st.columns([4, 1], vertical_alignment="center")
        left.caption(f"Using **{md(kept.name)}** ({len(kept.data) / 1e6:,.1f} MB), uploaded earlier in this session; "
                     "upload another file to replace it.")
        if right.button("Remove it", key=f"{key}_forget", icon=":material/close:"):
            st.session_state.pop(kept_key, None)
            st.rerun()
    return kept


def model_choices(include_untrained: bool = True, include_ensembles: bool = False) -> list[ModelChoice]:
    choices = [ModelChoice("trained", entry.name) for entry in settings.list_models(reward_only=True)]
    if include_ensembles:
        from rmcore.training.ensemble import ensemble_folders  # torch: only the pages that load models offer ensembles

        choices += [ModelChoice("ensemble", folder.name) for folder in ensemble_folders(settings.models_dir())
                    if _inside_models_folder(folder.name)]
    if include_untrained:
        choices.append(ModelChoice("untrained", settings.base_model()))
    return choices


def pick_model(
    label: str, key: str, include_untrained: bool = True, help: str | None = None, include_ensembles: bool = False
) -> ModelChoice | None:
    """A selectbox of the models folder's trained models (newest first), its ensembles when asked, plus the
    untrained head."""
    choices = model_choices(include_untrained, include_ensembles)
    if not choices:
        return None
    by_key = {c.key: c for c in choices}
    entries = {e.name: e for e in settings.list_models(reward_only=True)}

    def label_of(k: str) -> str:
        choice = by_key[k]
        if choice.kind == "trained" and choice.name in entries:
            return entries[choice.name].label
        if choice.kind == "ensemble":
            return ensemble_label(choice.name)
        return choice.label

    if st.session_state.get(key) not in by_key:
        st.session_state.pop(key, None)  # a model that disappeared: fall back to the newest
    picked = st.selectbox(label, list(by_key), format_func=label_of, key=key, persist_state="session", help=help)
    return by_key[picked]


def _inside_models_folder(name: str) -> bool:
    try:
        settings.model_path(name)  # refuses names and symlinks that lead out of the models folder
    except ValueError:
        return False
    return True


def ensemble_label(name: str) -> str:
    """"NAME (ensemble of 4 head models)", read from its ensemble.json."""
    from rmcore.training.ensemble import read_info  # torch: only the pages that load models offer ensembles

    try:
        info = read_info(settings.model_path(name))
    except (RmcoreError, ValueError, OSError):
        return f"{name} (ensemble, unreadable ensemble.json)"
    return f"{name} (ensemble of {len(info['members'])} {info.get('mode', '?')} models)"


def data_status() -> None:
    data = state.get_data()
    if data is None:
        st.caption("No data loaded yet.")
        return
    summary = data.summary()
    st.caption(
        f"Data: **{md(data.name)}** · {summary.prompts} instructions · {summary.comparisons} comparisons"
        + (" · edited" if data.edited or data.excluded else "")
    )


def _job_status() -> None:
    job = manager().current()
    if job is None:
        return
    snap = job.snapshot()
    if snap.active:
        budget = getattr(snap, "budget_s", 0.0)  # a training run's time budget (0: none; policy jobs have none)
        text = f"{job.doing} **{md(snap.model_name)}**: "
        text += f"{snap.progress:.0%}, ETA {duration(snap.eta_s)}" if snap.steps else md(snap.phase)
        if budget:
            text += f" · {duration(snap.elapsed_s)} of the {budget_text(budget)} budget"
        st.caption(text)
        if snap.steps:
            value = snap.progress
        elif snap.phase_progress is not None:
            value = snap.phase_progress
        else:
            value = snap.elapsed_s / budget if budget else 0.0
        st.progress(max(0.0, min(1.0, value)))
    elif st.session_state.get("_sidebar_polling"):
        st.session_state["_sidebar_polling"] = False
        st.rerun()  # the job just ended: one full rerun updates every page and stops the polling


def sidebar() -> None:
    with st.sidebar:
        data_status()
        job = manager().current()
        active = job is not None and job.snapshot().active
        st.session_state["_sidebar_polling"] = active
        st.fragment(run_every=2.0 if active else None)(_job_status)()
