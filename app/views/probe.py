"""Probe: score 2 to 9 candidate answers, see P[i][j] = sigma(r_i - r_j), per-token rewards, best of n."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import streamlit as st

from app import charts, resources, settings, waiting
from app.jobs import read_held_out
from app.ui import kept_upload, md, pick_model, user_errors
from app.wording import trace_legend
from rmcore.analysis.probes import record_probes, reward_spread, run_probes
from rmcore.analysis.scoring import scored_records
from rmcore.core.errors import DataError, RmcoreError
from rmcore.core.folders import read_metadata
from rmcore.core.progress import count
from rmcore.data import demo_data_path, read_preferences, read_preferences_bytes
from rmcore.model.card import verdict
from rmcore.policy.sampling import sample
from rmcore.training.ensemble import member_folders, reading

MIN_CANDIDATES, MAX_CANDIDATES = 2, 9
EXAMPLE_PROMPT = "How do I boil an egg so that it peels easily?"
EXAMPLE_CANDIDATES = [
    "Lower the eggs into water that is already boiling, cook them for 11 minutes, then put them straight "
    "into ice water for 5 minutes. The quick chill makes the shell come away cleanly.",
    "Boil it for a while and then peel it.",
    "idk, just buy them already peeled lol",
]


def init_state() -> None:
    if "probe_ids" not in st.session_state:
        st.session_state["probe_ids"] = list(range(len(EXAMPLE_CANDIDATES)))
        st.session_state["probe_next_id"] = len(EXAMPLE_CANDIDATES)
        st.session_state["probe_prompt"] = EXAMPLE_PROMPT
        for i, text in enumerate(EXAMPLE_CANDIDATES):
            st.session_state[f"cand_{i}"] = text
    pending = st.session_state.pop("probe_pending", None)
    if pending is not None:  # generated candidates replace the list before the widgets are drawn
        start = st.session_state["probe_next_id"]
        st.session_state["probe_ids"] = list(range(start, start + len(pending)))
        st.session_state["probe_next_id"] = start + len(pending)
        for i, text in zip(st.session_state["probe_ids"], pending, strict=False):
            st.session_state[f"cand_{i}"] = text


def add_candidate() -> None:
    ids = st.session_state["probe_ids"]
    if len(ids) < MAX_CANDIDATES:
        new = st.session_state["probe_next_id"]
        st.session_state["probe_next_id"] = new + 1
        st.session_state[f"cand_{new}"] = ""
        ids.append(new)


def remove_candidate(cid: int) -> None:
    ids = st.session_state["probe_ids"]
    if len(ids) > MIN_CANDIDATES and cid in ids:
        ids.remove(cid)
        st.session_state.pop(f"cand_{cid}", None)


def inputs_section() -> tuple[str, list[str]]:
    prompt = st.text_area("Instruction", key="probe_prompt", persist_state="session", height=80)
    ids = st.session_state["probe_ids"]
    st.write(f"**Candidates** ({len(ids)}; between {MIN_CANDIDATES} and {MAX_CANDIDATES})")
    for n, cid in enumerate(ids):
        left, right = st.columns([12, 1], vertical_alignment="center")
        left.text_area(f"Candidate #{n + 1}", key=f"cand_{cid}", persist_state="session", height=68)
        limit, cut = st.session_state.get("probe_cut", (0, []))
        if st.session_state.get(f"cand_{cid}") in cut:
            left.caption(f":material/content_cut: cut at the {limit}-token limit: it stops mid-answer")
        right.button(
            "",
            icon=":material/delete:",
            key=f"remove_{cid}",
            on_click=remove_candidate,
            args=(cid,),
            disabled=len(ids) <= MIN_CANDIDATES,
            help=f"Remove candidate #{n + 1}",
        )
    st.button(
        "Add a candidate",
        icon=":material/add:",
        key="add_candidate",
        on_click=add_candidate,
        disabled=len(ids) >= MAX_CANDIDATES,
    )
    return prompt or "", [st.session_state.get(f"cand_{cid}", "") for cid in ids]


def generate_section(prompt: str) -> None:
    with st.expander(
        f"Generate candidates with the instruct LLM "
        f"({settings.base_model_label(settings.generator_model())})",
        icon=":material/auto_awesome:",
    ):
        st.caption(
            "The instruct model samples n answers to the instruction; they replace the candidates above, and "
            "the reward model then picks the best of n (what a reward model is used for at inference time)."
        )
        c1, c2, c3, c4 = st.columns(4)
        n = c1.slider("n", 2, MAX_CANDIDATES, 4, key="gen_n", persist_state="session")
        max_new = c2.slider(
            "Max new tokens", 16, 512, 160, 16, key="gen_tokens", persist_state="session",
            help="Answers stop here even mid-sentence (they are marked as cut); more tokens take longer",
        )
        temperature = c3.slider("Temperature", 0.1, 1.5, 0.8, 0.1, key="gen_temperature", persist_state="session")
        seed = c4.number_input("Seed", 0, 10**6, 0, key="gen_seed", persist_state="session")
        if st.button(
            f"Generate {n} candidates",
            icon=":material/auto_awesome:",
            key="generate",
            disabled=not prompt.strip(),
        ):
            with user_errors("Generation failed"):
                pending, cut = generate(prompt, int(n), int(max_new), float(temperature), int(seed))
                st.session_state["probe_pending"] = pending
                st.session_state["probe_generated"] = tuple(pending)
                st.session_state["probe_cut"] = (int(max_new), cut)
                st.session_state["probe_live"] = True  # generating asks for the best of n: score at once
                st.rerun()


def generate(prompt: str, n: int, max_new: int, temperature: float, seed: int) -> tuple[list[str], list[str]]:
    """n answers sampled by the instruct LLM (empty ones said so), and those cut at the token limit; a bar
    with the time left while it samples."""
    generator = resources.generator(settings.generator_model())
    bar = st.progress(0.0, text=f"Sampling {n} answers…")
    left = waiting.TimeLeft()

    def sampled(done: float, total: int) -> None:  # at every token
        bar.progress(min(1.0, done), text=f"Sampling {n} answers: {done:.0%} of the {max_new}-token limit"
                     + left.text(done, most=True) + " (answers that end sooner finish sooner)")

    answers = sample(generator.model, generator.tokenizer, [prompt], n, max_new, temperature, seed, top_p=0.95,
                     on_progress=sampled)[0]
    bar.empty()
    texts = [a.text if a.text.strip() else "(empty answer)" for a in answers]
    return texts, [t for t, a in zip(texts, answers) if a.hit_limit]


def loaded(choice):
    """The model to score with: a RewardModel, or an rmcore.training.ensemble.Ensemble (the members' mean reward)."""
    return resources.ensemble(choice) if choice.kind == "ensemble" else resources.reward_model(choice)


def score(choice, prompt: str, candidates: list[str]):
    """Scores are remembered per session for the exact inputs, so reruns do not recompute them."""
    key = (choice.key, prompt, tuple(candidates))
    memo = st.session_state.setdefault("probe_memo", {})
    if key not in memo:
        with st.spinner("Scoring…"):
            memo.clear()
            memo[key] = loaded(choice).score(prompt, candidates)
    return memo[key]


def results_section(choice, prompt: str, candidates: list[str], numbers: list[int]) -> None:
    """`numbers` are the candidates' numbers in the form (empty ones are left out, not renumbered)."""
    model = loaded(choice)
    ensemble = choice.kind == "ensemble"
    if not model.trained:
        st.warning(
            "This head is untrained: its rewards are random numbers. Compare them with a trained model's.",
            icon=":material/warning:",
        )
    result = score(choice, prompt, candidates)
    if result.truncated_prompt or result.truncated_responses:
        cuts = (["the instruction lost its start"] if result.truncated_prompt else []) + [
            f"candidate #{numbers[i]} lost its end" for i in result.truncated_responses]
        st.warning(
            f"Longer than the model's {model.max_length} tokens: {', '.join(cuts)}. The rewards are for the "
            "cut text, and with a cut instruction a reward can depend on the other candidates.",
            icon=":material/content_cut:",
        )
    best = result.best
    generated = st.session_state.get("probe_generated") == tuple(candidates)
    limit, cut = st.session_state.get("probe_cut", (0, []))
    cut_numbers = [f"#{numbers[i]}" for i, text in enumerate(candidates) if text in cut]
    if cut_numbers:
        st.warning(
            f"Cut at the {limit}-token limit: {', '.join(cut_numbers)} stopped mid-answer. Raise "
            "“Max new tokens” under Generate to let them finish; a cut answer's reward is for the cut text.",
            icon=":material/content_cut:",
        )
    st.success(
        f"{'Best of ' + str(len(candidates)) + ': ' if generated else 'Highest reward: '}"
        f"candidate #{numbers[best]} (r = {result.rewards[best]:+.3f}"
        + (f" ± {result.spread[best]:.3f}, the members' mean and spread)" if ensemble else ")"),
        icon=":material/emoji_events:",
    )
    st.plotly_chart(charts.reward_bars(candidates, result.rewards, best, numbers,
                                       spread=result.spread if ensemble else None), key="reward_bars")
    if ensemble:
        disagreement_section(result, len(model), numbers)
    left, right = st.columns([3, 2], gap="large")
    with left:
        st.plotly_chart(charts.preference_heatmap(result.probabilities, candidates, numbers), key="pref_heatmap")
    with right:
        st.markdown("**Bradley-Terry model**")
        st.latex(r"P(i \succ j) = \sigma(r_i - r_j) = \frac{1}{1 + e^{-(r_i - r_j)}}")
        st.write(
            "Each cell is the probability that a person prefers the row's answer over the column's, "
            "given only the two rewards. The diagonal is 0.5, and P[j][i] = 1 − P[i][j]."
        )
        st.latex(r"\mathcal{L} = -\log \sigma(r_{w} - r_{l})")
        st.caption("Training lowers this loss for every pair (w preferred over l) that people ranked.")
    token_section(model.members[0] if ensemble else model, prompt, candidates, numbers, best,
                  f"member 1 of the {len(model)}: the trace is drawn for one model" if ensemble else "")


def disagreement_section(result, members: int, numbers: list[int]) -> None:
    """What the ensemble's spread says, in words, and the conservative pick (rmcore.training.ensemble)."""
    st.markdown("**Do the members agree?**")
    said = reading(result)
    st.write(
        f"This is an ensemble of {members} reward models trained on different resamples of the same data. Each bar "
        "is their mean reward; the error bar is how much they disagree about that answer (one standard deviation "
        "across the members, after removing each member's own offset). Where they agree, the data pinned the "
        "reward down; where they disagree, the reward is a guess the training data did not settle, and an answer "
        "only some members love is the kind a policy could exploit."
    )
    lines = [f"- They disagree most about candidate #{numbers[said['most_disputed']]} "
             f"(spread {said['largest_spread']:.3f})."]
    if said["top_two_close"]:
        lines.append(f"- The two highest means are only {said['top_gap']:.3f} apart, less than their spread: which "
                     "of them is better is not settled.")
    elif said["top_gap"] is not None:
        lines.append(f"- The best answer leads by {said['top_gap']:.3f}, more than the members' spread: they agree "
                     "on it.")
    st.markdown("\n".join(lines))
    k = st.slider("Caution k for the conservative pick (mean − k × spread)", 0.0, 3.0, 1.0, 0.25, key="probe_k",
                  persist_state="session",
                  help="Best-of-n with an ensemble can pick the answer with the highest mean minus k spreads: an "
                       "answer the members disagree about must then lead by more. k = 0 is the plain mean.")
    careful = result.pick(k)
    if careful == result.best:
        st.caption(f"With k = {k:g} the conservative pick is the same answer, #{numbers[careful]}.")
    else:
        st.info(f"With k = {k:g} the conservative pick is candidate #{numbers[careful]}, not #{numbers[result.best]}:"
                " the top answer's lead is within what the members disagree about.", icon=":material/shield:")


def token_section(model, prompt: str, candidates: list[str], numbers: list[int], best: int,
                  whose: str = "") -> None:
    st.subheader("Reward token by token")
    st.caption(
        "The reward head applied after every token of one answer: the reward the model would give if the "
        "answer ended there. Bars show which tokens move it up (green) or down (red)."
        + (f" For this ensemble, {whose}." if whose else "")
    )
    index = st.selectbox(
        "Candidate",
        range(len(candidates)),
        index=best,
        # a new key when the candidates change: the trace then starts on the best one again
        key=f"trace_{hashlib.sha1(repr((prompt, candidates)).encode()).hexdigest()[:12]}",
        persist_state="session",
        format_func=lambda i: f"#{numbers[i]}: {' '.join(candidates[i].split())[:80]}",
    )
    trace = model.token_rewards(prompt, candidates[index])
    st.plotly_chart(charts.token_trace(trace.tokens, trace.rewards), key="token_trace")
    st.caption(trace_legend(trace.tokens))



def page() -> None:
    st.title("Probe")
    st.write("Type an instruction and a few answers; the reward model gives each one number.")
    init_state()
    choice = pick_model(
        "Reward model",
        key="probe_model",
        help="Trained models in the project's models folder, newest first, its ensembles (rewards with error "
             "bars), or an untrained head",
        include_ensembles=True,
    )
    prompt, candidates = inputs_section()
    generate_section(prompt)
    numbers = [n for n, c in enumerate(candidates, start=1) if c.strip()]
    filled = [candidates[n - 1] for n in numbers]
    weak_model_note(choice)
    if not prompt.strip() or len(filled) < MIN_CANDIDATES:
        st.info("Write an instruction and at least two non-empty candidates.", icon=":material/info:")
    elif not st.session_state.get("probe_live"):
        # the model loads on the first press (seconds to half a minute), never before the user can type
        st.button("Score the candidates", type="primary", icon=":material/play_arrow:", key="probe_score",
                  on_click=lambda: st.session_state.update(probe_live=True))
        st.caption("After the first score, edits are scored as you make them.")
    else:
        empty = [f"#{n}" for n in range(1, len(candidates) + 1) if n not in numbers]
        if empty:
            st.caption(f"Candidate{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                       f"{'are' if len(empty) > 1 else 'is'} empty and left out.")
        with user_errors("Cannot score"):
            results_section(choice, prompt, filled, numbers)
        with user_errors("Cannot probe"):
            probes_section(choice, prompt, filled, numbers)
    file_section(choice)


WEAK_PROMPTS = 200  # fewer training instructions than this: say the model's picks are rough


def weak_model_note(choice) -> None:
    """Say plainly when a trained model learned from little data (read from its rmcore.json, no load; an
    ensemble's members each learned from a resample of the same prompts, so its first member's says)."""
    if choice is None or choice.kind not in ("trained", "ensemble"):
        return
    try:
        folder = member_folders(choice.path())[0] if choice.kind == "ensemble" else choice.path()
        meta = read_metadata(folder)
    except (RmcoreError, ValueError, OSError):
        return
    data = meta.get("data") or {}
    prompts, comparisons = data.get("train_prompts"), data.get("train_comparisons")
    if isinstance(prompts, int) and prompts < WEAK_PROMPTS:
        st.info(
            f"This reward model learned from only {prompts} instructions ({comparisons} comparisons): that is "
            "few examples of good and bad answers, so its rewards are rough guesses for anything unlike them, "
            "and a best-of-n pick can be a poor answer. Train on more data for picks you can trust.",
            icon=":material/info:",
        )


def spread_of(choice, model) -> tuple[float | None, str]:
    """The reward's standard deviation on the model's held-out prompts (or the demo set), once per model."""
    memo = st.session_state.setdefault("probe_spread", {})
    if choice.key not in memo:
        groups = read_held_out(choice.path()) if choice.kind in ("trained", "ensemble") else None
        if groups:
            groups = groups[:SPREAD_PROMPTS]
            where = f"the answers to {len(groups)} held-out instructions saved with {choice.name}"
        else:
            groups = read_preferences(demo_data_path()).groups[:SPREAD_PROMPTS]
            where = f"the answers to the first {len(groups)} instructions of the demo set"
        with st.spinner("Measuring the reward's spread…"):
            memo[choice.key] = (reward_spread(model, groups, SPREAD_PROMPTS), where)
    return memo[choice.key]


SPREAD_PROMPTS = 40


def probes_section(choice, prompt: str, candidates: list[str], numbers: list[int]) -> None:
    """Counterfactual edits of one answer and how far each moves its reward (rmcore.analysis.probes)."""
    st.subheader("What is it really rewarding?")
    st.caption(
        "Edits that make an answer no better (a pleasantry, flattery, repetition, filler, bullet points) should "
        "barely move its reward; edits that make it worse (cut in half, wrong facts) should lower it. A reward "
        "that rises for the first kind is one a policy trained on it will learn to exploit."
    )
    index = st.selectbox(
        "Answer to edit", range(len(candidates)), key="probe_edit_index", persist_state="session",
        format_func=lambda i: f"#{numbers[i]}: {' '.join(candidates[i].split())[:80]}",
    )
    original = candidates[min(index, len(candidates) - 1)]
    wrong_key = f"probe_wrong_{hashlib.sha1(original.encode()).hexdigest()[:12]}"
    if wrong_key not in st.session_state:
        st.session_state[wrong_key] = original
    wrong = st.text_area(
        "Your version with wrong facts, in a confident tone", key=wrong_key, persist_state="session", height=90,
        help="Change facts so the answer is wrong but sounds just as sure. Left unchanged, it is not probed.",
    )
    if not st.button("Run the probes", icon=":material/science:", key="run_probes"):
        stored = st.session_state.get("probe_report")
        if stored is None or stored[0] != (choice.key, prompt, original, wrong):
            return
        report = stored[1]
    else:
        model = loaded(choice)
        spread, where = spread_of(choice, model)
        with st.spinner("Scoring the edits…"):
            report = run_probes(model, prompt, original, wrong, spread, where)
        st.session_state["probe_report"] = ((choice.key, prompt, original, wrong), report)
    unit = "spreads" if report.spread else "reward"
    st.caption(
        f"Original reward {report.original_reward:+.3f}. One spread = {report.spread:.3f}, the standard deviation "
        f"of this model's rewards over {report.spread_source}." if report.spread else
        f"Original reward {report.original_reward:+.3f}; changes in raw reward ({report.spread_source})."
    )
    st.plotly_chart(charts.probe_deltas(report.rows, unit), key="probe_deltas")
    st.dataframe(
        pd.DataFrame([{"edit": r["label"], f"change ({unit})": r["delta_units"], "change (reward)": r["delta"],
                       "reward": r["reward"], "reading": verdict(r), "edited answer": r["text"]}
                      for r in report.rows]),
        hide_index=True, key="probe_table", row_height=60,
        column_config={f"change ({unit})": st.column_config.NumberColumn(format="%+.2f"),
                       "change (reward)": st.column_config.NumberColumn(format="%+.3f"),
                       "reward": st.column_config.NumberColumn(format="%+.3f"),
                       "edited answer": st.column_config.TextColumn(width="large")},
    )
    if report.truncated:
        st.caption(f"Cut to fit the model's max length: {', '.join(report.truncated)}.")
    if choice.kind == "trained":
        record_section(choice, prompt, original, report)


def record_section(choice, prompt: str, original: str, report) -> None:
    """Keep these results in the model's rmcore.json and its model card, as `rmcore probe` does."""
    if st.button("Add these results to the model card", icon=":material/note_add:", key="record_probes",
                 help="The model's rmcore.json keeps its last 20 probed answers, and its card (README.md, shown on "
                      "Export) gets a table of each edit's mean change over them"):
        with user_errors("Cannot record the probes"):
            said = "; ".join(record_probes(choice.path(), report, prompt, original))
            st.success(f"{said[:1].upper()}{md(said[1:])}.", icon=":material/check:")


def file_section(choice) -> None:
    """Rewards for every response in a file: samples to label, best of n over many prompts."""
    st.subheader("Score a file")
    st.caption(
        "Rewards for every response of every instruction in a file: any format the Data page reads, or "
        "answers without ranks (prompt + responses, or one row per prompt + response). The download "
        "holds one JSON line per instruction with its rewards and best answer (as `rmcore score --data`)."
    )
    upload = kept_upload("File of instructions and answers", key="score_upload", type=settings.UPLOAD_TYPES,
                         max_upload_size=settings.upload_limit_mb())
    groups = None if upload is None else uploaded_groups(upload)
    if groups is None:
        return
    limit = st.number_input("Instructions to score at most", 1, len(groups), min(len(groups), 200),
                            key=f"score_limit_{upload.file_id}", persist_state="session")
    groups = groups[: int(limit)]
    key = (choice.key, upload.file_id, len(groups))
    responses = sum(len(g.responses) for g in groups)
    if st.button(f"Score {count(len(groups), 'instruction')} ({count(responses, 'answer')})", key="score_file",
                 icon=":material/play_arrow:"):
        with user_errors("Scoring failed"):
            bar = st.progress(0.0, text="loading the model")
            model = loaded(choice)
            records = list(scored_records(model, groups, on_progress=lambda done: bar.progress(
                done / len(groups), text=f"{done} of {len(groups)} instructions")))
            bar.empty()
            st.session_state["score_file_result"] = (key, records)
    stored = st.session_state.get("score_file_result")
    if stored is not None and stored[0] == key:
        scored_section(stored[1], upload.name)


def uploaded_groups(upload) -> list | None:
    """The instructions and answers of an upload, or None with the reason shown."""
    raw = upload.getvalue()
    if len(raw) > settings.upload_limit_mb() * 2**20:
        st.error(f"{md(upload.name)}: the file is {len(raw) / 2**20:.1f} MB, over the "
                 f"{settings.upload_limit_mb()} MB upload limit", icon=":material/error:")
        return None
    try:
        return read_preferences_bytes(raw, upload.name, for_scoring=True).groups
    except DataError as exc:
        st.error(md(exc), icon=":material/error:")
        return None


def scored_section(records: list[dict], file_name: str) -> None:
    """The scored file as a table, and its JSON lines to download."""
    table = pd.DataFrame([{
        "instruction": " ".join(_last_user_turn(r["prompt"]).split())[:200],
        "K": len(r["responses"]),
        "best answer": r["responses"][r["best"]],
        "best reward": r["rewards"][r["best"]],
        "rewards": ", ".join(f"{x:+.3f}" for x in r["rewards"]),
    } for r in records])
    st.dataframe(table, hide_index=True, key="scored_table",
                 column_config={"instruction": st.column_config.TextColumn(width="medium"),
                                "best answer": st.column_config.TextColumn(width="medium"),
                                "best reward": st.column_config.NumberColumn(format="%+.3f")})
    st.download_button(
        "Download the scored JSON lines",
        data="".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
        file_name=f"{file_name.split('.')[0]}-scored.jsonl",
        mime="application/jsonl",
        icon=":material/download:",
        key="download_scored",
    )


def _last_user_turn(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")


page()
