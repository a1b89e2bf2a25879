"""Export: download a trained model as a zip, and the lines that load it with transformers' pipeline."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import charts, resources, settings
from app.files import zip_folder
from app.jobs import metrics_history
from app.models_list import deleted_message, megabytes, models_section
from app.policy_export import policies_section
from app.ui import fmt, md, pick_model
from rmcore.core.folders import HELD_OUT_FILE
from rmcore.data.encoding import render_text
from rmcore.model.card import CARD_FILE, render_card
from rmcore.model.shared_trunk import folder_size


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
    download_section(folder, choice.name)
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
        tokenizer = resources.tokenizer(str(folder))
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


def download_section(folder: Path, name: str) -> None:
    st.subheader("Download")
    include_checkpoint = st.checkbox(
        "Include the training checkpoint (to resume training elsewhere)",
        value=False,
        key="export_checkpoint",
        disabled=not (folder / "checkpoint").is_dir(),
    )
    st.download_button(
        f"Download {name}.zip",
        data=lambda: zip_folder(folder, include_checkpoint),
        file_name=f"{name}.zip",
        mime="application/zip",
        type="primary",
        icon=":material/download:",
        key="download_zip",
    )
    st.caption(
        "A standard Hugging Face folder, self-contained (every weight as its own bytes, a shared trunk shard "
        "included): the safetensors weights, config.json and the tokenizer, plus rmcore.json "
        "(how it was trained) and metrics.jsonl (the curves)"
        + (", and held_out.jsonl (the held-out prompts, for evaluating it elsewhere)."
           if (folder / HELD_OUT_FILE).is_file() else ".")
    )


page()
