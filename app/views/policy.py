"""Best-of-n & RLHF: put the reward model to work on a policy, and watch where it starts to be gamed."""

from __future__ import annotations

import streamlit as st

from app import lesson, policy_charts, resources, settings, state, waiting
from app.jobs import JobBusy, manager
from app.live_panel import LivePanel, clear_button
from app.policy_jobs import PolicyJob, PolicyJobRequest
from app.resources import ModelChoice
from app.ui import duration, fmt, md, pick_model, user_errors
from app.wording import limit_summary
from rmcore.data import demo_data_path
from rmcore.data.prompts import read_prompts, unique_prompts
from rmcore.policy.best_of_n import bon_figure, curve_from_records, score_proxy_and_gold
from rmcore.policy.rlhf import RLHFConfig, split_prompts
from rmcore.policy.sampling import sample

PROMPT_SOURCES = ("demo instructions", "the loaded data's prompts", "type them")
GOODHART = (
    "**What the curves mean.** The reward model is a *proxy* for what people prefer. Picking the best of n "
    "samples, or fine-tuning the policy toward the reward, raises the proxy reward by construction: that curve "
    "always rises. Whether the answers really get better shows on a second, independent judge (the *gold* "
    "model, never optimised): as long as gold rises with the proxy, the policy is improving; when gold flattens "
    "or falls while the proxy keeps climbing, the policy has found what the proxy over-rates (longer answers, "
    "flattery, repetition). That is Goodhart's law: *when a measure becomes a target, it ceases to be a good "
    "measure.* The KL from the starting policy says how far the policy has moved to get there: best-of-n costs "
    "exactly log n - (n-1)/n nats, and RLHF reports the KL it measured on held-out prompts."
)


def prompts_from(source: str) -> list:
    if source == PROMPT_SOURCES[0]:
        return read_prompts(demo_data_path())
    if source == PROMPT_SOURCES[1]:
        data = state.get_data()
        return unique_prompts([g.prompt for g in data.groups]) if data is not None else []
    typed = st.session_state.get("policy_typed", "")
    return [line.strip() for line in typed.splitlines() if line.strip()]


def pick_models():
    left, right = st.columns(2)
    with left:
        proxy = pick_model("Reward model (the proxy that picks and is optimised)", key="policy_rm",
                           include_untrained=False)
    others = [e.name for e in settings.list_models(reward_only=True) if proxy is None or e.name != proxy.name]
    names = ["(none)", *others]
    with right:
        gold = st.selectbox("Gold model (an independent judge, optional)", names, key="policy_gold",
                            persist_state="session",
                            help="A second reward model, trained on other data, that only judges. It reveals "
                                 "when the proxy is being gamed.")
    return proxy, None if gold == "(none)" else gold


def prompt_picker() -> list:
    data_loaded = state.get_data() is not None
    source = st.radio("Prompts", PROMPT_SOURCES, horizontal=True, key="policy_source", persist_state="session",
                      captions=["the demo set's instructions", "load data on the Data page" if not data_loaded
                                else "each prompt of the loaded data once", "one instruction per line"])
    if source == PROMPT_SOURCES[2]:
        st.text_area("Instructions, one per line", key="policy_typed", persist_state="session", height=120,
                     placeholder="How do I boil an egg?\nExplain why the sky is blue.")
    prompts = prompts_from(source)
    st.caption(f"{len(prompts)} prompts available.")
    return prompts


# ----------------------------------------------------------------------------- best-of-n


def bon_section(proxy, gold_name: str | None, prompts: list) -> None:
    st.subheader("Best-of-n curve")
    st.write("Sample N answers per prompt with the policy, score them, and compute for every n <= N the expected "
             "reward of the best-of-n pick exactly (all subsets of the N samples, no resampling noise).")
    c1, c2, c3 = st.columns(3)
    count = c1.number_input("Prompts to sample", 1, max(1, len(prompts)), min(4, max(1, len(prompts))),
                            key="bon_prompts", persist_state="session")
    n = c2.selectbox("Samples per prompt (N)", [4, 8, 16, 32], index=1, key="bon_n", persist_state="session")
    max_new = c3.selectbox("Max new tokens", [32, 48, 64, 96], index=1, key="bon_max_new", persist_state="session")
    if st.button("Sample and draw the curve", type="primary", icon=":material/show_chart:", key="bon_run",
                 disabled=not prompts or proxy is None):
        with user_errors("Best-of-n failed"):
            run_bon(proxy, gold_name, prompts[: int(count)], int(n), int(max_new))
    result = st.session_state.get("bon_result")
    if result:
        show_bon(result)


def run_bon(proxy, gold_name: str | None, prompts: list, n: int, max_new: int) -> None:
    generator = resources.generator(settings.generator_model())
    bar = st.progress(0.0, text=f"Sampling {n} answers to each of {len(prompts)} prompts…")
    sampling = waiting.TimeLeft()

    def sampled(done: float, total: int) -> None:  # at every token: a share of the prompts
        share = done / max(1, total)
        bar.progress(min(1.0, share), text=f"Sampling {n} answers per prompt: {done:.1f} of {total} prompts"
                     + sampling.text(share, most=True) + f" (answers stop at {max_new} tokens, or sooner)")

    groups = sample(generator.model, generator.tokenizer, prompts, n, max_new, 1.0, seed=0, on_progress=sampled)
    records = [{"prompt": p, "responses": [s.text for s in g], "num_tokens": [s.num_tokens for s in g],
                "hit_limit": [s.hit_limit for s in g]} for p, g in zip(prompts, groups)]
    bar.progress(0.0, text="Loading the reward models…")
    gold_model = resources.reward_model(ModelChoice("trained", gold_name)) if gold_name else None
    proxy_model = resources.reward_model(proxy)
    scoring = waiting.TimeLeft()

    def scored(done: float, total: int) -> None:
        share = done / max(1, total)
        bar.progress(min(1.0, share), text=f"Scoring the answers: {done:.0f} of {total} prompts" + scoring.text(share))

    proxy_rewards, gold_rewards = score_proxy_and_gold(records, proxy_model, gold_model, on_progress=scored)
    bar.empty()
    curve = curve_from_records(records, proxy_rewards, gold_rewards)
    st.session_state["bon_result"] = {"records": records, "proxy": proxy_rewards, "gold": gold_rewards,
                                      "curve": curve, "gold_name": gold_name, "max_new": max_new}


def limit_note(result: dict) -> None:
    """How many answers, and how many of the picks, stopped at the token limit (as `rmcore sample` says)."""
    said = limit_summary(result["records"], result["proxy"], result.get("max_new"))
    if said is None:
        return
    kind, text = said
    if kind == "warning":
        st.warning(text, icon=":material/content_cut:")
    else:
        st.caption(text)


def show_bon(result: dict) -> None:
    curve = result["curve"]
    limit_note(result)
    st.plotly_chart(bon_figure(curve), key="bon_curve")
    st.caption(f"{curve.prompts} prompts x {curve.samples_per_prompt} samples. Gain is in standard deviations of "
               "one sample's reward (proxy and gold each in their own); bars are standard errors over prompts.")
    st.dataframe(policy_charts.bon_table(curve.rows()), hide_index=True, key="bon_table")
    with st.expander("The best and the worst answer of each prompt, by the proxy"):
        for i, record in enumerate(result["records"]):
            pair = policy_charts.best_and_random(record, result["proxy"][i], result["gold"][i] if result["gold"]
                                                 else None)
            st.markdown(f"**{md(pair['prompt'])}**")
            left, right = st.columns(2)
            for column, label in ((left, "best"), (right, "worst")):
                item = pair[label]
                extra = f", gold {fmt(item['gold'])}" if item["gold"] is not None else ""
                column.caption(f"{label}: reward {fmt(item['reward'])}{extra}")
                column.text(item["text"] or "(empty)")


# ----------------------------------------------------------------------------- RLHF job


def rlhf_section(proxy, gold_name: str | None, prompts: list, busy: bool) -> None:
    st.subheader("Fine-tune the policy (rejection sampling)")
    st.write("Rounds of: sample n answers to each training prompt, keep the reward model's favourite, fine-tune "
             "the policy on those (LoRA). Held-out prompts measure the reward, the KL to the starting policy and "
             "the answer length after each round. On a CPU keep it small: a round takes minutes.")
    c1, c2, c3, c4 = st.columns(4)
    count = c1.number_input("Prompts (a third held out)", 3, max(3, len(prompts)), min(12, max(3, len(prompts))),
                            key="rlhf_prompts", persist_state="session")
    rounds = c2.number_input("Rounds", 1, 10, 1, key="rlhf_rounds", persist_state="session")
    n = c3.selectbox("n (best of)", [2, 4, 8, 16], index=1, key="rlhf_n", persist_state="session")
    max_new = c4.selectbox("Max new tokens", [24, 48, 64, 96], index=1, key="rlhf_max_new", persist_state="session")
    with st.expander("More options"):
        a1, a2, a3 = st.columns(3)
        lr = a1.selectbox("Learning rate", [1e-4, 3e-4, 1e-3], index=1, key="rlhf_lr",
                          persist_state="session", format_func=lambda v: f"{v:g}")
        kl_coef = a2.number_input("KL coefficient (beta)", 0.0, 10.0, 0.05, 0.01, key="rlhf_kl",
                                  persist_state="session",
                                  help="Picks maximise reward - beta x log(pi/pi_ref): a pick the policy already "
                                       "over-prefers counts for less")
        eval_samples = a3.number_input("Answers per held-out prompt", 1, 8, 2, key="rlhf_eval_samples",
                                       persist_state="session")
    name = st.text_input("Name of the new policy", key="rlhf_name",
                         persist_state="session", max_chars=80, placeholder=unused_policy_name())
    running = manager().running()
    mine_busy = busy and isinstance(running, PolicyJob) and running.owner == state.session_id()
    if running is not None and not isinstance(running, PolicyJob):
        st.info(f"A reward model is training on this server (**{md(running.snapshot().model_name)}**): one job "
                "runs at a time, so fine-tuning can start when it ends.", icon=":material/hourglass:")
    if st.button("Fine-tuning…" if mine_busy else "Start fine-tuning", type="primary", icon=":material/play_arrow:",
                 key="rlhf_start", disabled=busy or proxy is None or len(prompts) < 2):
        with user_errors("Not started"):
            start_job(proxy, gold_name, prompts[: int(count)], int(rounds), int(n), int(max_new), float(lr),
                      float(kl_coef), int(eval_samples), settings.clean_model_name(name) or unused_policy_name())


def unused_policy_name(base: str = "policy-rs") -> str:
    name, n = base, 1
    while settings.model_path(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def start_job(proxy, gold_name, prompts, rounds, n, max_new, lr, kl_coef, eval_samples, name) -> None:
    train_prompts, eval_prompts = split_prompts(prompts, 0.33, 0)
    config = RLHFConfig(
        reward_model=str(settings.model_path(proxy.name)), policy=settings.generator_model(), method="rs",
        gold_model=str(settings.model_path(gold_name)) if gold_name else None, rounds=rounds, n=n,
        max_new_tokens=max_new, lr=lr, kl_coef=kl_coef, eval_samples=eval_samples, sft_epochs=2,
    )
    config.check()
    request = PolicyJobRequest(config, train_prompts, eval_prompts, settings.model_path(name), name)
    try:
        manager().start(request, state.session_id())
    except JobBusy as exc:
        st.warning(f"Not started: {md(exc)}.", icon=":material/hourglass:")
        return
    st.session_state.pop("rlhf_name", None)
    st.rerun()


def progress_bar(snap) -> tuple[float, str]:
    """The live panel's bar: what the run is doing, its time so far and left."""
    text = snap.phase
    if snap.active:
        text += f" · {duration(snap.elapsed_s)} elapsed" + (f" · ETA {duration(snap.eta_s)}" if snap.eta_s else "")
    return snap.progress, text


def numbers(snap) -> None:
    """The live panel's held-out results (changes since the first evaluation) and curves."""
    if not snap.evals:
        return
    first, last = snap.evals[0], snap.evals[-1]
    cols = st.columns(4)
    cols[0].metric("Held-out reward", fmt(last.get("reward_mean")),
                   delta=fmt(last["reward_mean"] - first["reward_mean"]) if len(snap.evals) > 1 else None)
    cols[1].metric("Gold reward", fmt(last.get("gold_mean")),
                   delta=fmt(last["gold_mean"] - first["gold_mean"]) if len(snap.evals) > 1
                   and "gold_mean" in last else None)
    cols[2].metric("KL to the start", fmt(last.get("kl")), help="nats, measured on held-out samples")
    cols[3].metric("Answer length", fmt(last.get("length_mean"), 1),
                   delta=fmt(last["length_mean"] - first["length_mean"], 1) if len(snap.evals) > 1 else None)
    st.plotly_chart(policy_charts.rlhf_curves(snap.evals), key="rlhf_curves")


def finished(snap) -> None:
    """The owner's run has ended: its held-out answers before and after, and Clear."""
    if snap.status == "stopped" and not snap.before_after:
        st.caption("Stopped before the end of a round: the held-out answers after training come with the "
                   "evaluation at the end of each round.")
    show_before_after(snap.before_after)
    clear_button("rlhf_forget", "Hide this finished run (the policy stays saved)")


def heading(text: str) -> None:
    st.markdown(f"#### {text}")


PANEL = LivePanel(
    kind=PolicyJob,
    doing="Fine-tuning",
    what="Fine-tuning",
    polling_key="rlhf_polling",
    stop_label="Stop (keeps a checkpoint and the policy so far)",
    stop_key="rlhf_stop",
    bar=progress_bar,
    numbers=numbers,
    finished=finished,
    heading=heading,
    saved_hint=" (download it on Export)",
)


def show_before_after(rows: list[dict]) -> None:
    if not rows:
        return
    st.markdown("#### Held-out answers before and after")
    for row in rows:
        prompt = row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
        st.markdown(f"**{md(prompt)}**")
        left, right = st.columns(2)
        for column, when in ((left, "before"), (right, "after")):
            gold = f", gold {fmt(row.get(f'gold_{when}'))}" if f"gold_{when}" in row else ""
            column.caption(f"{when}: reward {fmt(row[f'reward_{when}'])}{gold}, {row[f'tokens_{when}']} tokens")
            column.text(row[when] or "(empty)")


def with_your_models() -> None:
    """Best-of-n and fine-tuning with the user's own reward models (the lesson needs none)."""
    proxy, gold_name = pick_models()
    if proxy is None:
        st.info(f"No trained reward model yet in the models folder ({settings.models_dir()}). Train one first, "
                "or run the ready over-optimisation lesson below.", icon=":material/info:")
        st.page_link("views/train.py", label="Go to Train", icon=":material/model_training:")
        return
    with user_errors():
        prompts = prompt_picker()
    busy = manager().running() is not None  # one job per server, of either kind
    tab_bon, tab_rlhf = st.tabs(["Best-of-n curve", "Fine-tune (RLHF)"])
    with tab_bon:
        bon_section(proxy, gold_name, prompts)
    with tab_rlhf:
        rlhf_section(proxy, gold_name, prompts, busy)
        PANEL.show(busy)


def page() -> None:
    st.title("Best-of-n & RLHF")
    st.info(GOODHART, icon=":material/lightbulb:")
    with_your_models()
    st.divider()
    lesson.section()


page()
