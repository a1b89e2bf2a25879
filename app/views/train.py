"""Train: pick a base model and mode, see how long it will take, run in the background with live curves."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import charts, resources, settings, state
from app.jobs import JobBusy, JobRequest, TrainingJob, manager, resumable, resume_request
from app.live_panel import LivePanel, clear_button
from app.ui import duration, fmt, md, user_errors
from app.wording import (
    budget_text,
    budget_words,
    count,
    held_out_delta,
    held_out_help,
    phase_times,
    plan_lines,
    progress_bar,
    refusal_text,
)
from rmcore.data import split_groups
from rmcore.training.config import (
    APP_DEFAULT_TIME_BUDGET_MIN,
    APP_TIME_BUDGETS_MIN,
    AUTO_TOP_LR,
    DEFAULT_LR,
    MODES,
    TrainConfig,
    default,
    help_text,
)
from rmcore.training.estimate import estimate_training_time, plan_for

LEARNING_RATES = [
    "default",
    1e-6,
    3e-6,
    1e-5,
    3e-5,
    1e-4,
    2e-4,
    5e-4,
    1e-3,
    2e-3,
    5e-3,
    1e-2,
    2e-2,
    5e-2,
    1e-1,
]
MODE_HELP = {
    "auto": "head mode first; with a time budget, then the top blocks from its solution when a pass fits, "
            "kept only if better on the held-out prompts",
    "head": "only the reward neuron learns; the trunk runs once (fast, a good first try)",
    "lora": "small adapters in every layer plus the neuron (slower, learns more)",
    "full": "every weight learns (slowest; needs the most memory)",
}


def base_model_options() -> dict[str, str]:
    """name -> label: the default base model, then model folders in the project's models folder."""
    options = {settings.base_model(): settings.base_model_label()}
    for entry in settings.list_models():
        kind = "trained reward model: training continues from it" if entry.is_reward_model else "base model"
        options[f"models/{entry.name}"] = f"models/{entry.name} ({kind})"
    return options


def unused_name(base: str) -> str:
    """`base`, or base-2, base-3, ...: the first name no model folder has yet."""
    base = settings.clean_model_name(base) or "reward-model"
    name, n = base, 1
    while settings.model_path(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def resolve_base(option: str) -> str:
    """The value TrainConfig gets: the default base as is, a models-folder entry as its checked path."""
    if option.startswith("models/"):
        return str(settings.model_path(option.removeprefix("models/")))
    return option


def settings_form(data: state.LoadedData, busy: bool) -> tuple[TrainConfig, bool]:
    """The form's TrainConfig, and whether it may start (False when the plan says nothing useful fits)."""
    options = base_model_options()
    left, right = st.columns([3, 2], gap="large")
    with left:
        base = st.selectbox(
            "Base model",
            list(options),
            format_func=options.get,
            key="train_base",
            persist_state="session",
            help="The embedded SmolLM2-135M-Instruct, or a model folder in the project's models "
            f"folder ({settings.models_dir()})",
        )
        mode = st.radio(
            "Mode", MODES, index=MODES.index(default("mode")), horizontal=True, key="train_mode",
            persist_state="session",
            captions=[MODE_HELP[m] for m in MODES],
        )
        budget_min = time_budget_input()
        schedule = schedule_inputs(mode, budget_min is not None)
        held_out = st.slider(
            "Held-out fraction",
            min_value=0.0,
            max_value=0.5,
            value=default("eval_fraction"),
            step=0.05,
            key="train_held_out",
            persist_state="session",
            help="Share of instructions kept out of training to measure accuracy on unseen prompts",
        )
        with st.expander("More options"):
            more = more_options(mode)
        name = st.text_input(
            "Name of the new model",
            key="train_name",
            persist_state="session",
            max_chars=80,
            placeholder=f"{unused_name(f'{data.stem}-{mode}')} (a new folder in the models folder)",
        )
    config = TrainConfig(
        model=resolve_base(base),
        mode=mode,
        eval_fraction=float(held_out),
        time_budget_s=60.0 * budget_min if budget_min else 0.0,
        **schedule,
        **more,
    )
    with right:
        fits = estimate_box(data, config, busy)
    st.session_state["train_model_name"] = settings.clean_model_name(name) or unused_name(
        f"{data.stem}-{mode}"
    )
    return config, fits


def time_budget_input() -> int | None:
    """The "How long" choice: minutes of a time budget (the default way to train), or None for epochs."""
    h1, h2 = st.columns([3, 2], vertical_alignment="bottom")
    how = h1.radio(
        "How long",
        ["time budget", "epochs"],
        horizontal=True,
        key="train_how",
        persist_state="session",
        help="A time budget fits the number of steps to the minutes you give, from the measured time per "
        "step, and ends on time with a finished, evaluated model. Epochs run a fixed number of passes.",
    )
    if how != "time budget":
        return None
    return h2.selectbox(
        "Time budget",
        APP_TIME_BUDGETS_MIN,
        index=APP_TIME_BUDGETS_MIN.index(APP_DEFAULT_TIME_BUDGET_MIN),
        format_func=lambda m: f"{m} min",
        key="train_budget",
        persist_state="session",
        help="The whole run, loading and saving included",
    )


def schedule_inputs(mode: str, budgeted: bool) -> dict:
    """Epochs, learning rate, batch size and max length, as TrainConfig fields."""
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input(
        "Epochs",
        min_value=1,
        max_value=500,
        value=TrainConfig().epochs,  # the default mode's
        key="train_epochs",
        persist_state="session",
        help=help_text("epochs") + ". Head mode: cheap after the first."
        + (" With a time budget: at most this many." if budgeted else ""),
    )
    lr = c2.selectbox(
        "Learning rate",
        LEARNING_RATES,
        key="train_lr",
        persist_state="session",
        format_func=lambda v: "default" if v == "default" else f"{v:g}",
        help=f"The default for {mode} mode, {TrainConfig(mode=mode).learning_rate():g}, suits most runs. Defaults: "
        + ", ".join(f"{m} {v:g}" for m, v in DEFAULT_LR.items()) + f" (auto: the head's, then {AUTO_TOP_LR:g} for "
        "its top blocks)",
    )
    batch = c3.number_input(
        "Batch size",
        min_value=1,
        max_value=256,
        value=default("batch_size"),
        key="train_batch",
        persist_state="session",
        help=help_text("batch_size"),
    )
    max_length = c4.number_input(
        "Max length",
        min_value=32,
        max_value=4096,
        value=default("max_length"),
        step=32,
        key="train_max_length",
        persist_state="session",
        help=help_text("max_length") + ", then the end of the response",
    )
    return {"epochs": int(epochs), "lr": None if lr == "default" else float(lr), "batch_size": int(batch),
            "max_length": int(max_length)}


def more_options(mode: str) -> dict:
    """Seed, LoRA rank, reward centering and trainable blocks, as TrainConfig fields."""
    a1, a2, a3, a4 = st.columns(4, vertical_alignment="bottom")
    seed = a1.number_input("Seed", min_value=0, max_value=2**31 - 1, value=default("seed"), key="train_seed",
                           persist_state="session")
    lora_r = a2.number_input("LoRA rank", min_value=1, max_value=256, value=default("lora_r"),
                             key="train_lora_r",
                                 persist_state="session", disabled=mode != "lora", help=help_text("lora_r"))
    center = a3.number_input(
        "Reward centering",
        min_value=0.0,
        max_value=1.0,
        value=default("center_coefficient"),
        step=0.01,
        key="train_center",
        persist_state="session",
        help=help_text("center_coefficient"),
    )
    top_blocks = a4.number_input("Trainable blocks", min_value=0, max_value=1024, value=default("trainable_layers"),
                                 key="train_trainable_layers", persist_state="session", disabled=mode == "head",
                                 help=help_text("trainable_layers"))
    return {"seed": int(seed), "lora_r": int(lora_r), "center_coefficient": float(center),
            "trainable_layers": int(top_blocks) if mode != "head" else 0}



def estimate_box(data: state.LoadedData, config: TrainConfig, busy: bool) -> bool:
    """What the run will do and how long it takes, measured here; False when nothing useful fits the budget.
    While a job runs nothing is timed (it would slow the job down): a plan or estimate made before is shown."""
    train_groups, eval_groups = split_groups(data.active(), config.eval_fraction, config.seed)
    with st.container(border=True):
        st.markdown("**Before you start**")
        result = measured(data, config, train_groups, eval_groups, measure=not busy)
        if result is None:
            st.write(plan_text(train_groups, eval_groups, config))
            if busy:
                st.caption("The plan and the time estimate wait until the running job ends (timing now would slow "
                           "it down).")
            return True
        if config.time_budget_s:
            return plan_box(result)
        st.write(plan_text(train_groups, eval_groups, config))
        st.metric(
            "Estimated time",
            duration(result.seconds),
            help="Timed on one batch of your data here, scaled to every token the run will see",
        )
        st.caption(result.describe())
    return True


def plan_text(train_groups: list, eval_groups: list, config: TrainConfig) -> str:
    """What the run will train on, and for how long, in one sentence."""
    comparisons = sum(len(g.pairs()) for g in train_groups)
    steps = -(-len(train_groups) // config.batch_size)
    return (
        f"{count(len(train_groups), 'instruction')} to train on ({count(comparisons, 'comparison')}), "
        f"{len(eval_groups)} held out; "
        + (f"as many steps as fit in {budget_text(config.time_budget_s)}, at most {count(config.epochs, 'epoch')}"
           f" of {count(steps, 'step')}." if config.time_budget_s
           else f"{count(config.epochs, 'epoch')} of {count(steps, 'step')}.")
    )


def plan_box(plan) -> bool:
    """The plan a run with this budget will follow (rmcore.training.estimate.plan_for, from the speed measured
    here): how many of the comparisons it sees, in which mode, how large an evaluation; or that nothing fits."""
    if not plan.fits:
        st.error(f"Nothing useful fits: {refusal_text(plan)}.", icon=":material/timer_off:")
        return False
    st.markdown("\n".join(f"- {line}" for line in plan_lines(plan)))
    planned = plan.spent_s + sum(plan.seconds.values())
    st.metric("Planned time", f"{duration(planned)} of {budget_text(plan.budget_s)}",
              help="Measured on a batch of your data here. The run measures again when it starts and re-plans as "
                   "it goes: a busier machine gets fewer comparisons, never a longer run.")
    phases = {"loading and measuring": plan.spent_s, **plan.seconds}
    everything = plan.train_prompts >= plan.train_prompts_total and plan.eval_prompts >= plan.eval_prompts_total
    st.caption(" · ".join(f"{name} {duration(s)}" for name, s in phases.items() if s >= 0.5) + "."
               + ("" if everything else f" Every comparison and the whole held-out set would take about "
                  f"{duration(plan.needed_s)} here."))
    return True



def settings_key(data: state.LoadedData, config: TrainConfig) -> tuple:
    """What a plan or time estimate depends on."""
    return (data.fingerprint(), config.model, config.mode, config.epochs, config.batch_size, config.max_length,
            config.eval_fraction, config.seed, config.lora_r, config.trainable_layers, config.time_budget_s)


def measured(data: state.LoadedData, config: TrainConfig, train_groups: list, eval_groups: list,
             measure: bool = True):
    """rmcore's plan of a budgeted run (rmcore.training.budget.Plan), or its time estimate of a run of epochs
    (TimeEstimate), from the speed measured once per data and settings in this session (not at all unless
    `measure`); None, with the reason shown, when it cannot be made (it is advice: it never blocks training,
    a plan that fits nothing aside)."""
    key = settings_key(data, config)
    cached = st.session_state.get("train_estimate")
    if cached is not None and cached[0] == key:
        return cached[1]
    if not measure:
        return None
    try:
        with st.spinner("Timing one batch on this machine…"):
            rates = resources.step_rates(config.model, config.mode, config.max_length, config.batch_size,
                                         config.lora_r, config.trainable_layers, train_groups)
            tokenizer = resources.tokenizer(config.model)
            if config.time_budget_s:
                result = plan_for(config, train_groups, eval_groups, rates=rates, tokenizer=tokenizer)
                expected = {"loading": rates.load_s, **result.seconds}
            else:
                result = estimate_training_time(config, train_groups, eval_groups, rates=rates, tokenizer=tokenizer)
                expected = dict(result.parts)
    except Exception as exc:  # advice; never block training on it
        st.caption(f"No {'plan' if config.time_budget_s else 'time estimate'} ({type(exc).__name__}: {md(exc)})")
        return None
    st.session_state["train_estimate"] = (key, result)
    st.session_state["train_expected"] = (key, expected)
    return result


def expected_phases(data: state.LoadedData, config: TrainConfig) -> dict[str, float]:
    """The seconds of each phase the plan or estimate shown expects (what the bar of a phase without progress
    of its own counts against), or nothing when none was made for these settings."""
    key = settings_key(data, config)
    stored = st.session_state.get("train_expected")
    return dict(stored[1]) if stored is not None and stored[0] == key else {}


def start(data: state.LoadedData, config: TrainConfig) -> None:
    name = st.session_state["train_model_name"]
    out_dir = settings.model_path(name)
    train_groups, eval_groups = split_groups(data.active(), config.eval_fraction, config.seed)
    summary = data.summary().to_dict()
    request = JobRequest(
        config,
        train_groups,
        eval_groups,
        out_dir,
        name,
        data.name,
        {
            "file": data.name,
            "format": summary["format"],
            "prompts": summary["prompts"],
            "comparisons": summary["comparisons"],
            "edited_groups": len(data.edited),
            "excluded_groups": len(data.excluded),
        },
        expected_s=expected_phases(data, config),
    )
    try:
        manager().start(request, state.session_id())
    except JobBusy as exc:
        st.warning(f"Not started: {md(exc)}. Its progress is shown below.", icon=":material/hourglass:")
        return
    st.session_state.pop("train_name", None)  # the next run gets a fresh default name
    st.session_state["train_polling"] = True
    st.rerun()


def resume(model_dir: Path) -> None:
    """Start a job that continues the stopped run saved in `model_dir`."""
    with user_errors("Not resumed"):
        try:
            manager().start(resume_request(model_dir), state.session_id())
        except JobBusy as exc:
            st.warning(f"Not resumed: {md(exc)}.", icon=":material/hourglass:")
            return
        st.session_state["train_polling"] = True
        st.rerun()


def stopped_runs_box(busy: bool) -> None:
    """Stopped runs in the models folder that can be continued (also after a server restart)."""
    runs = [entry for entry in settings.list_models() if resumable(settings.model_path(entry.name))]
    job = manager().current(TrainingJob)
    if job is not None:  # the panel below already offers the current job's resume
        runs = [entry for entry in runs if settings.model_path(entry.name) != Path(job.snapshot().out_dir)]
    if not runs:
        return
    with st.expander(f"Continue a stopped run ({len(runs)})"):
        name = st.selectbox("Stopped run", [entry.name for entry in runs], key="train_resume_pick",
                            persist_state="session")
        if st.button("Resume", key="resume_stopped", disabled=busy,
                     help="Continues from its checkpoint with the data and settings it was started with"):
            resume(settings.model_path(name))



def plan_caption(snap) -> None:
    """The plan the run made at its start, above its bars."""
    if snap.plan:
        st.caption(f"Plan: {md(budget_words(snap.plan, snap.budget_s))}")


def numbers(snap) -> None:
    """The live panel's tiles (smoothed as the curves are, not one noisy step) and curves."""
    if snap.steps:
        last, last_eval = snap.last, snap.last_eval
        cols = st.columns(5)
        trend = {key: charts.smooth([s[key] for s in snap.steps if s.get(key) is not None]) or [None]
                 for key in ("loss", "accuracy", "margin")}
        cols[0].metric("Train loss", fmt(trend["loss"][-1]), help="Smoothed over recent steps, as the curve")
        cols[1].metric("Train accuracy", fmt(trend["accuracy"][-1]), help="Smoothed over recent steps, as the curve")
        cols[2].metric("Held-out accuracy", fmt(last_eval.get("eval_accuracy")), delta=held_out_delta(last_eval),
                       delta_color="off", delta_arrow="off", help=held_out_help(last_eval))
        cols[3].metric(
            "Reward margin", fmt(trend["margin"][-1]),
            help="Mean r_winner - r_loser over a batch's pairs, smoothed over recent steps"
        )
        cols[4].metric("Comparisons / s", fmt(last.get("comparisons_per_s"), 0))
    if snap.steps or snap.evals:
        st.plotly_chart(charts.training_curves(snap.steps, snap.evals), key="curves")
    if snap.phase_seconds and not snap.active:
        st.caption(phase_times(snap.phase_seconds, snap.budget_s))



def finished(snap) -> None:
    """The owner's run has ended: resume it, use its model, or clear it from the page."""
    if snap.status == "stopped" and resumable(Path(snap.out_dir)):
        if st.button("Resume this run", icon=":material/resume:", key="resume_job",
                     help="Continue from the checkpoint with the same data and settings, to the model an "
                     "uninterrupted run would have trained"):
            resume(Path(snap.out_dir))
    c1, c2, c3, c4 = st.columns(4)
    if snap.saved:
        c1.page_link("views/probe.py", label="Probe it", icon=":material/science:")
        c2.page_link("views/evaluate.py", label="Evaluate it", icon=":material/analytics:")
        c3.page_link("views/export.py", label="Export it", icon=":material/download:")
    clear_button("forget_job", "Hide this finished run here" + (" (the model stays saved)" if snap.saved else ""),
                 where=c4)


def heading(text: str) -> None:
    st.divider()
    st.subheader(text)


PANEL = LivePanel(
    kind=TrainingJob,
    doing="Training",
    what="Training",
    polling_key="train_polling",
    stop_label="Stop (keeps a checkpoint)",
    stop_key="stop_job",
    bar=progress_bar,
    numbers=numbers,
    finished=finished,
    heading=heading,
    intro=plan_caption,
    watching="This job was started in another browser session. One training job runs on this server at a "
    "time: you can watch it here, and start your own when it ends.",
)


def page() -> None:
    st.title("Train")
    data = state.get_data()
    running = manager().running()
    busy = running is not None  # one job per server, of either kind
    if data is None:
        st.info("Load data on the Data page first, or use the demo set.", icon=":material/info:")
        if st.button("Use the demo set", key="train_demo"):
            state.set_data(state.load_demo())
            st.rerun()
    elif not data.active():
        st.warning("The data has no comparison left to learn from (see the Data page).")
    else:
        with user_errors():
            config, fits = settings_form(data, busy)
            mine = isinstance(running, TrainingJob) and running.owner == state.session_id()
            if busy and not isinstance(running, TrainingJob):
                st.info(f"A policy is being fine-tuned on this server (**{md(running.snapshot().model_name)}**, "
                        "Best-of-n & RLHF page): one job runs at a time, so training can start when it ends.",
                        icon=":material/hourglass:")
            label = "Training…" if mine else "Start training"
            if st.button(
                label,
                type="primary",
                icon=":material/play_arrow:",
                key="start_training",
                disabled=busy or not fits,
                help="Another job is running: one job per server" if busy and not mine
                else None if fits else "Nothing useful fits this time budget: choose a longer one",
            ):
                with user_errors("Not started"):
                    config.check()
                    start(data, config)
    stopped_runs_box(busy)
    PANEL.show(busy)


page()
