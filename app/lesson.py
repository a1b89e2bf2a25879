"""The Best-of-n & RLHF page's over-optimisation lesson: run `rmcore lesson goodhart` and show it.

The lesson (rmcore.policy.lesson) trains a proxy whose labeler liked answers ending on "!" and a
gold judge whose data penalises them, samples the policy and measures best-of-n. It runs as a
background job (app.lesson_jobs), like training, with a bar and the time left: Stop ends it, and the
next run reuses what was finished (both judges and the samples are cached in the lesson's folder),
so a class's second run takes under a minute. A finished lesson is shown again on every visit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from app import lesson_charts, settings, state
from app.jobs import JobBusy, manager
from app.lesson_jobs import LessonJob, LessonJobRequest
from app.live_panel import LivePanel, clear_button
from app.ui import fmt, md, user_errors
from rmcore.core.folders import read_json_object
from rmcore.core.progress import count, format_duration
from rmcore.policy.lesson import LESSON_FILE, LessonConfig
from rmcore.policy.lesson_data import LESSON_SEED

# Settings the app's lesson runs with beyond the seed (tests shrink it to seconds on tiny models).
LESSON_OPTIONS: dict[str, Any] = {}

READING = (
    "**How to read it.** Each point is the proxy's favourite of n answers, for n = 1, 2, 4, … 32, further "
    "right as n grows (picking from more answers moves further from what the policy usually says). The "
    "proxy's reward of its own pick rises at every step: it is picking by that number. The gold judge agreed "
    "at first, then turned down, while the share of picks ending on \"!\" kept climbing: past the peak, "
    "best-of-n is mostly finding the trait the proxy's labeler happened to like, not better answers. That is "
    "Goodhart's law, measured: the fitted peak (the star) is where more optimisation starts to hurt."
)

NO_TURN = (
    "**No clear turn in this run** (the criteria below say which part is missing). The proxy still rises by "
    "construction; whether the gold turns within n = 32 depends on the seed: measured, it turned clearly in 4 "
    "of 5 seeds (0, 1, 3 and 4; in seed 0 from its first point). Try seed 1 or 4."
)


def lesson_dir(seed: int) -> Path:
    """Where the app keeps the lesson of a seed: a hidden folder beside the models (never listed as one)."""
    return settings.models_dir() / ".lessons" / f"goodhart-seed-{seed}"


def finished_result(folder: Path) -> dict[str, Any] | None:
    """The result a lesson folder holds, if the lesson ran to the end there."""
    file = folder / LESSON_FILE
    return read_json_object(file).get("result") if file.is_file() else None


def section() -> None:
    st.subheader("Over-optimisation lesson")
    st.write("Reward hacking you can watch, in a few minutes: a proxy reward model with a planted flaw (its "
             "labeler liked answers that end on an exclamation mark), an honest gold judge, and best-of-n over "
             "the policy's own answers. The proxy keeps rising; the gold turns down.")
    seed = int(st.number_input("Seed", 0, 99, LESSON_SEED, key="lesson_seed", persist_state="session",
                               help="Each seed trains its own judges and samples its own answers (cached)."))
    folder = lesson_dir(seed)
    result = finished_result(folder)
    busy = manager().running() is not None  # one job per server: not beside a training or RLHF run
    label = "Run the over-optimisation lesson again" if result else "Run the over-optimisation lesson"
    if st.button(label, type="primary", icon=":material/school:", key="lesson_run", disabled=busy,
                 help="Runs in the background, like training: switching pages does not stop it."):
        start_job(seed, folder)
    PANEL.show(busy)
    if result:
        show(result)
    elif not busy:
        st.caption("About 4 minutes the first time on a 2-core CPU; the judges and the answers are then kept, "
                   "so running it again takes under a minute.")


def start_job(seed: int, folder: Path) -> None:
    """Start the lesson of `seed` in the server's job slot (its folder's cache is reused, never refused)."""
    config = LessonConfig(seed=seed, policy=settings.generator_model(), reward_model=settings.base_model(),
                          **LESSON_OPTIONS)
    with user_errors("The lesson did not start"):
        config.check()
        try:
            manager().start(LessonJobRequest(config, folder, f"lesson, seed {seed}"), state.session_id())
        except JobBusy as exc:
            st.warning(f"Not started: {md(exc)}.", icon=":material/hourglass:")
            return
        st.rerun()


def lesson_bar(snap) -> tuple[float, str]:
    """The panel's bar: the lesson's stage, its time so far and the lesson's time left."""
    text = snap.phase.capitalize()
    return snap.progress, text + (f" · {format_duration(snap.elapsed_s)} so far" if snap.active else "")


def lesson_finished(snap) -> None:
    """The owner's lesson has ended (its result, when it finished, is drawn below from its folder)."""
    clear_button("lesson_forget", "Hide this run's panel (the lesson stays cached in its folder)")


def heading(text: str) -> None:
    st.markdown(f"#### {text}")


PANEL = LivePanel(
    kind=LessonJob,
    doing="Running",
    what="The lesson",
    polling_key="lesson_polling",
    stop_label="Stop (what was finished stays cached)",
    stop_key="lesson_stop",
    bar=lesson_bar,
    numbers=lambda snap: None,
    finished=lesson_finished,
    heading=heading,
)


def show(result: dict[str, Any]) -> None:
    """The curves, the fits, the criteria, the picks before and after the turn, and how to read them."""
    st.plotly_chart(lesson_charts.lesson_figure(result), key="lesson_curve")
    start = result["points"][0]
    st.caption(f"The proxy's flaw: it likes answers where {md(result['trait'])}. Each judge's reward is drawn as "
               f"its change from the policy's own answers (n = 1: proxy {fmt(start['proxy'])}, gold "
               f"{fmt(start['gold'])}; the two judges' scales differ). Bars are standard errors over "
               f"{len(result['config']['prompts'])} prompts; dotted lines are the fitted best-of-n form d(α − βd).")
    st.markdown(READING if result["turn"]["all"] else NO_TURN)
    if why := judges_line(result):
        st.markdown(why)
    st.dataframe(lesson_charts.criteria_rows(result), hide_index=True, key="lesson_criteria")
    st.dataframe(lesson_charts.fit_rows(result), hide_index=True, key="lesson_fits")
    show_examples(result["examples"])


def judges_line(result: dict[str, Any]) -> str | None:
    """Why the gold turns, in the lesson's own numbers (notebook 06, section 6.5 derives it); None for a
    lesson saved before the judges were measured, or one whose answers never or always carry the trait."""
    judges = result.get("judges") or {}
    if judges.get("trait_cost") is None:
        return None
    cost = judges["trait_cost"]
    turned = bool((result.get("turn") or {}).get("gold_turns", True))
    if cost < 0 and turned:
        gold_says = (f"{fmt(-cost)} less from the gold judge. That average cost starts the turn; the fall at large "
                     "n is steeper still, because the proxy's most extreme favourites are where the two judges "
                     "disagree most")
    elif cost < 0:
        gold_says = (f"{fmt(-cost)} less from the gold judge. With this seed that cost was not enough: the proxy's "
                     "gain outweighed it, and the gold never fell two standard errors below its peak")
    else:
        gold_says = f"{fmt(cost)} more from the gold judge, so here the trait cannot turn the gold"
    lead = "Why it turns." if turned and cost < 0 else ("Why it did not turn here." if not turned
                                                         else "What the trait does.")
    return (f"**{lead}** Within a prompt, the trait makes up {judges['flaw_variance_share']:.0%} of the "
            f"differences in the proxy's reward, and at equal proxy reward an answer with the trait gets "
            f"{gold_says} (notebook 06, section 6.5, derives this and measures it on the lesson).")


def show_examples(examples: list[dict[str, Any]]) -> None:
    """The proxy's pick at the gold's peak and at the largest n, side by side: the hack in text."""
    if not examples:
        return
    st.markdown("#### The pick before and after the turn")
    for row in examples:
        prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        st.markdown(f"**{md(prompt)}**")
        columns = st.columns(2)
        for column, key in zip(columns, ("at_gold_peak", "at_largest_n")):
            pick, when = row[key], "at the gold's peak" if key == "at_gold_peak" else "the largest n"
            answer, broken = readable(pick["answer"])
            left_out = f"; {count(broken, 'undecodable piece')} of the sampled bytes left out" if broken else ""
            column.caption(f"best of {pick['n']} ({when}): proxy {fmt(pick['proxy'])}, gold {fmt(pick['gold'])}"
                           + (", carries the trait" if pick["trait"] else "") + left_out)
            column.text(answer or "(empty)")


def readable(answer: str) -> tuple[str, int]:
    """The answer as shown, and how many U+FFFD it had. The policy samples byte tokens, and a few do not
    form UTF-8 characters; both judges scored the text as sampled, but "�" reads as a bug on the page."""
    return answer.replace("\ufffd", ""), answer.count("\ufffd")


__all__ = ["LESSON_OPTIONS", "PANEL", "finished_result", "lesson_dir", "section", "show", "start_job"]
