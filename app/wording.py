"""What the pages say: their sentences and progress-bar texts, as pure functions of rmcore's results.

No Streamlit here, so each is tested directly (tests/test_app.py): the plan of a time budget, which
token a reward is read at, the live panel's bars. (An evaluation's length warning is rmcore's own text,
rmcore.analysis.evaluate.length_warning, shown as the CLI prints it.)
"""

from __future__ import annotations

from rmcore.core.progress import count, format_duration


def duration(seconds: float | None) -> str:
    return "–" if seconds is None else format_duration(seconds)


def budget_text(seconds: float) -> str:
    """A time budget as it was chosen: "5 min", "1 h", else a duration."""
    seconds = round(seconds)
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return duration(seconds)


def plan_lines(plan) -> list[str]:
    """The plan in words: what it trains on, what it evaluates on."""
    total, seen = plan.train_comparisons_total, plan.train_comparisons
    prompts = f"{plan.train_prompts:,} of {plan.train_prompts_total:,} instructions"
    if plan.mode == "head":
        if plan.train_prompts >= plan.train_prompts_total:
            what = (f"**all {count(total, 'training comparison')}** ({count(plan.train_prompts_total, 'instruction')}),"
                    f" {count(plan.steps, 'step')} of the reward neuron")
        else:
            what = (f"**{seen:,} of the {count(total, 'training comparison')}** ({prompts}: those whose trunk "
                    "features fit in the budget, picked at random; more if time is left)")
    else:
        passes = seen / max(1, total)
        steps = count(plan.steps, "step")
        if passes >= 1.05:
            what = f"**{steps}: {passes:.1f} passes over all {count(total, 'training comparison')}**"
        elif passes >= 0.95:
            what = f"**{steps}: one pass over all {count(total, 'training comparison')}**"
        else:
            what = f"**{steps}: about {seen:,} ({passes:.0%}) of the {count(total, 'training comparison')}**"
    lines = [f"Trains in **{plan.mode} mode** on {what}."]
    if plan.then_top_blocks:
        lines.append(f"Then, if the time left fits a pass, trains the **top {plan.then_top_blocks} blocks** from the "
                     "head's solution in the rest of the budget, and keeps whichever of the two scores better on the "
                     "held-out prompts.")
    if not plan.eval_prompts_total:
        lines.append("No held-out instructions: set a held-out fraction to measure accuracy on unseen prompts.")
    elif not plan.eval_prompts:
        held = count(plan.eval_prompts_total, "held-out instruction")
        lines.append(f"No held-out evaluation: scoring even a few of the {held} would take the time training needs.")
    else:
        times = f", {plan.evaluations} times" if plan.mode != "head" and plan.evaluations > 1 else ""
        held = count(plan.eval_comparisons_total, "held-out comparison")
        if plan.eval_prompts >= plan.eval_prompts_total:
            lines.append(f"Evaluates on **all {held}** ({count(plan.eval_prompts_total, 'instruction')}){times}.")
        else:
            lines.append(f"Evaluates on **{plan.eval_comparisons:,} of the {held}** ({plan.eval_prompts:,} of "
                         f"{count(plan.eval_prompts_total, 'instruction')}, a random sample sized to the budget; its "
                         f"accuracy comes with a standard error){times}.")
    return lines


def refusal_text(plan) -> str:
    """rmcore's refusal in the app's words (a budget and a mode chosen here, not command-line options)."""
    return (budget_words(plan.refusal(), plan.budget_s).replace("Give a longer --time-budget",
                                                                 "Choose a longer time budget")
            .replace("try --mode head", "try head mode"))


def budget_words(text: str, budget_s: float) -> str:
    """rmcore's text with its budget as chosen here ("5 min", not "5 min 00 s")."""
    return text.replace(f"{format_duration(budget_s)} budget", f"{budget_text(budget_s)} budget")


def code_token(token: str) -> str:
    """A token inside a markdown code span, as the chart shows it (a space '·', a line break '⏎')."""
    return (token.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥").replace("`", "'")) or "∅"


def trace_legend(tokens: list[str]) -> str:
    """How to read the trace, and which token the reward is read at: the last token of the rendered text,
    whatever the chat template ends an answer with (SmolLM2's: `<|im_end|>` and a line break, so the line
    break). TRL's RewardTrainer on conversations and transformers' text-classification pipeline read that
    same token (notebook 3 checks all three)."""
    text = ("How to read the tokens: the model reads text in pieces (tokens), often a word with the space before "
            "it; `·` stands for that space and `⏎` for a line break. ")
    if not tokens:
        return text + "The reward is read at the last token of the text."
    where = f"`{code_token(tokens[-1])}`"
    if len(tokens) > 1 and tokens[-1].strip() == "":
        kind = "line break" if "\n" in tokens[-1] else "token"
        where += f", the {kind} after `{code_token(tokens[-2])}`"
    return (text + f"The chat template closes every answer with its end-of-turn marker; the reward is read at the "
            f"very last token of the text, here {where}: that last bar, with the reward dot, is the answer's reward. "
            "TRL's RewardTrainer (on conversations) and transformers' text-classification pipeline read the "
            "same token.")


def held_out_delta(metrics: dict) -> str | None:
    """Under the held-out accuracy: its standard error, and on how many comparisons (partial: so marked)."""
    se, n = metrics.get("eval_accuracy_se"), metrics.get("eval_comparisons")
    if se is None or not n:
        return None
    return f"± {se:.3f} on {n:,}" + (" (partial)" if metrics.get("eval_partial") else "")


def held_out_help(metrics: dict) -> str:
    """How many held-out comparisons that accuracy is on, and what a budget left out."""
    text = (f"On {count(metrics.get('eval_comparisons', 0), 'comparison')} of prompts never trained on, ± one "
            "standard error")
    if metrics.get("eval_partial"):
        text += (f". Partial: time ran out after {metrics.get('eval_prompts_scored', '?')} of the "
                 f"{metrics.get('eval_prompts_planned', '?')} prompts planned, so "
                 f"{count(metrics.get('eval_comparisons_left_out', 0), 'comparison')} were left out")
    return text


def phase_times(phase_seconds: dict[str, float], budget_s: float) -> str:
    """Where the time of the run went, against its budget."""
    parts = " · ".join(f"{name} {duration(seconds)}" for name, seconds in phase_seconds.items() if seconds >= 0.5)
    total = sum(phase_seconds.values())
    against = f" of the {budget_text(budget_s)} budget" if budget_s else ""
    return f"Where the time went: {parts} (about {duration(total)}{against})."


def progress_bar(snap) -> list[tuple[float, str]]:
    """The live panel's bars: the phase being prepared or the steps, then the time budget (if any)."""
    bars = []
    preparing = snap.active and not snap.steps
    phase = phase_bar(snap) if preparing else None
    if phase is not None:
        bars.append(phase)
    elif snap.steps or (snap.active and not preparing):
        text = f"step {snap.step} of {snap.total_steps} · epoch {snap.last.get('epoch', 0):.1f}"
        if snap.active:
            eta = snap.eta_s
            if snap.budget_s and eta is not None:  # the budget ends the run first: its steps are refitted to it
                eta = min(eta, max(0.0, snap.budget_s - snap.elapsed_s))
            text += f" · {duration(snap.elapsed_s)} elapsed · ETA {duration(eta)}"
        else:
            text += f" · took {duration(snap.elapsed_s)}"
        bars.append((snap.progress, text))
    if snap.budget_s and snap.active:
        bars.append(budget_bar(snap, with_phase=preparing and phase is None))
    return bars


# which part of the estimate made before the start (JobRequest.expected_s) a phase's words belong to
PHASE_PARTS = (("loading", "loading"), ("starting", "loading"), ("trunk features", "features"),
               ("saving", "saving"))


def phase_bar(snap) -> tuple[float, str] | None:
    """A preparing phase: its own progress and time left when rmcore reports them; else, without a budget,
    the time it has taken against the estimate made before the start. None with a budget: the budget's bar
    then carries the phase."""
    if snap.phase_progress is not None:
        return snap.phase_progress, f"{snap.phase}…"
    if snap.budget_s:
        return None
    elapsed = snap.phase_elapsed_s
    part = next((part for words, part in PHASE_PARTS if words in snap.phase), None)
    expected = snap.expected_s.get(part) if part else None
    if not expected:
        return 0.0, f"{snap.phase}… {duration(elapsed)} so far"
    if elapsed < expected:
        return (min(0.95, elapsed / expected),
                f"{snap.phase}… {duration(elapsed)} so far, about {duration(expected - elapsed)} left")
    return 0.95, (f"{snap.phase}… {duration(elapsed)} so far, longer than the {duration(expected)} estimated "
                  "(the machine is busier than when it was timed)")


def budget_bar(snap, with_phase: bool) -> tuple[float, str]:
    """Elapsed against the time budget: the run ends with a saved model by the end of the bar."""
    elapsed, budget = snap.elapsed_s, snap.budget_s
    text = f"{snap.phase}… · " if with_phase else ""
    if elapsed <= budget:
        text += f"{duration(elapsed)} of the {budget_text(budget)} budget · at most {duration(budget - elapsed)} left"
    else:
        text += f"{duration(elapsed)}: {duration(elapsed - budget)} over the {budget_text(budget)} budget, finishing"
    return min(1.0, elapsed / budget), text


def limit_summary(records: list[dict], proxy: list[list[float]], limit: int | None) -> tuple[str, str] | None:
    """("warning" or "caption", text) on the answers of a best-of-n run that stopped at the token limit: a
    warning when every pick (the proxy's best answer of each prompt) did, else a count; None when none did."""
    hits = [r.get("hit_limit") or [] for r in records]
    cut, answers = sum(sum(h) for h in hits), sum(len(r["responses"]) for r in records)
    if not cut:
        return None
    limit_words = f"{limit}-token limit" if limit else "token limit"
    picks = [h[max(range(len(rewards)), key=rewards.__getitem__)] for h, rewards in zip(hits, proxy) if h]
    if picks and all(picks):
        return "warning", (
            f"Every pick hit the {limit_words}: the answer the reward model liked best stopped mid-answer for "
            f"{'the one prompt' if len(picks) == 1 else f'all {len(picks)} prompts'} ({cut} of {answers} answers "
            "were cut). The curve then compares cut answers, and a reward that likes length picks whatever ran "
            "longest: raise “Max new tokens” for answers that end by themselves.")
    return "caption", (f"{cut} of {answers} answers hit the {limit_words} (cut mid-answer); "
                       f"{sum(picks)} of the {count(len(picks), 'pick')} did.")
