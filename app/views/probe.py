"""Probe: score 2 to 9 candidate answers, see P[i][j] = sigma(r_i - r_j), per-token rewards, best of n."""

from __future__ import annotations

import hashlib

import streamlit as st

from app import charts, resources, settings
from app.ui import pick_model, user_errors

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
    prompt = st.text_area("Instruction", key="probe_prompt", height=80)
    ids = st.session_state["probe_ids"]
    st.write(f"**Candidates** ({len(ids)}; between {MIN_CANDIDATES} and {MAX_CANDIDATES})")
    for n, cid in enumerate(ids):
        left, right = st.columns([12, 1], vertical_alignment="center")
        left.text_area(f"Candidate #{n + 1}", key=f"cand_{cid}", height=68)
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
        n = c1.slider("n", 2, MAX_CANDIDATES, 4, key="gen_n")
        max_new = c2.slider("Max new tokens", 16, 256, 80, 16, key="gen_tokens")
        temperature = c3.slider("Temperature", 0.1, 1.5, 0.8, 0.1, key="gen_temperature")
        seed = c4.number_input("Seed", 0, 10**6, 0, key="gen_seed")
        if st.button(
            f"Generate {n} candidates",
            icon=":material/auto_awesome:",
            key="generate",
            disabled=not prompt.strip(),
        ):
            with (
                user_errors("Generation failed"),
                st.status(f"Sampling {n} answers…", expanded=False) as status,
            ):
                generator = resources.generator(settings.generator_model())
                texts = generator.sample(
                    prompt, n, max_new_tokens=max_new, temperature=temperature, seed=int(seed)
                )
                status.update(label=f"Sampled {n} answers", state="complete")
                pending = [t if t.strip() else "(empty answer)" for t in texts]
                st.session_state["probe_pending"] = pending
                st.session_state["probe_generated"] = tuple(pending)
                st.rerun()


def score(choice, prompt: str, candidates: list[str]):
    """Scores are remembered per session for the exact inputs, so reruns do not recompute them."""
    key = (choice.key, prompt, tuple(candidates))
    memo = st.session_state.setdefault("probe_memo", {})
    if key not in memo:
        with st.spinner("Scoring…"):
            memo.clear()
            memo[key] = resources.reward_model(choice).score(prompt, candidates)
    return memo[key]


def results_section(choice, prompt: str, candidates: list[str], numbers: list[int]) -> None:
    """`numbers` are the candidates' numbers in the form (empty ones are left out, not renumbered)."""
    model = resources.reward_model(choice)
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
    st.success(
        f"{'Best of ' + str(len(candidates)) + ': ' if generated else 'Highest reward: '}"
        f"candidate #{numbers[best]} (r = {result.rewards[best]:+.3f})",
        icon=":material/emoji_events:",
    )
    st.plotly_chart(charts.reward_bars(candidates, result.rewards, best, numbers), key="reward_bars")
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
    token_section(model, prompt, candidates, numbers, best)


def token_section(model, prompt: str, candidates: list[str], numbers: list[int], best: int) -> None:
    st.subheader("Reward token by token")
    st.caption(
        "The reward head applied after every token of one answer: the reward the model would give if the "
        "answer ended there. Bars show which tokens move it up (green) or down (red)."
    )
    index = st.selectbox(
        "Candidate",
        range(len(candidates)),
        index=best,
        # a new key when the candidates change: the trace then starts on the best one again
        key=f"trace_{hashlib.sha1(repr((prompt, candidates)).encode()).hexdigest()[:12]}",
        format_func=lambda i: f"#{numbers[i]}: {' '.join(candidates[i].split())[:80]}",
    )
    trace = model.token_rewards(prompt, candidates[index])
    st.plotly_chart(charts.token_trace(trace.tokens, trace.rewards), key="token_trace")


def page() -> None:
    st.title("Probe")
    st.write("Type an instruction and a few answers; the reward model gives each one number.")
    init_state()
    choice = pick_model(
        "Reward model",
        key="probe_model",
        help="Trained models in the project's models folder, newest first, or an untrained head",
    )
    prompt, candidates = inputs_section()
    generate_section(prompt)
    numbers = [n for n, c in enumerate(candidates, start=1) if c.strip()]
    filled = [candidates[n - 1] for n in numbers]
    if not prompt.strip() or len(filled) < MIN_CANDIDATES:
        st.info("Write an instruction and at least two non-empty candidates.", icon=":material/info:")
        return
    empty = [f"#{n}" for n in range(1, len(candidates) + 1) if n not in numbers]
    if empty:
        st.caption(f"Candidate{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                   f"{'are' if len(empty) > 1 else 'is'} empty and left out.")
    with user_errors("Cannot score"):
        results_section(choice, prompt, filled, numbers)


page()
