"""Held-out quality of a reward model trained in a fixed wall budget: rmcore's recipe against TRL's defaults.

    python bench/quality.py                   # 10 minutes per training on the 2-core CPU (about an hour in all)
    python bench/quality.py --budget 30m      # the issue's budget
    python bench/quality.py --smoke           # seconds, tiny random model (CI): checks the script, not quality

Data (read in place from ../shared/data): HH-RLHF helpful-base and harmless-base, and the OpenAssistant
ranked trees. Every set is split by prompt (the first user turn: an HH dialogue or an OASST tree never
has one part in training and another held out), deterministically, into a held-out test part, a
validation part (for choosing settings: bench/sweep.py) and the training part. Two trainings per trainer:
one on the HH training parts (helpful and harmless mixed), evaluated on both HH test parts, and one on
the OASST training part, evaluated on the OASST test part. Beside every accuracy: its binomial standard
error, the length-only baseline ("the longer answer wins") and the untrained start, on the same pairs.

The budget covers a whole training (loading, tokenizing, training, saving); held-out evaluation comes
after it, by the same code (`rmcore.analysis.evaluate`) for both trainers. rmcore fits its number of steps to the
budget from a measured step time (its own `time_budget_s` where the library has it, else the fit below) so
its learning-rate schedule ends decayed; TRL runs at its documented defaults and a TrainerCallback stops
it at the budget (what a TRL user with a time limit gets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trials import resolve_model  # noqa: E402  (bench/trials.py: 'tiny' built offline, else rmcore resolves)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
SET_FILES = {
    "helpful": DATA / "hh-rlhf" / "helpful-base-test.jsonl.gz",
    "harmless": DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz",
    "oasst": DATA / "oasst" / "en_100_tree.jsonl",
}
# Held-out test and validation comparisons wanted per set (whole prompts are taken until they are reached).
# OASST has 100 trees (~750 comparisons): 300 are held out for the test, no validation part (settings are
# chosen on HH), the rest trains.
SPLIT_SIZES = {"helpful": (300, 100), "harmless": (300, 100), "oasst": (300, 0)}
SMOKE_SPLIT_SIZES = {"helpful": (4, 2), "harmless": (4, 2), "oasst": (6, 0)}
# Sets no length can solve: each instruction's own answer against another instruction's answer of about the
# same length (bench/instruction_pairs.py), built from the parts of a set above. A reward that ignores the
# instruction scores 0.5 on them; so does "the longer answer wins", by construction.
MISMATCH = {"mismatch_helpful": "helpful", "mismatch_harmless": "harmless", "mismatch_oasst": "oasst"}
INSTRUCTION_TRAIN_PAIRS = 400  # the "400 such pairs", trained the app's default way (head mode)
# Trainings: name -> (training sets, evaluated sets).
TASKS = {"hh": (("helpful", "harmless"), ("helpful", "harmless")), "oasst": (("oasst",), ("oasst",)),
         "instruction": (("mismatch_helpful",), ("mismatch_harmless", "mismatch_oasst"))}
# What a short training can honestly deliver (issue 28): above the untrained start and length-only on HH, at
# least TRL's defaults at the same budget and precision; on OASST length-only + 0.03; 0.90 on the sets no
# length can solve, from other sources than the training pairs.
TARGETS = {"helpful": None, "harmless": None, "oasst": None, "mismatch_harmless": 0.90, "mismatch_oasst": 0.90}
LENGTH_MARGIN = {"helpful": 0.0, "harmless": 0.0, "oasst": 0.03}  # wanted: this much above length-only


# ----------------------------------------------------------------------------- the recipe


@dataclass
class Recipe:
    """What rmcore trains with: TrainConfig fields, None = the library's default (so the benchmark measures
    rmcore's defaults as they are; bench/sweep.py tries others on the validation split)."""

    mode: str = "full"
    lr: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    epochs: int | None = None  # > 1 trains on fewer distinct pairs in the same time
    center_coefficient: float | None = None
    lora_r: int | None = None  # LoRA alpha follows as 2 x r
    warmup_ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields

    def train_config(self, model: str, seed: int = 0):
        from rmcore import TrainConfig

        chosen = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        if self.lora_r is not None:
            chosen["lora_alpha"] = 2 * self.lora_r
        return TrainConfig(model=model, seed=seed, **chosen, **self.extra)

    def effective_max_length(self) -> int:
        from rmcore import TrainConfig

        return self.max_length or TrainConfig().max_length


# ----------------------------------------------------------------------------- data


@dataclass
class SetSplit:
    name: str
    train: list
    val: list
    test: list

    def sizes(self) -> dict[str, dict[str, int]]:
        return {part: {"prompts": len(groups), "comparisons": comparisons(groups)}
                for part, groups in (("train", self.train), ("val", self.val), ("test", self.test))}


def comparisons(groups) -> int:
    return sum(len(g.pairs()) for g in groups)


def split_key(group) -> str:
    """The first user turn: dialogues and OASST trees that start alike stay on one side of the split."""
    first = group.prompt[0]["content"] if group.prompt else ""
    return " ".join(first.split()).lower()


def split_by_prompt(name: str, groups, n_test: int, n_val: int, seed: int = 0) -> SetSplit:
    """Test, then validation, then training: whole prompts in a seeded hash order (stable across Pythons)."""
    by_key: dict[str, list] = {}
    for group in groups:
        if group.pairs():
            by_key.setdefault(split_key(group), []).append(group)
    order = sorted(by_key, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    parts: dict[str, list] = {"test": [], "val": [], "train": []}
    for key in order:
        part = ("test" if comparisons(parts["test"]) < n_test
                else "val" if comparisons(parts["val"]) < n_val else "train")
        parts[part].extend(by_key[key])
    return SetSplit(name, parts["train"], parts["val"], parts["test"])


def load_splits(names=tuple(SET_FILES), sizes: dict[str, tuple[int, int]] | None = None,
                seed: int = 0) -> dict[str, SetSplit]:
    """The splits of the named sets; a mismatch set's parts are built from its base set's same parts."""
    from instruction_pairs import mismatch_pairs

    from rmcore import read_preferences

    sizes = sizes or SPLIT_SIZES
    bases = sorted({MISMATCH.get(name, name) for name in names})
    splits = {name: split_by_prompt(name, read_preferences(SET_FILES[name]).groups, *sizes[name], seed=seed)
              for name in bases}
    for name in names:
        if name in MISMATCH:
            base = splits[MISMATCH[name]]
            splits[name] = SetSplit(name, *(mismatch_pairs(part, seed) for part in (base.train, base.val, base.test)))
            if name == "mismatch_helpful":
                splits[name].train = splits[name].train[:INSTRUCTION_TRAIN_PAIRS]
    return {name: splits[name] for name in names}


def mixed(groups_by_set: list[list], seed: int = 0) -> list:
    """The sets' groups interleaved in a seeded order, so any prefix is a fair mix of them."""
    everything = [g for groups in groups_by_set for g in groups]
    return sorted(everything, key=lambda g: hashlib.sha256(f"{seed}:{g.source}:{split_key(g)}".encode()).hexdigest())


# ----------------------------------------------------------------------------- statistics


def standard_error(accuracy: float | None, n: int) -> float | None:
    if accuracy is None or n <= 0:
        return None
    return math.sqrt(accuracy * (1 - accuracy) / n)


def length_baseline(groups) -> float | None:
    """Accuracy of "the longer answer wins" (in characters; an exact tie counts half) on the same pairs."""
    right = total = 0.0
    for group in groups:
        for w, l in group.pairs():
            a, b = len(group.responses[w]), len(group.responses[l])
            right += 1.0 if a > b else 0.5 if a == b else 0.0
            total += 1
    return right / total if total else None


def accuracy_row(summary: dict[str, Any], groups) -> dict[str, Any]:
    """Accuracy with its standard error, and on pairs of similar length (a length shortcut shows there)."""
    n = summary["comparisons"]
    matched = summary.get("length_controlled") or {}
    return {"accuracy": summary["accuracy"], "se": standard_error(summary["accuracy"], n), "comparisons": n,
            "length_matched": matched.get("accuracy"), "length_matched_se": matched.get("se"),
            "length_matched_comparisons": matched.get("comparisons"),
            "length_correlation": summary.get("length_correlation"), "mean_log_loss": summary.get("mean_log_loss")}


def evaluate_folder(model_dir: str, groups, max_length: int | None = None) -> dict[str, Any]:
    """Held-out accuracy of a saved model (or a base model: untrained, seeded head) by rmcore.analysis.evaluate."""
    from rmcore import RewardModel, evaluate

    model = RewardModel.load(model_dir, max_length=max_length)
    return accuracy_row(evaluate(model, groups, batch_size=8).summary, groups)


# ----------------------------------------------------------------------------- fitting a budget


def parse_duration(text: str) -> float:
    """'10m', '30m', '90s', '1h', '45' (seconds) -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10m, 90s, 1h)") from None


def now(clock: str) -> float:
    """Seconds on the budget's clock: "wall" (perf_counter) or "cpu" (this process's CPU time, which other
    jobs on a shared machine do not eat into; use it with one thread)."""
    return time.process_time() if clock == "cpu" else time.perf_counter()


def plan_groups(config, pool, loop_end: float, time_scale: float = 1.0,
                clock: str = "wall") -> tuple[list, dict[str, Any]]:
    """The prefix of `pool` that `config` trains on by `loop_end` (a time on `clock`; its epochs included),
    from one timed batch (the timing itself comes out of the time left).

    Full and LoRA cost train seconds per token x tokens x epochs; head mode costs one forward per token
    (the trunk features), its optimizer steps on the features being nearly free. `time_scale` corrects
    the one-batch timing by what earlier runs measured (their real / planned loop time).
    """
    from rmcore.data.encoding import encode_groups
    from rmcore.model.reward_model import load_tokenizer, resolve_model_path
    from rmcore.training.estimate import measure_rates

    wall, cpu = time.perf_counter(), time.process_time()
    rates = measure_rates(config, pool, sample_groups=config.batch_size)
    # clock "cpu": this process's CPU seconds; on a shared machine we got only this share of the wall time
    share = (time.process_time() - cpu) / max(1e-9, time.perf_counter() - wall) if clock == "cpu" else 1.0
    head = config.mode == "head"
    per_token = (rates.forward_s_per_token if head else rates.train_s_per_token * config.epochs) * share * time_scale
    tokenizer = load_tokenizer(resolve_model_path(config.model)[0])
    encoded = encode_groups(tokenizer, pool, config.max_length)
    seconds = max(0.0, loop_end - now(clock))  # no time left: still one batch (below)
    spent, chosen = 0.0, 0
    for group in encoded:
        cost = group.num_tokens * per_token
        if spent + cost > seconds and chosen:
            break
        spent += cost
        chosen += 1
    if chosen < min(config.batch_size, len(encoded)):  # at least one whole batch, even with no time left
        chosen = min(config.batch_size, len(encoded))
        spent = sum(g.num_tokens for g in encoded[:chosen]) * per_token
    if chosen == len(pool) and not head and spent > 0:
        # the whole pool fits: more passes over it fill the budget (small sets such as OASST)
        passes = max(1, int(seconds / spent))
        config.epochs *= passes
        spent *= passes
    elif chosen >= config.batch_size:
        chosen -= chosen % config.batch_size  # whole batches: the last step is not a runt
    return pool[:chosen], {"planned_loop_s": spent, "s_per_token": per_token, "cpu_share": share,
                           "load_s": rates.load_s,
                           "pool_exhausted": chosen == len(pool), "epochs": config.epochs}


# ----------------------------------------------------------------------------- trainings


def library_fits_budget() -> bool:
    """True once rmcore's own trainer reads TrainConfig.time_budget_s (until then the bench fits the steps)."""
    import inspect

    import rmcore.training.train

    return "time_budget_s" in inspect.getsource(rmcore.training.train)


def train_rmcore(recipe: Recipe, model: str, pool, budget_s: float, out_dir: Path, *, seed: int = 0,
                 time_scale: float = 1.0, fixed_overhead_s: float = 20.0, fit: str = "auto",
                 max_epochs: int = 10, clock: str = "wall", on_step=None) -> dict[str, Any]:
    """Train `recipe` on a prefix of `pool` that fits `budget_s` of wall time; the model is saved to `out_dir`.

    fit "rmcore": TrainConfig.time_budget_s (the library fits its steps); "bench": the prefix is planned
    here from one timed batch, less `fixed_overhead_s` for loading, tokenizing and saving; "auto": the
    library's where it has one.
    """
    from rmcore import train

    started, cpu_started = time.perf_counter(), time.process_time()
    config = recipe.train_config(model, seed)
    steps: list[dict[str, Any]] = []
    user_on_step = on_step

    def on_step(event: dict[str, Any]) -> None:
        if event.get("event") == "step":
            steps.append({**event, "cpu_time": time.process_time()})
        if user_on_step:
            user_on_step(event)

    if fit == "auto":
        fit = "rmcore" if library_fits_budget() and clock == "wall" else "bench"
    if fit == "rmcore":
        from rmcore.data import split_groups

        config.time_budget_s = budget_s
        config.epochs = max(config.epochs, max_epochs)  # the budget decides; small sets get more passes
        # as `rmcore train` and the app do: a share of the prompts held out (--mode auto compares on them)
        train_part, held_out = split_groups(pool, config.eval_fraction, config.seed)
        result = train(config, train_part, out_dir, eval_groups=held_out, on_step=on_step)
        saved = json.loads((Path(out_dir) / "rmcore.json").read_text())
        plan = {"fitted_by": "rmcore time_budget_s", "mode_trained": saved.get("mode"), "auto": saved.get("auto"),
                "phase_seconds": saved.get("phase_seconds")}
    else:
        groups, plan = plan_groups(config, pool, now(clock) + budget_s - fixed_overhead_s, time_scale, clock)
        plan["fitted_by"] = "bench plan_groups"
        result = train(config, groups, out_dir, on_step=on_step)
    loop_s = steps[-1]["elapsed_s"] if steps else 0.0
    # CPU seconds of the loop: first to last step, plus one step's worth for the first
    loop_cpu_s = ((steps[-1]["cpu_time"] - steps[0]["cpu_time"]) * len(steps) / (len(steps) - 1)
                  if len(steps) > 1 else None)
    seen = sum(s.get("comparisons", 0) for s in steps)
    # Progressive validation: in the first epoch each batch is scored before the model steps on it, so the
    # training accuracy of the second half of epoch 1 is an out-of-sample estimate that costs nothing.
    first_epoch = [s for s in steps if s.get("epoch", 0) <= 1 and s.get("comparisons")]
    late = first_epoch[len(first_epoch) // 2:]
    late_n = sum(s["comparisons"] for s in late)
    progressive = sum(s["accuracy"] * s["comparisons"] for s in late) / late_n if late_n else None
    return {"trainer": "rmcore", "recipe": asdict(recipe), "steps": result.steps, "total_steps": result.total_steps,
            "stopped": result.stopped, "comparisons_seen": seen, "loop_s": loop_s, "loop_cpu_s": loop_cpu_s,
            "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu_started, "clock": clock,
            **plan,
            "final_train_loss": steps[-1].get("loss") if steps else None,
            "progressive_accuracy": progressive, "progressive_comparisons": late_n,
            "step_metrics": [{k: s.get(k) for k in ("step", "loss", "accuracy", "comparisons", "lr", "elapsed_s")}
                             for s in steps]}


def trl_rows(tokenizer, groups, max_length: int | None) -> list[dict[str, Any]]:
    """Every (chosen, rejected) pair of the groups as TRL's pre-tokenized rows (rmcore's chat rendering)."""
    from rmcore.data.encoding import encode_groups

    encoded = encode_groups(tokenizer, groups, max_length or 10**9)
    return [{"chosen_ids": e.prompt_ids + e.response_ids[w], "rejected_ids": e.prompt_ids + e.response_ids[l]}
            for e in encoded for w, l in e.pairs()]


def train_trl(model: str, pool, budget_s: float, out_dir: Path, *, seed: int = 0,
              max_steps: int | None = None, clock: str = "wall") -> dict[str, Any]:
    """TRL's RewardTrainer at its documented defaults (lr 1e-4, 8 pairs a step, 3 epochs, max length 1024,
    linear decay, no warm-up), full fine-tune, stopped by a callback when `budget_s` is spent.

    Two departures, both only in TRL's favour on a CPU: gradient checkpointing off (its default on costs
    ~30% time, saves memory we do not need) and float32 (its default bf16 is very slow on these CPUs).
    """
    import warnings

    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    from rmcore.model.device import autodetect_device
    from rmcore.model.reward_model import load_sequence_classifier, resolve_model_path, save_reward_model

    warnings.filterwarnings("ignore", category=FutureWarning)
    started, cpu_started = time.perf_counter(), time.process_time()
    device = autodetect_device()
    classifier, tokenizer, _ = load_sequence_classifier(resolve_model_path(model)[0], seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = RewardConfig(output_dir=tmp, bf16=device == "cuda", use_cpu=device == "cpu",
                              gradient_checkpointing=False, logging_strategy="no", save_strategy="no",
                              eval_strategy="no", report_to="none", disable_tqdm=True, seed=seed, data_seed=seed,
                              **({"max_steps": max_steps} if max_steps else {}))
        rows = trl_rows(tokenizer, pool, config.max_length)
        progress: dict[str, Any] = {"steps": 0}
        deadline = now(clock) + budget_s - (time.perf_counter() - started if clock == "wall" else
                                                 time.process_time() - cpu_started)

        class StopAtBudget(TrainerCallback):
            """Ends training when the next step would not finish inside the budget (saving comes after)."""

            def on_step_end(self, args, state, control, **kwargs):
                at = now(clock)
                progress.setdefault("first", at)
                progress["steps"] = state.global_step
                step_s = (at - progress["first"]) / max(1, state.global_step - 1) if state.global_step > 1 else 0
                if at + step_s + 10 > deadline:
                    control.should_training_stop = True

        trainer = RewardTrainer(model=classifier, args=config, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, callbacks=[StopAtBudget()])
        trainer.remove_callback(PrinterCallback)
        loop_start = time.perf_counter()
        trainer.train()
        loop_s = time.perf_counter() - loop_start
        model_out = trainer.accelerator.unwrap_model(trainer.model).float()
        save_reward_model(model_out, tokenizer, out_dir, {"trainer": "trl", "config": {"max_length": 1024}})
        planned = trainer.state.max_steps
    return {"trainer": "trl", "steps": progress["steps"], "planned_steps": planned,
            "comparisons_seen": progress["steps"] * config.per_device_train_batch_size, "pairs_available": len(rows),
            "lr": config.learning_rate, "loop_s": loop_s, "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu_started, "clock": clock}


def quiet(threads: int = 0) -> None:
    """No progress bars or info logs from transformers; `threads` torch threads (0 = its default)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if threads:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- one training per process


def split_sizes(smoke: bool) -> dict[str, tuple[int, int]]:
    return SMOKE_SPLIT_SIZES if smoke else SPLIT_SIZES


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one model (or take the base model, trainer "untrained") and evaluate it on the task's test parts."""
    quiet(spec.get("threads", 0))
    clock = spec.get("clock", "wall")
    train_sets, eval_sets = TASKS[spec["task"]]
    splits = load_splits(sorted(set(train_sets) | set(eval_sets)), split_sizes(spec["smoke"]), spec["seed"])
    pool = mixed([splits[name].train for name in train_sets], spec["seed"])
    if spec["smoke"]:
        pool = pool[:24]  # seconds, not minutes: the smoke run checks the script, not quality
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rm"
        if spec["trainer"] == "rmcore":
            record = train_rmcore(Recipe(**spec["recipe"]), spec["model"], pool, spec["budget_s"], out,
                                  seed=spec["seed"], fit=spec.get("fit", "auto"), clock=clock)
            model_dir, max_length = str(out), None
        elif spec["trainer"] == "trl":
            record = train_trl(spec["model"], pool, spec["budget_s"], out, seed=spec["seed"], clock=clock)
            model_dir, max_length = str(out), None
        else:
            record = {"trainer": "untrained"}
            model_dir, max_length = spec["model"], Recipe(**spec["recipe"]).effective_max_length()
        started = time.perf_counter()
        record["test"] = {name: evaluate_folder(model_dir, splits[name].test, max_length) for name in eval_sets}
        record["eval_s"] = time.perf_counter() - started
    record["train_prompts_available"] = len(pool)
    return record


def run_in_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    """A fresh process per training, so each gets the whole memory and none inherits another's threads."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec),
                               "--worker-out", str(out_file)], env=env, cwd=str(ROOT))
        if proc.returncode != 0:
            return failed_record(spec, proc.returncode)
        return json.loads(out_file.read_text())


def failed_record(spec: dict[str, Any], returncode: int) -> dict[str, Any]:
    """A training whose worker died: the report goes on and names it (-9 is the kernel's out-of-memory kill
    on Linux, the usual cause), rather than losing the trainings that finished."""
    why = "killed (SIGKILL: out of memory?)" if returncode == -9 else f"exit status {returncode}"
    print(f"{spec['trainer']} on {spec['task']}: the worker failed: {why}", file=sys.stderr, flush=True)
    _, eval_sets = TASKS[spec["task"]]
    return {"trainer": spec["trainer"], "failed": why,
            "test": {name: {"accuracy": None, "se": None} for name in eval_sets}}


# ----------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def build_rows(results: dict[str, dict[str, Any]], splits_info: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per held-out set: each trainer's accuracy and standard error, length-only, untrained start."""
    rows = []
    for task, (_, eval_sets) in TASKS.items():
        if task not in results:
            continue
        for name in eval_sets:
            row = {"set": name, "task": task, "comparisons": splits_info[name]["test"]["comparisons"],
                   "length_only": splits_info[name]["length_only"], "target": TARGETS.get(name)}
            for trainer, record in results[task].items():
                row[trainer] = record["test"][name]["accuracy"]
                row[f"{trainer}_se"] = record["test"][name]["se"]
                row[f"{trainer}_length_matched"] = record["test"][name].get("length_matched")
            rows.append(row)
    return rows


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 28's targets: above the untrained start, above length-only (+ a margin per set), at least TRL,
    and an accuracy to reach on the sets no length can solve."""
    checks = []
    for row in rows:
        acc = row.get("rmcore")
        if acc is None:
            continue
        name = row["set"]
        if row.get("target") is not None:
            checks.append({"what": f"{name}: accuracy", "value": acc, "wanted": f">= {row['target']}",
                           "met": acc >= row["target"]})
        if name in LENGTH_MARGIN and row.get("length_only") is not None:
            margin = LENGTH_MARGIN[name]
            checks.append({"what": f"{name}: above length-only", "value": acc - row["length_only"],
                           "wanted": f"> {margin}" if not margin else f">= {margin}",
                           "met": acc - row["length_only"] > margin if not margin else
                           acc - row["length_only"] >= margin})
        if row.get("untrained") is not None:
            checks.append({"what": f"{name}: above the untrained start", "value": acc - row["untrained"],
                           "wanted": "> 0", "met": acc > row["untrained"]})
        if row.get("trl") is not None:
            checks.append({"what": f"{name}: at least TRL", "value": acc - row["trl"], "wanted": ">= 0",
                           "met": acc >= row["trl"]})
    return checks


def _with_se(row: dict[str, Any], trainer: str) -> str:
    if row.get(trainer) is None:
        return ""
    return f"{row[trainer]:.3f} ± {row[f'{trainer}_se']:.3f}"


def markdown(report: dict[str, Any]) -> str:
    head = report["header"]
    lines = [f"### {head['date']} · commit {head['commit']}{' (dirty)' if head['dirty'] else ''} · "
             f"budget {head['budget_s'] / 60:g} min ({head['clock']} clock, threads {head['threads'] or 'default'}) "
             f"per training · model {head['model']} · {head['machine']}",
             "", f"rmcore recipe: `{json.dumps(report['recipe'])}`; TRL: RewardTrainer defaults "
             "(lr 1e-4, 8 pairs/step, 3 epochs, max length 1024; gradient checkpointing off, float32), "
             "stopped at the budget.", "",
             "| held-out set | comparisons | rmcore | rmcore, length-matched pairs | TRL | untrained start | "
             "length-only | target |", "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        cells = [_with_se(row, trainer) for trainer in ("rmcore",)]
        cells.append(_fmt(row.get("rmcore_length_matched")))
        cells += [_with_se(row, trainer) for trainer in ("trl", "untrained")]
        target = f">= {row['target']}" if row.get("target") is not None else "see below"
        lines.append(f"| {row['set']} | {row['comparisons']} | {' | '.join(cells)} | "
                     f"{_fmt(row['length_only'])} | {target} |")
    lines += ["", "± = binomial standard error. Trainings (steps, comparisons seen, loop and wall seconds):", ""]
    for task, trainers in report["results"].items():
        for trainer, record in trainers.items():
            if trainer == "untrained":
                continue
            if record.get("failed"):
                lines.append(f"- {task} / {trainer}: failed, {record['failed']}")
                continue
            lines.append(f"- {task} / {trainer}: {record.get('steps')} steps, {record.get('comparisons_seen')} "
                         f"comparisons seen (of {record.get('train_prompts_available')} training prompts), "
                         f"loop {_fmt(record.get('loop_s'), 0)} s, wall {_fmt(record.get('wall_s'), 0)} s")
    lines += ["", "| target | value | wanted | met |", "|---|---|---|---|"]
    for check in report["targets"]:
        lines.append(f"| {check['what']} | {check['value']:+.3f} | {check['wanted']} | "
                     f"{'yes' if check['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def git_info() -> dict[str, Any]:
    from report import git_info as commit_and_dirty  # bench/report.py: the benchmark's run context

    info = commit_and_dirty()
    return {**info, "commit": info["commit"] or "nogit"}


def machine() -> str:
    import platform

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=parse_duration, default=600.0,
                        help="wall time per training (loading, tokenizing, training, saving): 10m, 30m, 90s")
    parser.add_argument("--tasks", default="hh,oasst", help="hh (train helpful+harmless), oasst, instruction "
                        "(train on 400 own-vs-other-answer pairs from HH helpful, test on HH harmless and OASST)")
    parser.add_argument("--trainers", default="rmcore,trl", help="rmcore, trl (the untrained start always runs)")
    parser.add_argument("--recipe", default="{}", help="JSON overriding fields of rmcore's recipe (Recipe)")
    parser.add_argument("--model", default="embedded", help="embedded, tiny (random, offline) or a folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit", choices=("auto", "rmcore", "bench"), default="auto",
                        help="who fits rmcore's steps to the budget: its TrainConfig.time_budget_s (auto: where "
                             "the library has it) or this script's one-batch timing")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="the budget's clock: wall time (a laptop to yourself) or this process's CPU time "
                             "(a shared machine; use with --threads 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per training (0 = torch's default)")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny splits, seconds: checks the script")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per training (tests)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    if args.smoke:
        args.model = "tiny" if args.model == "embedded" else args.model
    workdir = Path(tempfile.mkdtemp(prefix="rmcore-quality-"))
    model = resolve_model(args.model, workdir)  # bench/trials.py
    recipe = asdict(Recipe(**json.loads(args.recipe)))
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
    trainers = ["untrained"] + [t for t in args.trainers.split(",") if t]
    names = sorted({n for t in tasks for part in TASKS[t] for n in part})
    splits = load_splits(names, split_sizes(args.smoke), args.seed)
    splits_info = {n: {**splits[n].sizes(), "length_only": length_baseline(splits[n].test)} for n in names}
    results: dict[str, dict[str, Any]] = {}
    for task in tasks:
        results[task] = {}
        for trainer in trainers:
            spec = {"task": task, "trainer": trainer, "model": model, "recipe": recipe, "budget_s": args.budget,
                    "seed": args.seed, "smoke": args.smoke, "fit": args.fit, "clock": args.clock,
                    "threads": args.threads}
            print(f"{task} / {trainer} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            results[task][trainer] = run_worker(spec) if args.in_process else run_in_subprocess(spec)
            print(f"{task} / {trainer}: {time.perf_counter() - started:.0f} s "
                  f"{ {k: v['accuracy'] for k, v in results[task][trainer]['test'].items()} }",
                  file=sys.stderr, flush=True)
    rows = build_rows(results, splits_info)
    info = git_info()
    header = {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), **info, "budget_s": args.budget,
              "clock": args.clock, "threads": args.threads,
              "model": args.model, "machine": machine(), "seed": args.seed, "smoke": args.smoke}
    report = {"header": header, "recipe": recipe, "splits": splits_info, "results": results, "rows": rows,
              "targets": check_targets(rows)}
    text = markdown(report)
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M', time.gmtime())}_{info['commit']}_quality_{args.model}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out_dir / f"{stem}.md").write_text(text)
    print(f"results: {args.out_dir / stem}.json / .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
