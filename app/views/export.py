"""Export: download a trained model as a zip, and the lines that load it with transformers' pipeline."""

from __future__ import annotations

import io
from pathlib import Path

import streamlit as st

from app import charts, resources, settings, state, waiting
from app.files import (
    embedded_head_model,
    head_only_extras,
    included,
    prepared_zip,
    trunk_fingerprint,
    write_zip,
    zip_size,
)
from app.jobs import metrics_history
from app.models_list import deleted_message, megabytes, models_section
from app.policy_export import policies_section
from app.ui import fmt, md, pick_model
from rmcore.core.folders import HELD_OUT_FILE
from rmcore.data.encoding import render_text
from rmcore.model.card import CARD_FILE, render_card
from rmcore.model.shared_trunk import TRUNK_SHARD, folder_size


def usage_code(name: str) -> str:
    return (
        "from transformers import pipeline\n"
        "from rmcore import RewardModel\n\n"
        f'pipe = pipeline("text-classification", model="models/{name}", function_to_apply="none")\n'
        f'text = RewardModel.load("models/{name}")'  # one line in the snippet
        '.render("How do I boil an egg?", "Simmer it for 9 minutes.")\n'
        "pipe(text)  # [{'label': 'reward', 'score': ...}]: the raw reward\n"
    )


def model_card_text(folder: Path, meta: dict) -> str:
    """The saved card without its YAML block (models saved before cards existed get one rendered now)."""
    card = folder / CARD_FILE
    text = card.read_text() if card.is_file() else render_card(meta, folder.name)
    return text.split("---\n", 2)[2] if text.startswith("---\n") else text


def page() -> None:
    st.title("Export")
    deleted_message()
    choice = pick_model("Trained model", key="export_model", include_untrained=False)
    if choice is None:
        st.info(
            f"No trained model yet in the models folder ({settings.models_dir()}). Train one first.",
            icon=":material/info:",
        )
        st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        policies_section()
        return
    folder = settings.model_path(choice.name)
    entry = next((e for e in settings.list_models(reward_only=True) if e.name == choice.name), None)
    meta = entry.metadata if entry else {}
    summary_section(folder, meta)
    download_section(folder, choice.name, meta)
    with st.expander("Model card (README.md, in the folder and the zip)", icon=":material/description:"):
        st.markdown(model_card_text(folder, meta))
    st.subheader("Use it with transformers")
    st.write(
        "Unzip it into `models/` and load it with the text-classification pipeline. "
        '`function_to_apply="none"` returns the raw reward; the text must be rendered exactly as in '
        "training (the chat template with the answer as the assistant turn), which `RewardModel.render` does:"
    )
    st.code(usage_code(choice.name), language="python")
    policies_section()
    render_example = st.expander("What `render` produces for that example")
    with st.container():  # below the example, but drawn first: the tokenizer may take seconds to load
        models_section()
    with render_example:
        tokenizer = resources.tokenizer_shown(str(folder))
        st.code(
            render_text(
                tokenizer, [{"role": "user", "content": "How do I boil an egg?"}], "Simmer it for 9 minutes."
            ),
            language=None,
        )


def summary_section(folder: Path, meta: dict) -> None:
    """How the model was trained, its held-out accuracy, its size on disk and its curves."""
    metrics = meta.get("metrics") or {}
    size = folder_size(folder)  # a head-mode model's trunk shard is shared with the cache (a hard link)
    st.caption(
        f"Base model **{md(Path(str(meta.get('base_model', '?'))).name)}** · trained on "
        f"**{md((meta.get('data') or {}).get('file', '?'))}** · saved {md(meta.get('saved_at', '?'))}"
    )
    cols = st.columns(4)
    cols[0].metric("Mode", meta.get("mode", "?"))
    cols[1].metric("Steps", f"{meta.get('steps', '?')} / {meta.get('total_steps', '?')}")
    cols[2].metric("Held-out accuracy", fmt((metrics.get("eval") or {}).get("eval_accuracy")))
    cols[3].metric("Size on disk", megabytes(size.own),
                   help=f"What this model alone uses; its trunk shard ({megabytes(size.shared)}) is shared"
                   if size.shared else "What this model uses on disk")
    if meta.get("stopped"):
        st.caption("Training was stopped early: this is the model at that step; `checkpoint/` can resume it.")
    steps, evals = metrics_history(folder)
    if steps:
        with st.expander("Training curves"):
            st.plotly_chart(charts.training_curves(steps, evals), key="export_curves")


LARGE_ZIP = 50e6  # bytes: a zip this large is built first, with a progress bar, then downloaded
WHOLE, HEAD_ONLY = "the whole model", "the head only"


def download_section(folder: Path, name: str, meta: dict) -> None:
    st.subheader("Download")
    include_checkpoint = st.checkbox(
        "Include the training checkpoint (to resume training elsewhere)",
        value=False,
        key="export_checkpoint",
        persist_state="session",
        disabled=not (folder / "checkpoint").is_dir(),
    )
    head_only = embedded_head_model(folder, meta) and head_only_choice(folder, include_checkpoint)
    files = included(folder, include_checkpoint, head_only)
    extra = head_only_extras(name, trunk_fingerprint(folder), (folder / TRUNK_SHARD).stat().st_size) \
        if head_only else {}
    size = zip_size(files, extra)
    file_name = f"{name}-head-only.zip" if head_only else f"{name}.zip"
    label = f"Download {file_name} ({megabytes(size)})"
    if size < LARGE_ZIP:
        st.download_button(label, data=lambda: zip_bytes(folder, files, extra), file_name=file_name,
                           mime="application/zip", type="primary", icon=":material/download:", key="download_zip")
    else:
        large_download(folder, files, extra, file_name, label, size, include_checkpoint)
    held_out = ", and held_out.jsonl (the held-out prompts, for evaluating it elsewhere)" \
        if (folder / HELD_OUT_FILE).is_file() else ""
    if head_only:
        st.caption("The reward head's safetensors shard, the index, config.json and the tokenizer, plus rmcore.json "
                   f"(how it was trained), metrics.jsonl (the curves){held_out}; and restore_trunk.py, which writes "
                   "the trunk shard back from the embedded model where rmcore is installed, checking its hash "
                   f"(`python {name}/restore_trunk.py`). It is then the same standard Hugging Face folder as the "
                   "whole download.")
    else:
        st.caption("A standard Hugging Face folder, self-contained (every weight as its own bytes, a shared trunk "
                   "shard included): the safetensors weights, config.json and the tokenizer, plus rmcore.json (how "
                   f"it was trained) and metrics.jsonl (the curves){held_out}.")


def head_only_choice(folder: Path, include_checkpoint: bool) -> bool:
    """Whole or head only, for a head-mode model of the embedded base model; each with its download size."""
    whole = zip_size(included(folder, include_checkpoint))
    head = zip_size(included(folder, include_checkpoint, head_only=True)) + 8_000  # and the two files it adds
    picked = st.radio(
        "What to download", [WHOLE, HEAD_ONLY], horizontal=True, key="export_head_only", persist_state="session",
        captions=[f"{megabytes(whole)}: self-contained, loads anywhere transformers runs",
                  f"{megabytes(head)}: the trunk is the embedded SmolLM2-135M-Instruct, written back by rmcore"],
    )
    return picked == HEAD_ONLY


def zip_bytes(folder: Path, files: list[Path], extra: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    write_zip(folder, files, buffer, extra)
    return buffer.getvalue()


def large_download(folder: Path, files: list[Path], extra: dict[str, str], file_name: str, label: str, size: int,
                   include_checkpoint: bool) -> None:
    """A large zip: built into a temporary file with a bar and the time left, then the download button."""
    key = (str(folder), (folder / "config.json").stat().st_mtime, include_checkpoint, file_name)
    prepared = st.session_state.get("export_prepared")
    if prepared is not None and prepared[0] == key and Path(prepared[1]).is_file():
        path = Path(prepared[1])
        st.download_button(label, data=lambda: path.read_bytes(), file_name=file_name, mime="application/zip",
                           type="primary", icon=":material/download:", key="download_zip")
        return
    if st.button(f"Prepare {file_name} ({megabytes(size)})", type="primary", icon=":material/folder_zip:",
                 key="export_prepare", help="Builds the zip on the server, with a progress bar; then Download"):
        bar = st.progress(0.0, text=f"Building {file_name}…")
        left = waiting.TimeLeft()

        def built(done: int, total: int) -> None:
            bar.progress(done / total, text=f"Building {file_name}: {megabytes(done)} of {megabytes(total)}"
                         + left.text(done / total))

        path = prepared_zip(folder, file_name, state.session_id(), files, extra, on_progress=built)
        st.session_state["export_prepared"] = (key, str(path))
        st.rerun()
    st.caption(f"{megabytes(size)} take a while to put together: press Prepare (a bar shows how far it is), then "
               "Download.")


page()
