"""Evaluate: accuracy overall and by rank gap, calibration, rewards of preferred vs rejected, length bias."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app import charts, resources, settings, state
from app.jobs import read_held_out
from app.ui import fmt, kept_upload, md, pick_model, user_errors
from rmcore.analysis.evaluate import (
    categories_from_records,
    compare,
    compare_sentence,
    evaluate,
    worst_pairs,
)
from rmcore.core.errors import DataError
from rmcore.core.progress import count, format_duration
from rmcore.data import groups_fingerprint, read_preferences_bytes
from rmcore.data.records import read_bytes
from rmcore.training.ensemble import evaluate_ensemble

HELD_OUT = "held-out prompts saved with this model"
LOADED = "the data set loaded on the Data page"
UPLOAD = "a file I upload"


def choose_data(choice) -> tuple[str, list, list | None] | None:
    """(a name for the data, its groups, their categories or None) from the source the user picks, or
    None with a message shown. Only uploads can have a category (or subset) column."""
    sources = []
    held_out = None
    if choice.kind in ("trained", "ensemble"):
        with user_errors("Cannot read the held-out prompts"):
            held_out = read_held_out(choice.path())
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
        persist_state="session",
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
        return f"{choice.name} held-out", held_out, None
    if source == LOADED:
        return data.name, data.active(), None
    upload = kept_upload(
        "Evaluation data",
        key="eval_upload",
        type=settings.UPLOAD_TYPES,
        max_upload_size=settings.upload_limit_mb(),
    )
    if upload is None:
        st.info("Upload a file to evaluate on.", icon=":material/info:")
        return None
    try:
        groups = read_preferences_bytes(upload.getvalue(), upload.name).groups
        return upload.name, groups, categories_from_records(read_bytes(upload.getvalue(), upload.name).items, groups)
    except DataError as exc:
        st.error(md(exc), icon=":material/error:")
        return None


def with_se(value, se) -> str:
    """An accuracy with its binomial standard error, as the metric shows it."""
    return fmt(value) if value is None or se is None else f"{fmt(value)} ± {se:.3f}"



def show(result) -> None:
    s = result.summary
    headline_metrics(s)
    if not s["trained"]:
        st.warning(
            "An untrained head: these numbers are the chance baseline to compare trained models with.",
            icon=":material/warning:",
        )
    warning = s.get("length_warning")  # rmcore's words, as the CLI prints them
    if warning:
        st.warning(warning, icon=":material/straighten:")
    length_section(s)
    if s.get("ensemble"):
        ensemble_section(s)
    if s.get("by_category"):
        category_section(s)
    left, right = st.columns(2, gap="large")
    with left:
        st.plotly_chart(charts.rank_gap_accuracy(s["by_rank_gap"]), key="rank_gap")
        st.plotly_chart(charts.reward_histograms(result.responses), key="histograms")
    with right:
        st.plotly_chart(charts.calibration(s["calibration"]), key="calibration")
        st.plotly_chart(charts.reward_vs_length(result.responses, s["length_correlation"]), key="length")
    worst_pairs_section(result)


def headline_metrics(s) -> None:
    """Six tiles in two rows: an accuracy with its "± se" needs the width."""
    base, ranking = s["length_baseline"], s["ranking"]
    cols = st.columns(3) + st.columns(3)
    cols[0].metric(
        "Pairwise accuracy",
        with_se(s["accuracy"], s["accuracy_se"]),
        help="Share of ranked pairs where r_winner > r_loser, ± one (binomial) standard error",
    )
    cols[1].metric(
        "Longer answer wins",
        with_se(base["accuracy"], base["se"]),
        help="The length-only baseline: the accuracy of always preferring the longer answer (in characters; "
        "equal lengths count half). A reward model should beat it.",
    )
    cols[2].metric("Comparisons", s["comparisons"], help=f"over {s['prompts']} instructions")
    cols[3].metric(
        "Best-of-group accuracy",
        fmt(s["best_of_group_accuracy"]),
        help="How often the top-reward response is one people ranked best",
    )
    cols[4].metric(
        "Kendall's tau",
        fmt(ranking["kendall_tau"], 2),
        help=f"Agreement of the reward order with people's order per instruction (1 = same order, 0 = unrelated, "
        f"-1 = reversed), averaged over the {ranking['prompts']} instructions with more than two ranked answers",
    )
    cols[5].metric(
        "Length correlation",
        fmt(s["length_correlation"], 2),
        help="Pearson r between reward and response length: far from 0 means a length bias",
    )


def category_section(s) -> None:
    st.subheader("Accuracy per category")
    st.dataframe(
        pd.DataFrame([{"category": name, "accuracy": v["accuracy"], "± se": v["se"],
                       "comparisons": v["comparisons"], "longer answer wins": v["length_baseline"]}
                      for name, v in s["by_category"].items()]),
        hide_index=True,
        key="by_category",
        column_config={c: st.column_config.NumberColumn(format="%.3f")
                       for c in ("accuracy", "± se", "longer answer wins")},
    )


def worst_pairs_section(result) -> None:
    pairs_table(
        "Worst-ranked pairs",
        "The 15 comparisons with the lowest r_winner − r_loser: first those the model gets wrong (it gave "
        "the response people rejected the higher reward), then its least confident right ones.",
        [
            {
                "instruction": p["prompt"],
                "preferred (winner)": p["winner"],
                "rejected (loser)": p["loser"],
                "ranks": f"{p['winner_rank']} vs {p['loser_rank']}",
                "r winner": p["reward_winner"],
                "r loser": p["reward_loser"],
                "P(winner)": p["p"],
                "model agrees": "✓ yes" if p["correct"] else "✗ no",
                "source": p["source"],
            }
            for p in worst_pairs(result, 15)
        ],
        key="worst_pairs",
    )


def ensemble_section(s) -> None:
    """An ensemble's accuracy as its members disagree more (rmcore.training.ensemble.evaluate_ensemble)."""
    info = s["ensemble"]
    st.subheader("Accuracy against ensemble disagreement")
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.plotly_chart(charts.accuracy_by_disagreement(info["accuracy_by_disagreement"], s["accuracy"]),
                        key="by_disagreement")
    with right:
        alone = ", ".join(fmt(a) for a in info["member_accuracies"])
        st.markdown(
            f"The reward is the mean of **{info['members']}** members (each alone: {alone}). For every pair, the "
            "members' disagreement is the spread of their margins r_winner − r_loser; the pairs are split into "
            "four groups of equal size, from the least to the most disputed."
        )
        st.markdown(
            "If the spread is worth reading, accuracy falls from left to right: the pairs the members agree on "
            "are the ones to trust, and the disputed ones are where the model is guessing (and the ones worth "
            "labelling next). A flat chart means the disagreement says little on this data."
        )


def length_section(s) -> None:
    """Is the reward more than a length detector? The model against what length alone gets."""
    controlled, logistic = s["length_controlled"], s["length_logistic"]
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.plotly_chart(charts.accuracy_with_baselines(s), key="baselines")
    with right:
        st.markdown("**Does it just prefer longer answers?**")
        lines = []
        if s["length_agreement"] is not None:
            lines.append(f"- It gives the longer answer the higher reward in **{s['length_agreement']:.0%}** of the "
                         "pairs whose lengths differ.")
        if controlled["accuracy"] is not None:
            n = controlled["comparisons"]
            lines.append(f"- On the **{n}** pair{'' if n == 1 else 's'} whose lengths are within "
                         f"{controlled['max_relative_difference']:.0%} of each other, where length cannot decide, "
                         f"it scores **{controlled['accuracy']:.3f}** ± {controlled['se']:.3f}"
                         + (" (too few pairs to tell)." if n < 10 else "."))
        if logistic["accuracy"] is not None:
            lines.append(f"- A logistic model that sees only the two lengths (fitted on other instructions, "
                         f"{logistic['folds']} folds) scores **{logistic['accuracy']:.3f}**.")
        st.markdown("\n".join(lines) or "Too few pairs to say.")


TEXT_COLUMNS = ("instruction", "preferred (winner)", "rejected (loser)")
NUMBERS = ("r winner", "r loser", "P(winner)", "P(winner) by A", "P(winner) by B")
# Pixel widths that fit the wide layout's page at 1400 px (about 935 px); the texts share what is left and
# wrap in their tall rows.
PAGE_PX = 930
SHORT_WIDTH = {"model agrees": 90, "ranks": 60, "right": 50, "line": 50, "source": 150, "P(winner) by A": 100,
               "P(winner) by B": 100}


def by_line(frame):
    """Sources of one file ("held_out.jsonl:2", ...) as a line-number column, the file said once above."""
    files = frame["source"].astype(str).str.rpartition(":")
    if files[0].nunique() == 1 and files[0].iloc[0] and files[2].str.isdigit().all():
        st.caption(f"All from {md(files[0].iloc[0])}; “line” is the line of each pair's instruction in it.")
        return frame.assign(source=files[2].astype(int)).rename(columns={"source": "line"})
    return frame


def pairs_table(title: str, caption: str, rows: list[dict], key: str) -> None:
    """A table of pairs with tall rows (long answers wrap), and one pair in full below it."""
    st.subheader(title)
    st.caption(caption)
    if not rows:
        st.caption("None.")
        return
    frame = pd.DataFrame(rows)
    if "source" in frame and frame["source"].nunique() <= 1:
        st.caption(f"All from {md(frame['source'].iloc[0])}.")
        frame = frame.drop(columns="source")  # one value: a column less to fit the page
    elif "source" in frame:
        frame = by_line(frame)
    texts = [c for c in TEXT_COLUMNS if c in frame]
    short = [c for c in frame.columns if c not in texts]
    text_px = max(150, (PAGE_PX - sum(SHORT_WIDTH.get(c, 72) for c in short)) // max(1, len(texts)))
    st.dataframe(
        frame,
        hide_index=True,
        key=key,
        row_height=90,
        column_order=short + texts,  # the verdict and the numbers first: never the part cut off on a narrow page
        column_config={
            **{c: st.column_config.TextColumn(width=text_px) for c in texts},
            **{c: st.column_config.Column(width=SHORT_WIDTH.get(c, 72)) for c in short if c not in NUMBERS},
            **{c: st.column_config.NumberColumn(format="%.3f", width=SHORT_WIDTH.get(c, 72))
               for c in NUMBERS if c in frame},
        },
    )
    with st.expander("Read one pair in full", icon=":material/article:"):
        index = st.selectbox("Pair", range(len(rows)), key=f"{key}_full", persist_state="session",
                             format_func=lambda i: f"{i + 1}. {' '.join(str(rows[i]['instruction']).split())[:90]}")
        row = rows[index]
        st.markdown("**Instruction**")
        st.text(row["instruction"])
        left, right = st.columns(2)
        left.markdown("**Preferred by people**")
        left.text(row["preferred (winner)"])
        right.markdown("**Rejected by people**")
        right.text(row["rejected (loser)"])


def show_comparison(comparison: dict, result_b) -> None:
    st.subheader("B against A")
    cols = st.columns(4)
    cols[0].metric("A: accuracy", with_se(comparison["accuracy_a"], comparison["accuracy_a_se"]),
                   help=comparison["model_a"])
    cols[1].metric("B: accuracy", with_se(comparison["accuracy_b"], comparison["accuracy_b_se"]),
                   help=comparison["model_b"])
    cols[2].metric("B − A", f"{comparison['difference']:+.3f}",
                   help=f"{comparison['confidence']:.0%} paired bootstrap interval over instructions: "
                        f"{comparison['difference_low']:+.3f} to {comparison['difference_high']:+.3f}")
    cols[3].metric("Pick the same answer", f"{comparison['agreement']:.0%}",
                   help=f"of the {comparison['comparisons']} pairs")
    st.info(compare_sentence(comparison), icon=":material/compare_arrows:")
    st.plotly_chart(charts.accuracy_difference(comparison), key="difference")
    pairs_table(
        "Where they disagree most",
        "Pairs one model gets right and the other wrong, the largest gap in P(winner) first.",
        [
            {
                "instruction": d["prompt"],
                "preferred (winner)": d["winner"],
                "rejected (loser)": d["loser"],
                "P(winner) by A": d["p_a"],
                "P(winner) by B": d["p_b"],
                "right": "A" if d["a_correct"] else "B",
                "source": d["source"],
            }
            for d in comparison["top_disagreements"]
        ],
        key="disagreements",
    )
    with st.expander(f"Every number for B ({comparison['model_b']})", icon=":material/analytics:"):
        show_details_b(result_b)


def show_details_b(result) -> None:
    s = result.summary
    base = s["length_baseline"]
    st.write(f"Accuracy {with_se(s['accuracy'], s['accuracy_se'])}; the longer answer wins "
             f"{with_se(base['accuracy'], base['se'])}; length correlation {fmt(s['length_correlation'], 2)}.")
    warning = s.get("length_warning")  # rmcore's words, as the CLI prints them
    if warning:
        st.warning(warning, icon=":material/straighten:")


def page() -> None:
    st.title("Evaluate")
    st.write(
        "How often does the model agree with people on data it has not seen, how sure is it, "
        "and does it simply prefer longer answers?"
    )
    choice = pick_model("Reward model", key="eval_model", include_ensembles=True,
                        help="Trained models in the models folder, its ensembles (accuracy against how much their "
                             "members disagree), or an untrained head")
    choice_b = None
    if st.toggle("Compare with a second model", key="eval_compare", persist_state="session",
                 help="Both score the same pairs: their accuracies, the difference with a bootstrap interval over "
                      "instructions, how often they agree, and the pairs where they disagree most"):
        choice_b = pick_model("Second model (B; the first is A)", key="eval_model_b", include_ensembles=True)
    picked = choose_data(choice)
    if picked is None:
        return
    name, groups, categories = picked
    limit = st.number_input(
        "Instructions to use at most",
        1,
        100_000,
        300,
        key="eval_limit",
        persist_state="session",
        help="Scoring runs one forward pass per response; large files take a while on a CPU",
    )
    groups = groups[: int(limit)]
    categories = categories[: int(limit)] if categories else None
    key = (choice.key, choice_b.key if choice_b else None, name, groups_fingerprint(groups))
    models = [choice] + ([choice_b] if choice_b else [])
    if st.button(
        f"Evaluate on {count(len(groups), 'instruction')}" + (" with both models" if choice_b else ""),
        type="primary",
        icon=":material/play_arrow:",
        key="run_eval",
    ):
        results = []
        with (
            user_errors("Evaluation failed"),
            st.status(f"Scoring {sum(len(g.responses) for g in groups)} responses…") as status,
        ):
            for number, picked_model in enumerate(models, start=1):
                results.append(run_one(picked_model, groups, categories, f"model {number} of {len(models)}: "
                                       if len(models) > 1 else ""))
            stored = (key, results[0], compare(results[0], results[1]) if choice_b else None,
                      results[1] if choice_b else None)
            st.session_state["eval_result"] = stored
            status.update(label=f"Scored {results[0].summary['responses']} responses", state="complete")
    stored = st.session_state.get("eval_result")
    if stored is not None and stored[0] == key:
        show(stored[1])
        if stored[2] is not None:
            show_comparison(stored[2], stored[3])
    elif stored is not None:
        st.caption("The model or data changed since the last evaluation: press Evaluate again.")


def run_one(choice, groups, categories, prefix: str):
    bar = st.progress(0.0, text=f"{prefix}loading the model")
    ensemble = choice.kind == "ensemble"
    model = resources.ensemble(choice) if ensemble else resources.reward_model(choice)
    started = time.perf_counter()

    def progress(share: float) -> None:
        left = (time.perf_counter() - started) * (1 - share) / share if share > 0 else 0.0
        bar.progress(share, text=f"{prefix}{share:.0%} of the tokens scored, about {format_duration(left)} left")

    score = evaluate_ensemble if ensemble else evaluate
    return score(model, groups, on_progress=progress, categories=categories)


page()
