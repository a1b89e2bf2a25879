"""The rmcore workbench: `streamlit run app/main.py` (or `make app`) from the project folder.

A router over thin pages in app/views/; all model work goes through the rmcore library.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the project
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the app never reaches a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402

from app import resources, ui  # noqa: E402

PAGES = [
    ("views/data.py", "Data", ":material/table_view:"),
    ("views/train.py", "Train", ":material/model_training:"),
    ("views/probe.py", "Probe", ":material/science:"),
    ("views/policy.py", "Best-of-n & RLHF", ":material/trending_up:"),
    ("views/evaluate.py", "Evaluate", ":material/analytics:"),
    ("views/learn.py", "Learn", ":material/school:"),
    ("views/export.py", "Export", ":material/download:"),
]
# Pages that draw without torch and transformers (seconds to import), so the app's first paint is quick.
# Every other page gets them loaded first, under a spinner, once per server.
LIGHT_PAGES = {"Data", "Learn", "Export"}


def run() -> None:
    st.set_page_config(
        page_title="rmcore: reward-model workbench",
        page_icon=str(ROOT / "app" / "favicon.png"),  # a local file: the app needs no network, icons included
        layout="wide",
    )
    pages = [
        st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)
    ]
    page = st.navigation(pages)
    with st.sidebar:
        st.markdown("### :material/balance: rmcore workbench")
        st.caption("Train, probe and evaluate reward models from ranked preferences.")
    if page.title not in LIGHT_PAGES and not resources.ml_ready():
        loading = st.empty()  # the page's title and a spinner at once, replaced by the page when ready
        with loading.container():
            st.title(page.title)
            resources.ensure_ml_shown()  # a bar and the time left
        loading.empty()
    with ui.user_errors(f"The {page.title} page failed"):  # any failure: one readable message, no traceback
        page.run()
    ui.sidebar()  # after the page, so it shows what the page just did (data loaded, job started)


run()
