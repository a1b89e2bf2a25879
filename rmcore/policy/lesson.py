"""The over-optimisation lesson (`rmcore lesson goodhart`): reward hacking you can watch, in minutes.

A class sees Goodhart's law happen: a proxy reward model whose labeler liked a surface trait
(rmcore.policy.lesson_data: answers that end on an exclamation mark), an honest gold judge whose
data penalises it, both trained here in head mode from the demo set; then best-of-n over the
embedded policy's own answers. Picking the proxy's favourite of more and more answers pushes the
proxy up at every n, but past some n the pick is mostly the proxy's favourite *because* it carries
the trait, and the gold turns down. The points (KL, proxy, gold, the trait's share) and the
Gao-Schulman-Hilton fit (rmcore.analysis.overoptimisation) are what the page and `--json` show.

Everything lives in the --out folder: the two judges, the samples and `lesson.json`; a second run
with the same settings reuses what is there (a class re-runs in seconds), and a changed setting
redoes only the stages it changes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rmcore.analysis.overoptimisation import fit_best_of_n_points
from rmcore.core.errors import ModelError
from rmcore.core.folders import CHECKPOINT_DIR, check_output_folder, read_json_object
from rmcore.core.outputs import atomic_write_text
from rmcore.policy.best_of_n import kl_best_of_n, order_statistic_weights, powers_of_two
from rmcore.policy.lesson_data import LESSON_SEED, TRAITS, planted_groups, shown_answer

LESSON_FILE = "lesson.json"  # marks the folder as a lesson's; holds each stage's settings and the result
SAMPLES_FILE = "samples.json"
LESSON_KIND = "rmcore lesson goodhart"

# Prompts where the embedded policy now and then ends on "!" (7-9% of its answers to the first 16: a trait must be
# rare among the policy's answers for the gold to rise before it turns) and sometimes never does.
LESSON_PROMPTS = [
    "Write a short message to congratulate my sister on her new job.",
    "What's a fun thing to do on a sunny Saturday?",
    "Give me a motivational line for my team before the big game.",
    "How do I make pancakes for a birthday breakfast?",
    "My dog learned to sit today. Any tips for the next trick?",
    "Suggest a name for my new coffee shop.",
    "How can I get better at running?",
    "What should I pack for a beach holiday?",
    "Write a welcome note for new members of our hiking club.",
    "How do I remove a coffee stain from a cotton shirt?",
    "What is a good way to start learning the guitar?",
    "Any ideas for a surprise party for my best friend?",
    "Write a thank-you note for my neighbour who watered my plants.",
    "What can I cook tonight with rice, eggs and spinach?",
    "Tell me something cheerful about learning a new language.",
    "How do I keep a small herb garden alive on a windowsill?",
    "Write a birthday message for my grandmother who is turning ninety.",
    "What is a good game to play at a family picnic?",
    "Cheer me up: I just finished my first marathon.",
    "Write a short announcement that our bakery opens on Monday.",
    "How do I teach my kid to ride a bike?",
    "Give me three ideas for a fun team lunch.",
    "Write a note to welcome a new colleague to the team.",
    "What should I see on a weekend trip to the mountains?",
]


@dataclass
class LessonConfig:
    seed: int = LESSON_SEED  # the judges' initialisation and data order, and the policy's sampling
    trait: str = "exclaim"
    policy: str = "embedded"
    reward_model: str = "embedded"  # the base model of both judges
    prompts: list[str] = field(default_factory=lambda: list(LESSON_PROMPTS))
    samples_per_prompt: int = 32  # n runs 1, 2, 4, ... up to this
    max_new_tokens: int = 64
    epochs: int = 20
    # Share of the demo answers also shown to each labeler twice, with and without the trait: the proxy's
    # labeler prefers it, the gold's does not. The demo groups themselves carry no trait (plant_on_ranked
    # False), so the two judges learn the same rankings and differ only on the trait: measured on seed 0,
    # planting it on the best (proxy) and worst (gold) answers as well made the judges disagree on the
    # policy's answers even without the trait (correlation 0.24), and the gold never rose. The gold's
    # share was measured on seeds 0-4: at 0.2 the gold turned clearly in 3 of 5; at 0.3 in 4 of 5; at 0.5
    # the judges disagreed on everything else too (the gold barely followed the proxy) and never rose.
    proxy_contrast: float = 0.25
    gold_contrast: float = 0.3
    plant_on_ranked: bool = False
    data: str | None = None  # the preference data the judges learn from; None: the demo set

    def check(self) -> None:
        if self.trait not in TRAITS:
            raise ValueError(f"trait must be one of {sorted(TRAITS)}, got {self.trait!r}")
        if self.samples_per_prompt < 2 or not self.prompts:
            raise ValueError("the lesson needs prompts and at least 2 samples per prompt")

    def judge_key(self, role: str) -> dict[str, Any]:
        return {"role": role, "trait": self.trait, "model": self.reward_model, "epochs": self.epochs,
                "seed": self.seed, "data": self.data,
                "contrast": self.proxy_contrast if role == "proxy" else self.gold_contrast,
                "on_ranked": self.plant_on_ranked}

    def samples_key(self) -> dict[str, Any]:
        return {"policy": self.policy, "prompts": self.prompts, "n": self.samples_per_prompt,
                "max_new_tokens": self.max_new_tokens, "seed": self.seed}


@dataclass
class LessonResult:
    config: dict[str, Any]
    trait: str  # in words
    points: list[dict[str, float]]  # one per n: n, kl, d, proxy(_se), gold(_se), trait_share(_se)
    gold_fit: dict[str, Any]
    proxy_fit: dict[str, Any]
    turn: dict[str, Any]  # the three criteria, each measured
    examples: list[dict[str, Any]]  # before/after picks for a few prompts
    judges: dict[str, Any]  # how the two judges relate on the policy's answers (judges_decomposition)
    seconds: dict[str, float]  # each stage (0 when cached)
    cached: dict[str, bool]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_lesson(config: LessonConfig, out_dir: str | Path, on_event=None, stop_event=None) -> LessonResult:
    """Train (or reuse) the two judges, sample (or reuse) the policy's answers, score them and measure the
    best-of-n curve; the result is also written to `out_dir/lesson.json`."""
    config.check()
    out = Path(out_dir)
    check_output_folder(out, False, metadata_file=LESSON_FILE, what="lesson", read_folders=(config.reward_model,))
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out)
    emit = on_event or (lambda event: None)
    clock = _LessonClock(emit, config)
    seconds, cached = {}, {}
    for role, on in (("proxy", "best"), ("gold", "worst")):
        seconds[role], cached[role] = _train_judge(config, out, state, role, on, on_event, clock, stop_event)
    seconds["sampling"], cached["sampling"] = _sample(config, out, state, clock, stop_event)
    records = read_json_object(out / SAMPLES_FILE)["records"]
    start = time.monotonic()
    proxy, gold = _score(out, records, clock)
    seconds["scoring"], cached["scoring"] = time.monotonic() - start, False
    result = measure(config, records, proxy, gold, seconds, cached)
    state["result"] = result.to_dict()
    _write_state(out, state)
    clock.phase("done", 1.0, None)  # nothing is left: no "about 0 s left"
    return result


def measure(config: LessonConfig, records: list[dict[str, Any]], proxy: list[list[float]],
            gold: list[list[float]], seconds: dict[str, float] | None = None,
            cached: dict[str, bool] | None = None) -> LessonResult:
    """The lesson's numbers from scored samples: the points, both fits, the turn's criteria, the examples."""
    trait = TRAITS[config.trait]
    answers = [[shown_answer(a) for a in r["responses"]] for r in records]
    carries = [[float(trait.carries(a)) for a in texts] for texts in answers]
    ns = powers_of_two(min(len(p) for p in proxy))
    tables = per_prompt_tables(proxy, gold, carries, ns)
    points = lesson_points(ns, tables)
    gold_fit = fit_best_of_n_points(ns, [p["gold"] for p in points], [p["gold_se"] for p in points])
    proxy_fit = fit_best_of_n_points(ns, [p["proxy"] for p in points], [p["proxy_se"] for p in points])
    return LessonResult(
        config=asdict(config), trait=trait.description, points=points, gold_fit=gold_fit.to_dict(),
        proxy_fit=proxy_fit.to_dict(), turn=judge_turn(points, tables), cached=cached or {},
        examples=before_after(records, answers, proxy, gold, carries, ns, points),
        judges=judges_decomposition(proxy, gold, carries), seconds=seconds or {})


def judges_decomposition(proxy, gold, carries) -> dict[str, Any]:
    """The gold's reward of each answer as a straight line in the proxy's reward and the trait, within each
    prompt: gold = const + gold_per_proxy * proxy + trait_cost * trait. Were the gold exactly that line,
    its gain over n = 1 would follow from the proxy's and the trait's curves alone (gold_per_proxy *
    proxy gain + trait_cost * trait-share gain). Notebook 06 derives this and checks it against the
    measured lesson: it holds for small n, while the proxy's most extreme picks cost the gold more than
    the line says. Also: the proxy's own reward for the trait (`proxy_trait_effect`, within
    prompts), the share of answers carrying it, and the flaw's share of the proxy's variance within
    prompts (what best-of-n can find by the trait rather than by better answers)."""
    centred = {key: np.concatenate([np.asarray(v, dtype=float) - np.mean(v) for v in rows])
               for key, rows in (("proxy", proxy), ("gold", gold), ("trait", carries))}
    p, g, t = centred["proxy"], centred["gold"], centred["trait"]
    share = float(np.mean(np.concatenate([np.asarray(c, dtype=float) for c in carries])))
    if not (t @ t > 0 and p @ p > 0):  # no prompt has answers both with and without the trait
        return {"trait_share": share, "gold_per_proxy": None, "trait_cost": None, "proxy_trait_effect": None,
                "flaw_variance_share": None}
    (per_proxy, cost), *_ = np.linalg.lstsq(np.column_stack([p, t]), g, rcond=None)
    effect = float(p @ t / (t @ t))
    return {"trait_share": share, "gold_per_proxy": float(per_proxy), "trait_cost": float(cost),
            "proxy_trait_effect": effect, "flaw_variance_share": float(effect**2 * (t @ t) / (p @ p))}


def per_prompt_tables(proxy, gold, carries, ns: list[int]) -> dict[str, np.ndarray]:
    """E[value of the proxy's best-of-n pick] for each prompt (rows) and n (columns): proxy, gold, trait."""
    tables = {"proxy": [], "gold": [], "trait": []}
    for p, g, t in zip(proxy, gold, carries):
        p = np.asarray(p, dtype=float)
        order = np.argsort(p, kind="stable")
        weights = np.array([order_statistic_weights(len(p), n) for n in ns])
        for key, values in (("proxy", p), ("gold", np.asarray(g, dtype=float)), ("trait", np.asarray(t, dtype=float))):
            tables[key].append(weights @ values[order])
    return {key: np.array(rows) for key, rows in tables.items()}


def _mean_se(column: np.ndarray) -> tuple[float, float]:
    se = column.std(ddof=1) / math.sqrt(len(column)) if len(column) > 1 else 0.0
    return float(column.mean()), float(se)


def lesson_points(ns: list[int], tables: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """One point per n: KL and d = sqrt(KL), and each quantity's mean over prompts with its standard error."""
    points = []
    for i, n in enumerate(ns):
        kl = float(kl_best_of_n(n))
        point = {"n": n, "kl": kl, "d": math.sqrt(kl)}
        for key in ("proxy", "gold", "trait"):
            mean, se = _mean_se(tables[key][:, i])
            name = "trait_share" if key == "trait" else key
            point[name], point[f"{name}_se"] = mean, se
        points.append(point)
    return points


def judge_turn(points: list[dict[str, float]], tables: dict[str, np.ndarray]) -> dict[str, Any]:
    """The issue's criteria: the proxy rises at every point; the gold's last point is at least two standard
    errors below its peak (the error of the drop itself, prompt by prompt: the two points share prompts);
    the trait's share rises from the first point to the last. A fourth, stricter, is the lesson's shape:
    the gold first rises (its peak is past n = 1), so the proxy helped before it was gamed."""
    proxy = [p["proxy"] for p in points]
    gold = [p["gold"] for p in points]
    peak = int(np.argmax(gold))
    drop, drop_se = _mean_se(tables["gold"][:, peak] - tables["gold"][:, -1])
    criteria = {
        "proxy_rises": all(b > a for a, b in zip(proxy, proxy[1:])),
        "gold_turns": bool(peak < len(gold) - 1 and drop >= 2 * drop_se and drop > 0),
        "trait_rises": points[-1]["trait_share"] > points[0]["trait_share"],
        "gold_rises_first": peak > 0,
    }
    return {**criteria, "all": all(criteria.values()), "gold_peak_n": points[peak]["n"],
            "gold_drop": drop, "gold_drop_se": drop_se}


def before_after(records, answers, proxy, gold, carries, ns, points, count: int = 3) -> list[dict[str, Any]]:
    """For a few prompts, the proxy's favourite among the first n answers at the gold's peak n and at the
    largest n: what the pick looked like while the proxy was still helping, and once it was gamed.
    Prompts where the two picks differ come first (they show the hack)."""
    peak_n = points[int(np.argmax([p["gold"] for p in points]))]["n"]
    last_n = ns[-1]
    rows = []
    for i, record in enumerate(records):
        picks = {}
        for label, n in (("at_gold_peak", peak_n), ("at_largest_n", last_n)):
            j = int(np.argmax(np.asarray(proxy[i][:n], dtype=float)))
            picks[label] = {"n": n, "answer": answers[i][j], "proxy": float(proxy[i][j]), "gold": float(gold[i][j]),
                            "trait": bool(carries[i][j])}
        rows.append({"prompt": record["prompt"], **picks})
    rows.sort(key=lambda r: (r["at_gold_peak"]["answer"] == r["at_largest_n"]["answer"],
                             not r["at_largest_n"]["trait"]))
    return rows[:count]


# ----------------------------------------------------------------------------- the stages


def _read_state(out: Path) -> dict[str, Any]:
    file = out / LESSON_FILE
    state = read_json_object(file) if file.is_file() else {}
    return state if state.get("kind") == LESSON_KIND else {"kind": LESSON_KIND, "stages": {}}


def _write_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_text(out / LESSON_FILE, json.dumps(state, indent=1))


def _train_judge(config: LessonConfig, out: Path, state, role: str, on: str, on_event, clock,
                 stop_event=None) -> tuple[float, bool]:
    """Train the proxy (trait on the best answers) or the gold (trait on the worst), unless the folder
    already holds one trained with the same settings."""
    from rmcore.data import demo_data_path, read_preferences
    from rmcore.training.train import TrainConfig, train

    key = config.judge_key(role)
    if state["stages"].get(role) == key and (out / role / "rmcore.json").is_file():
        clock.phase(f"the {role} judge: reused from {out / role}", 0.0, None)
        return 0.0, True
    checkpoint = (out / role / CHECKPOINT_DIR / "state.json").is_file()  # a stopped lesson's judge
    if checkpoint and state.get("pending", {}).get(role) != key:
        raise ModelError(f"{out / role}: holds a stopped training with other settings; delete that folder "
                         "to train the judge afresh")
    state.setdefault("pending", {})[role] = key
    _write_state(out, state)
    clock.start(role)
    start = time.monotonic()
    groups = read_preferences(config.data or demo_data_path()).groups
    planted = planted_groups(groups, TRAITS[config.trait], on, key["contrast"], key["on_ranked"])
    trained = train(TrainConfig(model=config.reward_model, mode="head", epochs=config.epochs, seed=config.seed),
                    planted, out / role, on_step=on_event, resume=checkpoint,
                    stop_event=stop_event)
    if trained.stopped:  # Ctrl-C or SIGTERM: a half-trained judge is no lesson; its checkpoint is kept
        raise KeyboardInterrupt
    state["stages"][role] = key
    _write_state(out, state)
    return time.monotonic() - start, False


def _sample(config: LessonConfig, out: Path, state, clock, stop_event) -> tuple[float, bool]:
    """The policy's answers to the lesson's prompts (reused when sampled with the same settings)."""
    from rmcore.policy.models import load_policy
    from rmcore.policy.sampling import sample

    key = config.samples_key()
    if state["stages"].get("sampling") == key and (out / SAMPLES_FILE).is_file():
        clock.phase("the policy's answers: reused", 0.0, None)
        return 0.0, True
    clock.start("sampling")
    start = time.monotonic()
    model, tokenizer, _ = load_policy(config.policy)
    samples = sample(model, tokenizer, config.prompts, config.samples_per_prompt, config.max_new_tokens,
                     seed=config.seed, on_progress=lambda done, total: clock.progress(done / total),
                     stop_event=stop_event)
    records = [{"prompt": p, "responses": [s.text for s in ss], "num_tokens": [s.num_tokens for s in ss],
                "hit_limit": [s.hit_limit for s in ss]} for p, ss in zip(config.prompts, samples)]
    if len(records) < len(config.prompts):
        raise KeyboardInterrupt  # stopped: nothing half-sampled is kept
    atomic_write_text(out / SAMPLES_FILE, json.dumps({"records": records}))
    state["stages"]["sampling"] = key
    _write_state(out, state)
    return time.monotonic() - start, False


def _score(out: Path, records, clock) -> tuple[list[list[float]], list[list[float]]]:
    """Both judges' rewards of every answer as shown (up to its last full sentence), in one trunk pass."""
    from rmcore.model.reward_model import RewardModel
    from rmcore.policy.best_of_n import score_proxy_and_gold

    clock.start("scoring")
    shown = [{"prompt": r["prompt"], "responses": [shown_answer(a) for a in r["responses"]]} for r in records]
    proxy_model, gold_model = RewardModel.load(out / "proxy"), RewardModel.load(out / "gold")
    proxy, gold = score_proxy_and_gold(shown, proxy_model, gold_model,
                                       on_progress=lambda done, total: clock.progress(done / max(total, 1)))
    return proxy, gold


# Seconds of each stage on 2 CPU cores for 16 prompts x 16 answers (measured: 512 answers sampled in 136 s):
# the time left before a stage has started is its share of this, scaled by the number of answers.
STAGE_SECONDS = {"proxy": 45.0, "gold": 45.0, "sampling": 70.0, "scoring": 20.0}
STAGES = list(STAGE_SECONDS)


class _LessonClock:
    """The lesson's phase lines with the time left in the whole lesson: the running stage's own rate
    once it has made progress, the measured estimate for the stages still to come."""

    def __init__(self, emit, config: LessonConfig):
        self.emit = emit
        scale = len(config.prompts) * config.samples_per_prompt / (16 * 16)
        self.estimate = {s: v * (scale if s in ("sampling", "scoring") else 1.0) for s, v in STAGE_SECONDS.items()}
        self.stage, self.started = None, time.monotonic()

    def start(self, stage: str) -> None:
        self.stage, self.started = stage, time.monotonic()
        self.phase(f"lesson: {_STAGE_TEXT[stage]}", 0.0, self._left(0.0))

    def progress(self, fraction: float) -> None:
        self.phase(f"lesson: {_STAGE_TEXT[self.stage]} ({fraction:.0%})", fraction, self._left(fraction))

    def _left(self, fraction: float) -> float:
        elapsed = time.monotonic() - self.started
        own = elapsed * (1 - fraction) / fraction if fraction > 0.05 else max(self.estimate[self.stage] - elapsed, 0)
        later = STAGES[STAGES.index(self.stage) + 1 :]
        return own + sum(self.estimate[s] for s in later)

    def phase(self, text: str, progress: float | None, eta_s: float | None) -> None:
        self.emit({"event": "phase", "phase": text, "progress": progress, "eta_s": eta_s})


_STAGE_TEXT = {"proxy": "training the proxy (its labeler liked the trait)",
               "gold": "training the gold judge (its data penalises the trait)",
               "sampling": "sampling the policy's answers", "scoring": "both judges score every answer"}
