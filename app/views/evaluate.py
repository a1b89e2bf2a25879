"""Evaluate: accuracy overall and by rank gap, calibration, rewards of preferred vs rejected, length bias."""

from __future__ import annotations

import hashlib
import json
import time

import pandas as pd
import streamlit as st

from app import charts, resources, settings, state
from app.jobs import read_held_out
from app.ui import fmt, md, pick_model, user_errors
from rmcore.data import read_preferences_bytes
from rmcore.errors import DataError
from rmcore.estimate import format_duration
from rmcore.evaluate import evaluate, worst_pairs

HELD_OUT = "held-out prompts saved with this model"
LOADED = "the data set loaded on the Data page"
UPLOAD = "a file I upload"


def choose_data(choice) -> tuple[str, list] | None:
    """(a name for the data, its groups) from the source the user picks, or None with a message shown."""
    sources = []
    held_out = None
    if choice.kind == "trained":
        with user_errors("Cannot read the held-out prompts"):
            held_out = read_held_out(settings.model_path(choice.name))
        if held_out:
            sources.append(HELD_OUT)
    data = state.get_data()
    if data is not None and data.active():
        sources.append(LOADED)
    sources.append(UPLOAD)
    source = st.radio(
        "Evaluate on",
        sources,
        key="eval_source",
        horizontal=True,
        captions=[
            {
                HELD_OUT: f"{len(held_out or [])} instructions never trained on",
                LOADED: f"{len(data.active()) if data else 0} instructions: may include training data",
                UPLOAD: "any format the Data page reads",
            }[s]
            for s in sources
        ],
    )
    if source == HELD_OUT:
        return f"{choice.name} held-out", held_out
    if source == LOADED:
        return data.name, data.active()
    upload = st.file_uploader(
        "Evaluation data",
        type=settings.UPLOAD_TYPES,
        key="eval_upload",
        max_upload_size=settings.upload_limit_mb(),
    )
    if upload is None:
        st.info("Upload a file to evaluate on.", icon=":material/info:")
        return None
    try:
        return upload.name, read_preferences_bytes(upload.getvalue(), upload.name).groups
    except DataError as exc:
        st.error(md(exc), icon=":material/error:")
        return None


def groups_digest(groups) -> str:
    """Changes with the data (an edit on the Data page, another upload): results are kept per digest."""
    digest = hashlib.sha256()
    for group in groups:
        digest.update(json.dumps(group.to_record(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def show(result) -> None:
    s = result.summary
    cols = st.columns(5)
    cols[0].metric(
        "Pairwise accuracy", fmt(s["accuracy"]), help="Share of ranked pairs where r_winner > r_loser"
    )
    cols[1].metric("Comparisons", s["comparisons"], help=f"over {s['prompts']} instructions")
    cols[2].metric(
        "Best-of-group accuracy",
        fmt(s["best_of_group_accuracy"]),
        help="How often the top-reward response is one people ranked best",
    )
    cols[3].metric("Mean log loss", fmt(s["mean_log_loss"]), help="-log sigma(r_w - r_l); 0.693 = chance")
    cols[4].metric(
        "Length correlation",
        fmt(s["length_correlation"], 2),
        help="Pearson r between reward and response length: far from 0 means a length bias",
    )
    if not s["trained"]:
        st.warning(
            "An untrained head: these numbers are the chance baseline to compare trained models with.",
            icon=":material/warning:",
        )
    left, right = st.columns(2, gap="large")
    with left:
        st.plotly_chart(charts.rank_gap_accuracy(s["by_rank_gap"]), key="rank_gap")
        st.plotly_chart(charts.reward_histograms(result.responses), key="histograms")
    with right:
        st.plotly_chart(charts.calibration(s["calibration"]), key="calibration")
        st.plotly_chart(charts.reward_vs_length(result.responses, s["length_correlation"]), key="length")
    st.subheader("Worst-ranked pairs")
    st.caption(
        "The 15 comparisons with the lowest r_winner − r_loser: first those the model gets wrong (it gave "
        "the response people rejected the higher reward), then its least confident right ones."
    )
    rows = [
        {
            "instruction": p["prompt"],
            "preferred (winner)": p["winner"],
            "rejected (loser)": p["loser"],
            "ranks": f"{p['winner_rank']} vs {p['loser_rank']}",
            "r winner": p["reward_winner"],
            "r loser": p["reward_loser"],
            "P(winner)": p["p"],
            "model agrees": bool(p["correct"]),
            "source": p["source"],
        }
        for p in worst_pairs(result, 15)
    ]
    text = st.column_config.TextColumn(width="medium")
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key="worst_pairs",
        column_config={
            "instruction": text,
            "preferred (winner)": text,
            "rejected (loser)": text,
            "r winner": st.column_config.NumberColumn(format="%.3f"),
            "r loser": st.column_config.NumberColumn(format="%.3f"),
            "P(winner)": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def page() -> None:
    st.title("Evaluate")
    st.write(
        "How often does the model agree with people on data it has not seen, how sure is it, "
        "and does it simply prefer longer answers?"
    )
    choice = pick_model("Reward model", key="eval_model")
    picked = choose_data(choice)
    if picked is None:
        return
    name, groups = picked
    limit = st.number_input(
        "Instructions to use at most",
        1,
        100_000,
        300,
        key="eval_limit",
        help="Scoring runs one forward pass per response; large files take a while on a CPU",
    )
    groups = groups[: int(limit)]
    key = (choice.key, name, groups_digest(groups))
    if st.button(
        f"Evaluate on {len(groups)} instructions",
        type="primary",
        icon=":material/play_arrow:",
        key="run_eval",
    ):
        with (
            user_errors("Evaluation failed"),
            st.status(f"Scoring {sum(len(g.responses) for g in groups)} responses…") as status,
        ):
            bar = st.progress(0.0, text="loading the model")
            model = resources.reward_model(choice)
            started = time.perf_counter()

            def progress(share: float) -> None:
                left = (time.perf_counter() - started) * (1 - share) / share if share > 0 else 0.0
                bar.progress(share, text=f"{share:.0%} of the tokens scored, about {format_duration(left)} left")

            result = evaluate(model, groups, on_progress=progress)
            st.session_state["eval_result"] = (key, result)
            status.update(label=f"Scored {result.summary['responses']} responses", state="complete")
    stored = st.session_state.get("eval_result")
    if stored is not None and stored[0] == key:
        show(stored[1])
    elif stored is not None:
        st.caption("The model or data changed since the last evaluation: press Evaluate again.")


page()
