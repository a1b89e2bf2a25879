"""The Export page's section for policies fine-tuned on the Best-of-n & RLHF page (or by `rmcore rlhf`)."""

from __future__ import annotations

import streamlit as st

from app import settings
from app.files import zip_folder
from app.policy_jobs import list_policies
from app.ui import fmt, md


def policies_section() -> None:
    policies = list_policies(settings.models_dir())
    if not policies:
        return
    st.subheader("Policies")
    st.write("Policies fine-tuned toward a reward model: plain causal-LM folders (LoRA merged) that "
             "`AutoModelForCausalLM.from_pretrained` loads, with rmcore_policy.json (how they were made, the curves "
             "and the before/after answers).")
    names = [name for name, _ in policies]
    name = st.selectbox("Policy", names, key="export_policy", persist_state="session")
    meta = dict(policies)[name]
    evals = [h for h in meta.get("history", []) if h.get("event") == "eval"]
    cols = st.columns(4)
    cols[0].metric("Method", meta.get("method", "?"))
    cols[1].metric("Steps", f"{meta.get('steps', '?')} / {meta.get('total_steps', '?')}")
    if len(evals) >= 2:
        cols[2].metric("Held-out reward", fmt(evals[-1].get("reward_mean")),
                       delta=fmt(evals[-1]["reward_mean"] - evals[0]["reward_mean"]))
        cols[3].metric("KL to the start", fmt(evals[-1].get("kl")))
    st.caption(f"Reward model **{md(meta.get('reward_model', '?'))}** · saved {md(meta.get('saved_at', '?'))}"
               + (" · stopped early" if meta.get("stopped") else ""))
    folder = settings.model_path(name)
    st.download_button(f"Download {name}.zip", data=lambda: zip_folder(folder, False), file_name=f"{name}.zip",
                       mime="application/zip", icon=":material/download:", key="download_policy_zip")
