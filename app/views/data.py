"""Data: upload ranked preferences (or load the demo set), check them, re-rank and edit, download."""

from __future__ import annotations

import logging

import streamlit as st

from app import charts, resources, settings, state, waiting
from app.ui import error_text, md, user_errors
from rmcore.core.errors import DataError
from rmcore.data import RANKED_FORMATS, write_ranked_jsonl
from rmcore.data.encoding import count_truncated, encode_groups
from rmcore.data.ranking import best_response, read_ranks, with_best_response
from rmcore.training.config import default

log = logging.getLogger(__name__)
REPORT_MAX_LENGTH = default("max_length")  # the Train page's default; the report counts truncation at it


def load_section() -> None:
    left, right = st.columns([3, 2], gap="large")
    with left:
        limit = settings.upload_limit_mb()
        upload = st.file_uploader(
            "Upload ranked preferences",
            type=settings.UPLOAD_TYPES,
            key="data_upload",
            max_upload_size=limit,
            help="JSON lines, JSON, CSV/TSV or parquet, optionally gzipped. rmcore detects the format "
            "from the "
            "fields: " + "; ".join(RANKED_FORMATS.values()),
        )
        if upload is not None and upload.file_id != st.session_state.get("data_upload_id"):
            st.session_state["data_upload_id"] = upload.file_id
            st.session_state.pop("data_error", None)
            raw = upload.getvalue()
            if len(raw) > limit * 1024 * 1024:
                st.session_state["data_error"] = (
                    f"{upload.name}: the file is {len(raw) / 2**20:.1f} MB, over the {limit} MB upload limit"
                )
            else:
                try:
                    state.set_data(state.parse_upload(raw, upload.name))
                except DataError as exc:
                    st.session_state["data_error"] = str(exc)
                except Exception as exc:  # any failure is one readable message, never a traceback
                    log.exception("reading an upload failed")
                    st.session_state["data_error"] = f"{upload.name}: {error_text(exc)}"
        if st.session_state.get("data_error"):
            st.error(md(st.session_state["data_error"]), icon=":material/error:")
            if state.get_data() is not None:
                st.caption("The data loaded before is still in use.")
    with right:
        st.write(
            "No file at hand? The demo set has 58 instructions written by the rmcore authors, "
            "each with 3 to 6 responses ranked best first (a few ties and unranked ones)."
        )
        if st.button("Load the demo set", icon=":material/dataset:", key="load_demo"):
            state.set_data(state.load_demo())
            st.session_state.pop("data_error", None)
            st.session_state["data_upload_id"] = upload.file_id if upload is not None else None


@st.cache_data(show_spinner=False, max_entries=8)
def truncation_counts(base_model: str, fingerprint: str, _groups, max_length: int) -> tuple[int, int]:
    tokenizer = resources.tokenizer(base_model)
    return count_truncated(encode_groups(tokenizer, _groups, max_length))


def report_section(data: state.LoadedData):
    report = data.report
    st.subheader("Validation report")
    st.caption(
        f"File **{md(data.name)}** · format `{report['format']}`: {report.get('format_description', '')}"
    )
    cols = st.columns(6)
    cols[0].metric("Instructions", report["prompts"])
    cols[1].metric("Responses", report["responses"])
    cols[2].metric(
        "Comparisons", report["comparisons"], help="Strictly ordered pairs: what training learns from"
    )
    cols[3].metric("Tied pairs", report["ties"], help="Pairs with the same rank: no comparison")
    cols[4].metric("Unranked", report["unranked"], help="Responses without a rank: left out of comparisons")
    cols[5].metric("Skipped rows", len(report["skipped"]), help="Rows that could not be used; reasons below")
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.plotly_chart(charts.k_distribution(report["k_distribution"]), key="k_dist")
    with right:
        truncation_slot = st.empty()  # filled last (truncation_section): the tokenizer may take seconds to load
        if not report["skipped"]:
            st.write("**No row was skipped.**")
        if report["warnings"]:
            with st.expander(f"{len(report['warnings'])} warnings"):
                for warning in report["warnings"][:200]:
                    st.text(warning)
    if report["skipped"]:
        skipped_table(report["skipped"], data.name)
    return truncation_slot


def skipped_table(skipped: list[dict], file_name: str) -> None:
    """The skipped rows, full width: as many table rows as skipped rows, and each reason in full (tall rows
    wrap it). "where" drops the file's name, which the report's first line already gives."""
    import pandas as pd  # not at the top: the empty page, the app's first paint, does without it

    rows = [{"where": str(row["where"]).removeprefix(f"{file_name}:").removeprefix(f"{file_name} "),
             "reason": str(row["reason"])} for row in skipped]
    for row in rows:
        if row["where"][:1].isdigit():
            row["where"] = f"line {row['where']}"
    lines = max(max(-(-len(r["where"]) // WHERE_CHARS), -(-len(r["reason"]) // REASON_CHARS)) for r in rows)
    st.write(f"**{len(rows)} skipped row{'' if len(rows) == 1 else 's'}** (where, why):")
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key="skipped_table",
        row_height=row_height(lines),
        column_config={
            "where": st.column_config.TextColumn("where", width=WHERE_PX),
            "reason": st.column_config.TextColumn("reason", width=REASON_PX),
        },
    )


# The skipped table's columns (they fit the wide layout's page at 1400 px) and the characters a line of each
# holds; the table wraps a cell's text only in rows of 70 px or more (measured in Chromium).
WHERE_PX, REASON_PX, WHERE_CHARS, REASON_CHARS = 330, 560, 44, 76


def row_height(lines: int) -> int | None:
    """Rows tall enough for `lines` lines of text (None: the table's one-line default)."""
    if lines <= 1:
        return None
    return 70 if lines == 2 else min(150, 30 + 20 * lines)


def truncation_section(slot, data: state.LoadedData) -> None:
    """How many prompts and responses the base model's tokenizer cuts, drawn into the report's slot."""
    with slot.container():
        try:
            resources.tokenizer_shown(settings.base_model(), "Loading the base model's tokenizer to count truncated "
                                      "texts")
            texts = sum(len(g.responses) + 1 for g in data.active())
            prompts, responses = waiting.wait_for(
                lambda: truncation_counts(settings.base_model(), data.fingerprint(), data.active(), REPORT_MAX_LENGTH),
                f"Counting the texts longer than {REPORT_MAX_LENGTH} tokens", 0.2 + 3e-4 * texts, "truncation")
            st.write(
                f"**Truncation** at {REPORT_MAX_LENGTH} tokens (the base model's tokenizer): "
                f"{prompts} prompts cut from the left, {responses} responses cut at the end. "
                "Nothing is dropped."
            )
        except Exception as exc:  # the report must show even if no tokenizer can be loaded
            st.caption(f"Truncation not counted ({type(exc).__name__}: {md(exc)})")


def rank_text(ranks) -> str:
    return ", ".join("–" if r is None else str(r) for r in ranks)


def preview_section(data: state.LoadedData) -> None:
    import pandas as pd  # not at the top: the empty page, the app's first paint, does without it

    st.subheader("Preview")
    rows = []
    for i, group in enumerate(data.groups):
        status = (
            "too hard (excluded)" if i in data.excluded else ("no comparison" if not group.pairs() else "")
        )
        if i in data.edited and not status:
            status = "edited"
        rows.append(
            {
                "#": i + 1,
                "instruction": group.prompt_text,
                "turns": sum(m["role"] == "user" for m in group.prompt),  # > 1: a conversation so far
                "K": len(group.responses),
                "ranks": rank_text(group.ranks),
                "best response": best_response(group),
                "status": status,
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        height=min(260, 38 + 35 * len(rows)),  # no block of empty rows under a small file
        key="preview_table",
        column_config={
            "instruction": st.column_config.TextColumn(width="large", help="The last user turn"),
            "turns": st.column_config.NumberColumn(
                help="User turns in the conversation so far (the earlier ones show in the editor below)"),
            "best response": st.column_config.TextColumn(width="large"),
        },
    )


def _apply_ranks(data: state.LoadedData, index: int, values: list) -> None:
    group = data.groups[index]
    ranks = read_ranks(values)
    if ranks != group.ranks:
        group.ranks = ranks
        data.touch(index)


def _add_best(data: state.LoadedData, index: int, text: str, replace: int | None) -> None:
    """The labeler's own response becomes rank 1; every ranked response moves one place down."""
    data.groups[index] = with_best_response(data.groups[index], text, replace)
    data.touch(index, rebuild=True)


def editor_section(data: state.LoadedData) -> None:
    st.subheader("Review one instruction")
    st.caption(
        "Re-rank the responses, mark an instruction as too hard to rank, or write a better response: it "
        "becomes the best one, as human labelers do. Edits stay in this session until you download them."
    )
    index = st.selectbox(
        "Instruction",
        range(len(data.groups)),
        key=f"edit_index_{data.uid}",
        persist_state="session",
        format_func=lambda i: f"#{i + 1}: {' '.join(data.groups[i].prompt_text.split())[:110]}",
    )
    group = data.groups[index]
    with st.container(border=True):
        for message in group.prompt:
            st.caption(md(message["role"]))
            st.text(message["content"])
    ranks_section(data, index)
    too_hard_box(data, index)
    with st.expander("Write a better response (it becomes rank 1)", icon=":material/edit:"):
        better_response_box(data, index)


def ranks_section(data: state.LoadedData, index: int) -> None:
    """Each response of the instruction with its rank, which the user can change or clear."""
    group = data.groups[index]
    revision = data.revisions.get(index, 0)
    st.write("**Responses** (rank 1 = best; the same number twice is a tie; empty = unranked)")
    ranks = []
    for k, (response, rank) in enumerate(zip(group.responses, group.ranks, strict=False)):
        text_col, rank_col = st.columns([9, 2], vertical_alignment="center")
        with text_col.container(border=True):
            st.caption(f"response #{k + 1}")
            st.text(response)
        key = f"rank_{data.uid}_{index}_{revision}_{k}"
        if key not in st.session_state:  # seeded here, not via value=: only a widget made with
            st.session_state[key] = rank  # value=None lets the user clear it back to unranked
        ranks.append(
            rank_col.number_input(
                f"Rank of #{k + 1}", min_value=1, value=None, step=1, key=key, persist_state="session",
                placeholder="unranked",
            )
        )
    _apply_ranks(data, index, ranks)


def too_hard_box(data: state.LoadedData, index: int) -> None:
    too_hard = st.checkbox(
        "Too hard to rank: leave this instruction out",
        value=index in data.excluded,
        key=f"too_hard_{data.uid}_{index}",
        persist_state="session",
    )
    if too_hard != (index in data.excluded):
        (data.excluded.add if too_hard else data.excluded.discard)(index)
        data.touch(index)
    if not data.groups[index].pairs() and index not in data.excluded:
        st.warning(
            "These ranks give no comparison (fewer than two different ranks): this instruction is left out "
            "until it has one.",
            icon=":material/warning:",
        )


def better_response_box(data: state.LoadedData, index: int) -> None:
    """The labeler's own response, from scratch or from one of the others, added or replacing it as rank 1."""
    group = data.groups[index]
    revision = data.revisions.get(index, 0)
    start = st.selectbox(
        "Start from",
        [None] + list(range(len(group.responses))),
        key=f"start_{data.uid}_{index}_{revision}",
        persist_state="session",
        format_func=lambda i: (
            "an empty box"
            if i is None
            else f"response #{i + 1}: {' '.join(group.responses[i].split())[:80]}"
        ),
    )
    text = st.text_area(
        "Your response",
        value="" if start is None else group.responses[start],
        height=150,
        key=f"better_{data.uid}_{index}_{revision}_{start}",
        persist_state="session",
    )
    left, right = st.columns(2)
    add = left.button(
        "Add as the best response", key=f"add_best_{data.uid}_{index}", icon=":material/add:"
    )
    replace = start is not None and right.button(
        f"Replace response #{start + 1} with it, as the best", key=f"replace_best_{data.uid}_{index}"
    )
    if (add or replace) and not text.strip():
        st.warning("Write the response first.", icon=":material/edit:")
    elif add or replace:
        _add_best(data, index, text.strip(), start if replace else None)
        st.rerun()


def download_section(data: state.LoadedData) -> None:
    summary = data.summary()
    unusable = len(data.unusable())
    st.subheader("The edited set")
    st.write(
        f"{summary.prompts} instructions, {summary.responses} responses and "
        f"{summary.comparisons} comparisons "
        f"go to training ({len(data.excluded)} marked too hard to rank"
        + (f", {unusable} without a comparison" if unusable else "")
        + f"; {len(data.edited)} edited)."
    )
    st.download_button(
        "Download the edited set (.jsonl)",
        data=write_ranked_jsonl(data.active()),
        file_name=f"{data.stem}-edited.jsonl",
        mime="application/jsonl",
        icon=":material/download:",
        key="download_edited",
    )


def page() -> None:
    st.title("Data")
    st.write(
        "Ranked human preferences: for each instruction, several responses ranked best first. "
        "Everything stays in this browser session."
    )
    load_section()
    data = state.get_data()
    if data is None:
        st.info("Upload a file or load the demo set to begin.", icon=":material/info:")
        return
    with user_errors():
        truncation_slot = report_section(data)
        preview_section(data)
        editor_section(data)
        download_section(data)
        st.page_link(
            "views/train.py", label="Next: train a reward model on this data", icon=":material/arrow_forward:"
        )
        truncation_section(truncation_slot, data)


page()
