"""Learn: the Bradley-Terry model in two sliders, and where the notebooks are."""

from __future__ import annotations

import streamlit as st

from app import charts, settings
from app.ui import md
from rmcore.data.ranking import pair_loss, preference_probability


def page() -> None:
    st.title("Learn: the Bradley-Terry model")
    st.write(
        "A reward model gives each (instruction, answer) one number r. The Bradley-Terry model turns two "
        "rewards into the probability that a person prefers one answer over the other. Move the sliders."
    )
    c1, c2 = st.columns(2)
    r1 = c1.slider("r₁, reward of answer 1", -6.0, 6.0, 1.5, 0.1, key="learn_r1", persist_state="session")
    r2 = c2.slider("r₂, reward of answer 2", -6.0, 6.0, 0.5, 0.1, key="learn_r2", persist_state="session")
    d = r1 - r2
    p = preference_probability(d)
    loss = pair_loss(d)
    m1, m2, m3 = st.columns(3)
    m1.metric("r₁ − r₂", f"{d:+.2f}")
    m2.metric("P(1 preferred over 2)", f"{p:.3f}")
    m3.metric(
        "Loss if people preferred 1", f"{loss:.3f}", help="−log σ(r₁ − r₂): small when the model agrees"
    )
    st.plotly_chart(charts.sigmoid_explainer(r1, r2), key="sigmoid")
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**The formulas**")
        st.latex(r"P(1 \succ 2) = \sigma(r_1 - r_2) = \frac{1}{1 + e^{-(r_1 - r_2)}}")
        st.latex(r"\mathcal{L} = -\log \sigma(r_w - r_l)")
        st.write(
            "Only the difference matters: adding the same number to both rewards changes nothing. "
            "At r₁ = r₂ the model is unsure (P = 0.5, loss = log 2 ≈ 0.693, the chance level you see at "
            "the start of training)."
        )
    with right:
        st.markdown("**From rankings to pairs**")
        st.write(
            "People rank K answers to one instruction. Every pair with different ranks is one comparison: "
            "K = 4 answers ranked 1, 2, 3, 4 give C(4, 2) = 6 pairs. Tied and unranked answers give none. "
            "rmcore runs each answer through the model once and averages the loss over an instruction's "
            "pairs, then over instructions (as in InstructGPT)."
        )
        k = st.slider("K answers, all ranked differently", 2, 9, 4, key="learn_k", persist_state="session")
        st.write(f"K = {k} gives {k * (k - 1) // 2} comparisons from {k} forward passes.")
    st.subheader("Notebooks")
    found = settings.notebooks()
    st.write(
        "Step-by-step derivations that check their math against rmcore. Open them in JupyterLab with "
        "`make notebooks` (from the project folder); each has a plain `.py` twin you can read in any editor."
    )
    for name, title in found:
        st.markdown(f"- `notebooks/{name.replace('`', '')}`: {md(title)}")  # no escapes inside code spans
    if not found:
        st.caption("No notebook found in notebooks/.")


page()
