"""rmcore against TRL's RewardTrainer on the same work, alternating in one run (see bench/README.md).

    python bench/run.py                    # 2-core CPU: a few minutes per workload
    python bench/run.py --preset gpu       # more data and longer training where a GPU is lent
    python bench/run.py --ref HEAD~1       # also run rmcore as of another commit: before/after ratios

Every measurement runs in its own subprocess (so peak memory is that trial's alone), rmcore and TRL
take turns (rmcore first in odd repeats, TRL first in even ones), and each trial measures the float32
matrix-product rate just before and after it trains, so FLOP utilisation is against what the machine
gave *then*. Both trainers get the same model (same initial head), the same token ids (rmcore's
chat-template encoding and truncation), the same learning rate, schedule and optimizer (AdamW), and
the same comparisons over the same number of optimizer steps. TRL sees each ranked group as its
C(K,2) (chosen, rejected) pairs, as its users must flatten them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORKLOADS = {
    "oasst": DATA / "oasst" / "en_100_tree.jsonl",  # 212 ranked groups, K = 2..9
    "hh": DATA / "hh-rlhf" / "helpful-base-test.jsonl.gz",  # 2,348 pairs sharing a dialogue
}
# Per preset and workload: prompts per optimizer step, optimizer steps, held-out prompts.
# "cpu" measures speed in minutes; "cpu-accuracy" trains long enough (at a higher learning rate) for
# held-out accuracy to move away from the untrained model's, in ~30-40 minutes on 2 cores.
PRESETS: dict[str, dict[str, dict[str, int]]] = {
    "cpu": {"oasst": {"batch_size": 4, "steps": 3, "eval_groups": 12},
            "hh": {"batch_size": 8, "steps": 3, "eval_groups": 32}},
    "cpu-accuracy": {"oasst": {"batch_size": 4, "steps": 12, "eval_groups": 48},
                     "hh": {"batch_size": 8, "steps": 16, "eval_groups": 160}},
    "gpu": {"oasst": {"batch_size": 8, "steps": 20, "eval_groups": 40},
            "hh": {"batch_size": 32, "steps": 60, "eval_groups": 300}},
    "smoke": {"oasst": {"batch_size": 2, "steps": 1, "eval_groups": 2},
              "hh": {"batch_size": 2, "steps": 1, "eval_groups": 2}},
}
PRESET_LR = {"cpu-accuracy": 5e-5}  # the others use rmcore's full-mode default, 1e-5
# The issue's targets, checked at the end of a run (ratios are rmcore / TRL from the same run).
TARGETS = {"oasst_speedup": 3.0, "hh_speedup": 1.6, "flop_utilisation": 0.5, "scoring_speedup": 2.5,
           "scoring_latency_s": 0.7, "head_later_epoch_speedup": 50.0}


# ----------------------------------------------------------------------------- measuring


def device_name() -> str:
    import torch

    from rmcore.device import autodetect_device

    device = autodetect_device()
    return "cuda" if device == "cuda" and torch.cuda.is_available() else "cpu"


def matmul_rate(device: str, seconds: float = 1.0) -> float:
    """FLOP/s of torch.mm on square matrices in the dtype training computes in (float32 on CPU, bf16 on CUDA)."""
    import torch

    n, dtype = (2048, torch.float32) if device == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: first call allocates and picks a kernel
    rates, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return statistics.median(rates)


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int:
    """Bytes: the process's peak resident set on CPU, the peak allocated tensor memory on CUDA."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data


def load_workload(name: str, n_train: int, n_eval: int, seed: int = 0):
    """(train groups, eval groups): a seeded shuffle of the file's groups, eval first, disjoint."""
    from rmcore.data import read_preferences

    groups = [g for g in read_preferences(WORKLOADS[name]).groups if g.pairs()]
    random.Random(seed).shuffle(groups)
    eval_groups = groups[:n_eval]
    train_groups = groups[n_eval : n_eval + n_train]
    if len(train_groups) < n_train:
        raise SystemExit(f"{name}: only {len(train_groups)} training groups left after {n_eval} held out")
    return train_groups, eval_groups


def resolve_model(name: str, workdir: Path) -> str:
    """A local HF folder for --model: 'embedded', 'tiny' (built here, offline) or a path."""
    if name == "tiny":
        from rmcore.tiny import build_tiny_model

        target = workdir / "tiny-llama"
        if not (target / "config.json").is_file():
            build_tiny_model(target)
        return str(target)
    from rmcore.model import resolve_model_path

    return resolve_model_path(name)[0]


def held_out_accuracy(classifier, tokenizer, eval_groups, max_length: int, device: str,
                      margins: list[float] | None = None) -> float | None:
    """Pairwise accuracy of a trained classifier, by the same code for rmcore and TRL models; each held-out
    pair's r_w - r_l is appended to `margins` when given."""
    from rmcore.evaluate import evaluate
    from rmcore.model import RewardModel

    if not eval_groups:
        return None
    model = RewardModel(classifier, tokenizer, device=device, max_length=max_length)
    result = evaluate(model, eval_groups, batch_size=4)
    if margins is not None:
        margins.extend(pair["margin"] for pair in result.pairs)
    return result.summary["accuracy"]


def eval_comparisons(eval_groups) -> int:
    return sum(len(g.pairs()) for g in eval_groups)


# ----------------------------------------------------------------------------- the trials (one per subprocess)


def trial_rmcore(spec: dict[str, Any]) -> dict[str, Any]:
    """Full fine-tune with rmcore.train: shared-prompt packed rows, all C(K,2) pairs per group."""
    from rmcore.model import RewardModel
    from rmcore.train import TrainConfig, train

    device = device_name()
    train_groups, eval_groups = load_workload(spec["workload"], spec["n_train"], spec["n_eval"])
    options = {"model": spec["model_path"], "mode": "full", "epochs": 1, "lr": spec["lr"],
               "batch_size": spec["batch_size"], "max_length": spec["max_length"],
               "seed": spec.get("seed", 0),
               "warmup_ratio": 0.05, "max_grad_norm": 1.0}
    steps: list[dict[str, Any]] = []
    rate_before = matmul_rate(device)
    reset_peak_memory(device)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(TrainConfig(**options), train_groups, Path(tmp) / "rm",
                       on_step=lambda e: steps.append(e) if e["event"] == "step" else None)
        memory = peak_memory(device)
        seconds = steps[-1]["elapsed_s"]  # the training loop alone: no loading, tokenizing or saving
        rate_after = matmul_rate(device)
        trained = RewardModel.load(Path(tmp) / "rm", device=device, max_length=spec["max_length"])
        params = parameter_count(trained.model)
        margins: list[float] = []
        accuracy = held_out_accuracy(trained.model, trained.tokenizer, eval_groups, spec["max_length"], device,
                                     margins)
    encoded = _encode(trained.tokenizer, train_groups, spec["max_length"])
    comparisons = sum(len(e.pairs()) for e in encoded)
    return {"steps": result.steps, "comparisons": comparisons, "real_tokens": sum(e.num_tokens for e in encoded),
            "padded_tokens": _rmcore_padded_tokens(encoded, options, trained.model.config, device),
            "time_s": seconds, "step_s": _step_times(steps), "peak_memory_bytes": memory, "params": params,
            "matmul_flops": (rate_before + rate_after) / 2, "eval_accuracy": accuracy,
            **({"eval_margins": margins} if spec.get("trl_order") == "rmcore" else {})}


def _step_times(steps: list[dict[str, Any]]) -> list[float]:
    elapsed = [s["elapsed_s"] for s in steps]
    return [b - a for a, b in zip([0.0] + elapsed, elapsed)]


def _rmcore_padded_tokens(encoded, options: dict[str, Any], model_config, device: str) -> int:
    """Tokens rmcore computes, padding included: its batches cut into its micro-batches (as train() does)."""
    from rmcore.batching import length_bucketed_batches
    from rmcore.train import TrainConfig

    config = TrainConfig(**options)
    lengths = [e.num_tokens for e in encoded]
    try:
        from rmcore.batching import split_by_tokens
        from rmcore.train import _tokens_per_forward

        budget = config.max_tokens or _tokens_per_forward(model_config, device)
    except ImportError:  # rmcore before micro-batching (--ref): one forward per batch
        def split_by_tokens(batch, lengths, budget):
            return [batch]

        budget = 0
    total = 0
    for batch in length_bucketed_batches(lengths, config.batch_size, config.seed, 0):
        for part in split_by_tokens(batch, lengths, budget):
            total += len(part) * max(lengths[i] for i in part)
    return total


def trl_batching(pairs: int, steps: int, max_micro: int) -> tuple[int, int]:
    """(pairs per forward, forwards per optimizer step) that give TRL exactly rmcore's number of steps.

    The Trainer takes ceil(ceil(pairs / micro) / accumulate) steps; the largest micro (<= max_micro)
    that hits `steps` exactly wins, since bigger forwards use the machine better; failing that, the
    closest number of steps.
    """
    best: tuple[int, int, int] | None = None  # (steps off, micro, accumulate)
    for micro in range(min(max_micro, pairs), 0, -1):
        forwards = math.ceil(pairs / micro)
        for accumulate in {max(1, forwards // steps), max(1, math.ceil(forwards / steps))}:
            off = abs(math.ceil(forwards / accumulate) - steps)
            if best is None or off < best[0]:
                best = (off, micro, accumulate)
        if best[0] == 0:
            break
    return best[1], best[2]


def trial_untrained(spec: dict[str, Any]) -> dict[str, Any]:
    """Held-out accuracy of the common starting model: what training has to move away from."""
    from rmcore.model import load_sequence_classifier

    device = device_name()
    _, eval_groups = load_workload(spec["workload"], spec["n_train"], spec["n_eval"])
    classifier, tokenizer, _ = load_sequence_classifier(spec["model_path"], seed=spec.get("seed", 0))
    return {"eval_accuracy": held_out_accuracy(classifier, tokenizer, eval_groups, spec["max_length"], device),
            "eval_comparisons": eval_comparisons(eval_groups)}


def trial_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """Full fine-tune with TRL's RewardTrainer on every (chosen, rejected) pair of the same groups."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    from rmcore.model import load_sequence_classifier

    device = device_name()
    train_groups, eval_groups = load_workload(spec["workload"], spec["n_train"], spec["n_eval"])
    # The same starting model as rmcore's (same seeded head, same pad token) and the same token ids.
    classifier, tokenizer, _ = load_sequence_classifier(spec["model_path"], seed=spec.get("seed", 0))
    encoded = _encode(tokenizer, train_groups, spec["max_length"])
    same_order = spec.get("trl_order") == "rmcore"
    if same_order:  # rmcore's batches, in rmcore's order: isolates the implementations from data-order luck
        from rmcore.batching import length_bucketed_batches

        batches = length_bucketed_batches([e.num_tokens for e in encoded], spec["batch_size"], spec.get("seed", 0), 0)
        encoded = [encoded[i] for batch in batches for i in batch]
    rows = [{"chosen_ids": e.prompt_ids + e.response_ids[w], "rejected_ids": e.prompt_ids + e.response_ids[l]}
            for e in encoded for w, l in e.pairs()]
    steps = math.ceil(len(train_groups) / spec["batch_size"])  # rmcore's optimizer steps
    micro, accumulate = trl_batching(len(rows), steps, spec["trl_micro_pairs"])
    counted = {"padded": 0, "real": 0}

    def collate(examples):
        batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(examples)
        counted["padded"] += batch["input_ids"].numel()
        counted["real"] += int(batch["attention_mask"].sum())
        return batch

    clock: dict[str, Any] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock["end"] = time.perf_counter()
            clock.setdefault("ends", []).append(clock["end"])

    with tempfile.TemporaryDirectory() as tmp:
        config = RewardConfig(
            output_dir=tmp, per_device_train_batch_size=micro, gradient_accumulation_steps=accumulate,
            num_train_epochs=1, learning_rate=spec["lr"], lr_scheduler_type="linear",
            warmup_steps=int(0.05 * steps), weight_decay=0.0, max_grad_norm=1.0,
            bf16=device == "cuda",
            gradient_checkpointing=False,  # TRL's default (True) would only cost it time
            max_length=None,  # rows are already cut to max_length by rmcore's encoding
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            seed=spec.get("seed", 0), data_seed=spec.get("seed", 0), dataloader_num_workers=0, use_cpu=device == "cpu",
            train_sampling_strategy="sequential" if same_order else "random",
        )
        rate_before = matmul_rate(device)
        reset_peak_memory(device)
        trainer = RewardTrainer(model=classifier, args=config, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, data_collator=collate, callbacks=[Clock()])
        trainer.remove_callback(PrinterCallback)  # its end-of-training dict on stdout
        trainer.train()
        memory = peak_memory(device)
        step_s = _step_times([{"elapsed_s": t - clock["start"]} for t in clock["ends"]])
        rate_after = matmul_rate(device)
        model = trainer.accelerator.unwrap_model(trainer.model).float()
        margins: list[float] = []
        accuracy = held_out_accuracy(model, tokenizer, eval_groups, spec["max_length"], device, margins)
    return {"steps": trainer.state.global_step, "comparisons": len(rows), "real_tokens": counted["real"],
            "padded_tokens": counted["padded"], "time_s": clock["end"] - clock["start"], "step_s": step_s,
            "peak_memory_bytes": memory, "params": parameter_count(model),
            "matmul_flops": (rate_before + rate_after) / 2, "eval_accuracy": accuracy,
            "micro_pairs": micro, "accumulation": accumulate, "order": "rmcore" if same_order else "random",
            **({"eval_margins": margins} if same_order else {})}


def _encode(tokenizer, groups, max_length: int):
    from rmcore.encoding import encode_groups

    return encode_groups(tokenizer, groups, max_length)


def scoring_calls(tokenizer, calls: int, prompt_tokens: int = 128, candidate_tokens: int = 64,
                  k: int = 4) -> list[tuple[str, list[str]]]:
    """`calls` (instruction, K candidates): OASST instructions cut to ~128 tokens, replies cut to ~64.

    Every call has an instruction and candidates of its own, so a scorer that caches prompts gets
    no help from earlier calls beyond what all chat-template prompts share. Few OASST instructions
    are 128 tokens long, so each instruction is a different run of consecutive ones, cut.
    """
    from rmcore.data import read_preferences

    groups = read_preferences(WORKLOADS["oasst"]).groups

    def cut(texts: list[str], n: int) -> list[str]:
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return [tokenizer.decode(i[:n]) for i in ids if len(i) >= n]

    questions = [g.prompt_text for g in groups]
    prompts = cut(["\n\n".join(questions[i : i + 12]) for i in range(len(questions))], prompt_tokens)
    replies = cut([r for g in groups for r in g.responses], candidate_tokens)
    if len(prompts) < calls or len(replies) < k * calls:
        raise SystemExit(f"not enough long OASST texts for {calls} scoring calls")
    return [(prompts[i], replies[k * i : k * (i + 1)]) for i in range(calls)]


def trial_scoring(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm latency of RewardModel.score against transformers' text-classification pipeline, alternating.

    "rmcore" scores a new instruction on every call (its prompt cache can only reuse the chat
    template's opening); "rmcore_same_prompt" scores new candidates for an instruction it has seen
    (probing one instruction, best-of-n in a loop), where the cache holds the whole prompt.
    "rmcore_bf16" and "pipeline_bf16*" run the same calls with bfloat16 weights (rmcore's head stays
    float32), for the speed and the reward error that precision brings on this machine.
    """
    import torch
    from transformers import pipeline

    from rmcore.model import RewardModel

    device = device_name()
    repeats = spec["score_repeats"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = RewardModel.load(spec["model_path"], device=device).save(Path(tmp) / "rm")
        model = RewardModel.load(folder, device=device)
        pipe = pipeline("text-classification", model=str(folder), function_to_apply="none", device=device)
        warmup, *work = scoring_calls(model.tokenizer, repeats + 1)
        texts = [[model.render(prompt, c) for c in candidates] for prompt, candidates in [warmup, *work]]
        ours = model.score(*warmup).rewards  # warm-up, and the rewards to compare
        theirs = [o["score"] for o in pipe(texts[0])]
        pipe(texts[0], batch_size=len(texts[0]))
        calls = {"rmcore": lambda r: model.score(*work[r]),
                 "rmcore_same_prompt": lambda r: model.score(warmup[0], work[r][1]),
                 "pipeline": lambda r: pipe(texts[r + 1]),
                 "pipeline_batched": lambda r: pipe(texts[r + 1], batch_size=len(texts[r + 1]))}
        bf16_supported = "dtype" in inspect.signature(RewardModel.load).parameters  # (not in older rmcore: --ref)
        if bf16_supported:
            half = RewardModel.load(folder, device=device, dtype="bfloat16")
            pipe_half = pipeline("text-classification", model=str(folder), function_to_apply="none", device=device,
                                 dtype=torch.bfloat16)
            half.score(*warmup), pipe_half(texts[0]), pipe_half(texts[0], batch_size=len(texts[0]))
            calls.update({"rmcore_bf16": lambda r: half.score(*work[r]),
                          "pipeline_bf16": lambda r: pipe_half(texts[r + 1]),
                          "pipeline_bf16_batched": lambda r: pipe_half(texts[r + 1], batch_size=len(texts[r + 1]))})
        times: dict[str, list[float]] = {name: [] for name in calls}
        outputs: dict[str, list[Any]] = {name: [None] * repeats for name in calls}  # by call, for the bf16 error
        for r in range(repeats):
            for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outputs[name][r] = calls[name](r)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
        bf16_error = None
        if bf16_supported:
            exact = [result.rewards for result in outputs["rmcore"]]
            approx = [result.rewards for result in outputs["rmcore_bf16"]]
            spread = statistics.pstdev([x for rewards in exact for x in rewards])
            errors = [abs(a - b) for e, h in zip(exact, approx) for a, b in zip(e, h)]
            flips = sum((e[i] - e[j]) * (h[i] - h[j]) < 0 for e, h in zip(exact, approx)
                        for i in range(len(e)) for j in range(i + 1, len(e)))
            bf16_error = {"max_abs": max(errors), "mean_abs": statistics.fmean(errors), "reward_std": spread,
                          "order_flips": flips, "pairs": sum(len(e) * (len(e) - 1) // 2 for e in exact)}
        encoded = [model.encode(*call) for call in work]
        cache = getattr(model, "prompt_cache", None)  # (rmcore before the prompt cache has none: --ref)
        reused = cache.hits_tokens if cache is not None else 0
    return {"latency_s": {k: statistics.median(v) for k, v in times.items()},
            "all_s": times, "prompt_tokens": [len(e.prompt_ids) for e in encoded],
            "candidate_tokens": [[len(r) for r in e.response_ids] for e in encoded],
            "prompt_cache_hit_tokens": reused, "bf16_reward_error": bf16_error,
            "max_abs_reward_difference": max(abs(a - b) for a, b in zip(ours, theirs))}


def trial_head(spec: dict[str, Any]) -> dict[str, Any]:
    """Head mode: epoch 1 computes and caches trunk features; later epochs (and later runs) reuse them."""
    train_groups, eval_groups = load_workload("oasst", spec["n_train"], spec["n_eval"])
    saved_cache = os.environ.get("RMCORE_CACHE")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RMCORE_CACHE"] = str(Path(tmp) / "cache")  # a cold feature cache
        try:
            runs = _head_runs(spec, train_groups, eval_groups, Path(tmp))
        finally:
            if saved_cache is None:
                os.environ.pop("RMCORE_CACHE", None)
            else:
                os.environ["RMCORE_CACHE"] = saved_cache
    first, later = runs[0][0], max(runs[0][1:])
    return {"epoch_s": runs[0], "second_run_epoch_s": runs[1], "first_epoch_s": first,
            "slowest_later_epoch_s": later, "later_epoch_speedup": first / later if later > 0 else float("inf"),
            "groups": len(train_groups)}


def _head_runs(spec, train_groups, eval_groups, tmp: Path) -> list[list[float]]:
    """Epoch durations of two identical head-mode runs sharing one feature cache.

    Epoch 1 is timed from the "tokenizing" phase, so it includes computing the trunk features.
    """
    from rmcore.train import TrainConfig, train

    runs = []
    for run in range(2):
        marks: list[tuple[str, float, float]] = []

        def on_event(e, marks=marks):
            if e["event"] == "phase" and e["phase"] == "tokenizing":
                marks.append(("start", 0.0, time.perf_counter()))
            elif e["event"] == "step":
                marks.append(("step", e["epoch"], time.perf_counter()))

        config = TrainConfig(model=spec["model_path"], mode="head", epochs=spec["head_epochs"],
                             batch_size=8, max_length=spec["max_length"])
        train(config, train_groups, tmp / f"rm{run}", eval_groups=eval_groups, on_step=on_event)
        ends = [marks[0][2]] + [t for kind, epoch, t in marks if kind == "step" and float(epoch).is_integer()]
        runs.append([b - a for a, b in zip(ends, ends[1:])])
    return runs


TRIALS = {"rmcore": trial_rmcore, "trl": trial_trl, "untrained": trial_untrained, "scoring": trial_scoring,
          "head": trial_head}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # TRL's gradient_checkpointing name, in transformers 5

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import rmcore

    out = TRIALS[spec["kind"]](spec)
    out["rmcore_file"] = rmcore.__file__
    out["threads"] = torch.get_num_threads()
    return out


# ----------------------------------------------------------------------------- the orchestrator


def run_trial(spec: dict[str, Any], *, in_process: bool, pythonpath: str | None = None) -> dict[str, Any]:
    """One trial, in a fresh subprocess unless --in-process; returns its measurements."""
    label = spec.get("label", spec["kind"])
    print(f"  {label} {spec.get('workload', '')} ...", end=" ", flush=True, file=sys.stderr)
    started = time.perf_counter()
    if in_process:
        result = run_worker(spec)
    else:
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
            out_file = handle.name
        try:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec),
                                   "--worker-out", out_file], env=env, cwd=str(ROOT), stdout=sys.stderr)
            if proc.returncode != 0:
                raise SystemExit(f"{label} {spec.get('workload', '')}: the worker failed (exit {proc.returncode})")
            result = json.loads(Path(out_file).read_text())
        finally:
            os.unlink(out_file)
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "rmcore", "bench"))}


def make_ref_tree(ref: str, workdir: Path) -> str:
    """Check out rmcore as of `ref` into a temp worktree; workers import it via PYTHONPATH."""
    target = workdir / "ref"
    subprocess.run(["git", "worktree", "add", "--detach", str(target), ref], cwd=ROOT, check=True,
                   capture_output=True)
    return str(target)


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info = {"device": device, "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    for name in ("transformers", "accelerate", "trl"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize_training(workload: str, trials: dict[str, list[dict[str, Any]]],
                       untrained: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per implementation medians over repeats; ratios are medians of the paired (same-repeat) ratios.

    Held-out accuracy is the mean over seeds of each seed's median; with several seeds the block also
    has each seed's accuracies and the paired rmcore - TRL difference with its standard error.
    """
    rows = {}
    for impl, results in trials.items():
        for r in results:
            r["comparisons_per_s"] = r["comparisons"] / r["time_s"]
            r["tokens_per_s"] = r["real_tokens"] / r["time_s"]
            r["flop_utilisation"] = 6 * r["params"] * r["real_tokens"] / r["time_s"] / r["matmul_flops"]
        rows[impl] = {key: median([r[key] for r in results]) for key in
                      ("comparisons_per_s", "tokens_per_s", "peak_memory_bytes", "flop_utilisation", "time_s",
                       "matmul_flops")}
        rows[impl].update({key: results[0][key] for key in ("comparisons", "real_tokens", "padded_tokens", "steps")})
        by_seed = _by_seed(results)
        rows[impl]["eval_accuracy"] = None if None in by_seed.values() else statistics.fmean(by_seed.values())
        rows[impl]["accuracy_by_seed"] = by_seed
        if "order" in results[0]:
            rows[impl]["order"] = results[0]["order"]  # TRL's data order: its own shuffle, or rmcore's batches
    ratios = {}
    if "trl" in rows:
        # what the data allows: TRL's tokens (real, and with its padding) per rmcore token
        ratios["trl/rmcore real tokens"] = rows["trl"]["real_tokens"] / rows["rmcore"]["real_tokens"]
        ratios["trl/rmcore padded tokens"] = rows["trl"]["padded_tokens"] / rows["rmcore"]["padded_tokens"]
    for impl in rows:
        if impl == "rmcore":
            continue
        for key in ("comparisons_per_s", "tokens_per_s", "peak_memory_bytes"):
            ratios[f"rmcore/{impl} {key}"] = median(
                [a[key] / b[key] for a, b in zip(trials["rmcore"], trials[impl]) if b[key]])
    same_order = None
    paired = [(a, b) for a, b in zip(trials.get("rmcore", []), trials.get("trl", [])) if "eval_margins" in b]
    if paired:  # TRL read rmcore's batches: the two trained models should be one model, within float error
        ours, theirs = paired[0][0]["eval_margins"], paired[0][1]["eval_margins"]
        same_order = {"max_abs_margin_difference": max(abs(a - b) for a, b in zip(ours, theirs)),
                      "margin_std": statistics.pstdev(ours), "pairs": len(ours)}
    start = None
    if untrained:
        start = {"eval_accuracy": statistics.fmean(u["eval_accuracy"] for u in untrained),
                 "eval_comparisons": untrained[0]["eval_comparisons"], "accuracy_by_seed": _by_seed(untrained)}
    block = {"workload": workload, "implementations": rows, "ratios": ratios, "untrained": start,
             "same_order": same_order}
    if "trl" in rows and len(rows["rmcore"]["accuracy_by_seed"]) > 1:
        ours, theirs = rows["rmcore"]["accuracy_by_seed"], rows["trl"]["accuracy_by_seed"]
        differences = [ours[k] - theirs[k] for k in ours if ours[k] is not None and theirs.get(k) is not None]
        if len(differences) > 1:
            block["accuracy_difference"] = {
                "mean": statistics.fmean(differences), "seeds": len(differences),
                "standard_error": statistics.stdev(differences) / math.sqrt(len(differences))}
    return block


def _by_seed(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """{seed: median held-out accuracy of that seed's trials} (seed as a string: JSON keys)."""
    seeds = sorted({r.get("seed", 0) for r in results})
    return {str(seed): median([r["eval_accuracy"] for r in results if r.get("seed", 0) == seed]) for seed in seeds}


def check_targets(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    training = {s["workload"]: s for s in summary.get("training", [])}
    for workload, key in (("oasst", "oasst_speedup"), ("hh", "hh_speedup")):
        ratio = training.get(workload, {}).get("ratios", {}).get("rmcore/trl comparisons_per_s")
        if ratio is not None:
            checks[f"{workload}: comparisons/s vs TRL"] = {"value": ratio, "target": f">= {TARGETS[key]}",
                                                          "met": ratio >= TARGETS[key]}
        impls = training.get(workload, {}).get("implementations", {})
        if "rmcore" in impls and "trl" in impls:
            ours, theirs = impls["rmcore"]["eval_accuracy"], impls["trl"]["eval_accuracy"]
            if ours is not None and theirs is not None:
                seeds = len(impls["rmcore"].get("accuracy_by_seed") or [0])
                paired = training[workload].get("accuracy_difference")
                wanted = ">= 0 (rmcore - TRL" + (f", mean of {seeds} seeds, standard error "
                                                 f"{_fmt(paired['standard_error'])})" if paired else ")")
                checks[f"{workload}: held-out accuracy vs TRL"] = {
                    "value": ours - theirs, "target": wanted, "met": ours >= theirs}
        if "rmcore" in impls:
            util = impls["rmcore"]["flop_utilisation"]
            checks[f"{workload}: FLOP utilisation"] = {"value": util, "target": f">= {TARGETS['flop_utilisation']}",
                                                      "met": util >= TARGETS["flop_utilisation"]}
    scoring = summary.get("scoring")
    if scoring:
        latency = scoring["latency_s"]
        best_pipe = min(latency["pipeline"], latency["pipeline_batched"])
        for label, key in (("new instruction", "rmcore"), ("seen instruction", "rmcore_same_prompt")):
            if key in latency:
                speedup = best_pipe / latency[key]
                checks[f"scoring: speed-up vs pipeline, {label}"] = {
                    "value": speedup, "target": f">= {TARGETS['scoring_speedup']}",
                    "met": speedup >= TARGETS["scoring_speedup"]}
        checks["scoring: 4 candidates warm (s)"] = {"value": latency["rmcore"],
                                                    "target": f"<= {TARGETS['scoring_latency_s']}",
                                                    "met": latency["rmcore"] <= TARGETS["scoring_latency_s"]}
    head = summary.get("head")
    if head:
        wanted = TARGETS["head_later_epoch_speedup"]
        checks["head: later epochs vs first"] = {"value": head["later_epoch_speedup"], "target": f">= {wanted}",
                                                 "met": head["later_epoch_speedup"] >= wanted}
    return checks


def accuracy_standard_error(untrained: dict[str, Any]) -> float | None:
    """Binomial standard error of a held-out accuracy near the untrained one (comparisons share prompts,
    so the true error is somewhat larger): differences below ~2 of these are noise."""
    n, acc = untrained.get("eval_comparisons"), untrained.get("eval_accuracy")
    if not n or acc is None:
        return None
    return math.sqrt(max(acc * (1 - acc), 0.05) / n)


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return f"{value / 2**30:.2f} GiB"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    lines = [f"### {meta['date']} · commit {meta['git']['commit']}{' (dirty)' if meta['git']['dirty'] else ''} · "
             f"{meta['machine']['device']} ({meta['machine'].get('gpu') or meta['machine']['cpu']}, "
             f"{meta['machine']['cpu_count']} cores, {meta['threads']} threads) · model {meta['args']['model']} · "
             f"max length {meta['args']['max_length']} · preset {meta['preset']} · lr {meta['args']['lr']:g} · "
             f"load average {meta['load_before']} -> {meta['load_after']}",
             ""]
    if summary.get("training"):
        lines += ["| workload | trainer | steps | comparisons | comparisons/s | tokens/s | peak memory | FLOP util. "
                  "| held-out acc. |", "|---|---|---|---|---|---|---|---|---|"]
        for block in summary["training"]:
            for impl, row in block["implementations"].items():
                lines.append(f"| {block['workload']} | {impl} | {row['steps']} | {row['comparisons']} | "
                             f"{_fmt(row['comparisons_per_s'])} | {_fmt(row['tokens_per_s'])} | "
                             f"{_fmt(row['peak_memory_bytes'], 'bytes')} | {_fmt(row['flop_utilisation'], 'pct')} | "
                             f"{_fmt(row['eval_accuracy'])} |")
            if block.get("untrained"):
                u = block["untrained"]
                lines.append(f"| {block['workload']} | untrained start (held-out: {u['eval_comparisons']} comparisons, "
                             f"standard error {_fmt(accuracy_standard_error(u))}) | 0 | | | | | | "
                             f"{_fmt(u['eval_accuracy'])} |")
            for name, value in block["ratios"].items():
                bold = "**" if name.endswith("comparisons_per_s") else ""
                lines.append(f"| {block['workload']} | {bold}{name}{bold} | | | {bold}{_fmt(value)}x{bold} | | | | |")
        lines.append("")
        for block in summary["training"]:
            if block.get("same_order"):
                same = block["same_order"]
                lines += [f"{block['workload']}: TRL read rmcore's batches in rmcore's order (`--trl-order rmcore`); "
                          f"the two trained models' held-out margins r_w - r_l differ by at most "
                          f"{same['max_abs_margin_difference']:.1e} over {same['pairs']} pairs (margins spread "
                          f"{same['margin_std']:.2g}).", ""]
            if block.get("accuracy_difference"):
                d = block["accuracy_difference"]
                rows = {**block["implementations"], "untrained start": block.get("untrained") or {}}
                per_seed = "; ".join(f"{impl} " + " ".join(_fmt(a) for a in row["accuracy_by_seed"].values())
                                     for impl, row in rows.items() if row.get("accuracy_by_seed"))
                seeds = ", ".join(rows["rmcore"]["accuracy_by_seed"])
                lines += [f"{block['workload']} held-out accuracy by seed ({seeds}): {per_seed}. "
                          f"rmcore - TRL, paired by seed: {d['mean']:+.3f} (standard error "
                          f"{d['standard_error']:.3f}, {d['seeds']} seeds).", ""]
    if summary.get("scoring"):
        s = summary["scoring"]
        lat = s["latency_s"]
        prompts, candidates = s["prompt_tokens"], s["candidate_tokens"]
        best_pipe = min(lat["pipeline"], lat["pipeline_batched"])
        lines += [f"Scoring one instruction ({min(prompts)}-{max(prompts)} tokens with the chat template) and "
                  f"{len(candidates[0])} candidates ({min(map(min, candidates))}-{max(map(max, candidates))} tokens "
                  f"each), a different instruction and candidates on every call, warm median of {len(prompts)}: "
                  f"rmcore {lat['rmcore']:.3f} s, pipeline {lat['pipeline']:.3f} s "
                  f"(batch_size={len(candidates[0])}: {lat['pipeline_batched']:.3f} s); speed-up "
                  f"{best_pipe / lat['rmcore']:.2f}x over the faster pipeline call. New candidates for an "
                  f"instruction rmcore has scored before (its prompt cache holds the prompt): "
                  f"{lat['rmcore_same_prompt']:.3f} s, {best_pipe / lat['rmcore_same_prompt']:.2f}x. "
                  f"Rewards agree with the pipeline's to {s['max_abs_reward_difference']:.1e}.", ""]
        if s.get("bf16_reward_error"):
            err = s["bf16_reward_error"]
            pipe_half = min(lat["pipeline_bf16"], lat["pipeline_bf16_batched"])
            half = lat["rmcore_bf16"]
            lines += [f"bfloat16 weights (`--dtype bfloat16`), same calls: rmcore {half:.3f} s, "
                      f"{lat['rmcore'] / half:.2f}x its float32 time, {best_pipe / half:.2f}x the float32 pipeline, "
                      f"{pipe_half / half:.2f}x the bfloat16 pipeline "
                      f"({pipe_half:.3f} s). Rewards off float32 by {err['mean_abs']:.2g} on average "
                      f"(max {err['max_abs']:.2g}; rewards spread {err['reward_std']:.2g}), "
                      f"{err['order_flips']} of {err['pairs']} pair orders flipped.", ""]
        for label, extra in summary.get("scoring_ref", {}).items():
            lines += [f"rmcore@{label} scoring: {extra['latency_s']['rmcore']:.3f} s "
                      f"(this tree is {extra['latency_s']['rmcore'] / lat['rmcore']:.2f}x faster)", ""]
    if summary.get("head"):
        h = summary["head"]
        lines += [f"Head mode ({h['groups']} OASST groups): epoch times "
                  f"{', '.join(f'{t:.2f}' for t in h['epoch_s'])} s; later epochs {h['later_epoch_speedup']:,.0f}x "
                  f"faster than the first; a second run's first epoch (cached features) "
                  f"{h['second_run_epoch_s'][0]:.2f} s.", ""]
    if summary.get("targets"):
        if meta["args"]["model"] != "embedded":
            lines += ["(The targets are set for the embedded SmolLM2-135M model on a 2-core CPU; this run used "
                      f"{meta['args']['model']}.)", ""]
        lines += ["| target | value | wanted | met |", "|---|---|---|---|"]
        for name, check in summary["targets"].items():
            lines.append(f"| {name} | {_fmt(check['value'])} | {check['target']} | {'yes' if check['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more distinct integers")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="sizes per workload: cpu (default without a GPU: minutes on 2 cores), gpu (default "
                             "with one), smoke (seconds, for CI with --model tiny)")
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (SmolLM2-135M-Instruct), 'tiny' (a random 2-layer Llama built offline), "
                             "or a local HF folder")
    parser.add_argument("--workloads", default="oasst,hh", help="comma-separated: oasst, hh, or none")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps per workload (training prompts = steps x batch size); the preset's "
                             "value if not given. TRL gets the same comparisons in the same number of steps")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per optimizer step (preset's value)")
    parser.add_argument("--eval-groups", type=int, default=None, help="held-out prompts per workload (preset's value)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens of prompt + one response, for both")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate for both (default: rmcore's full-mode 1e-5; 5e-5 with --preset "
                             "cpu-accuracy)")
    parser.add_argument("--seed", type=_seeds, default=[0], metavar="N[,N...]",
                        help="seed of the reward head's initialisation (the same for both) and of each trainer's "
                             "data order; held-out accuracy after a short run varies with it. Several (0,1,2,3) "
                             "train once per seed and report the mean accuracy and the paired difference")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rmcore/TRL alternations per workload; ratios are medians of paired ratios. Use 3 on a "
                             "noisy (shared) machine")
    parser.add_argument("--trl-micro-pairs", type=int, default=4,
                        help="pairs per TRL forward (the rest by gradient accumulation); 4 pairs = 8 sequences "
                             "keeps its memory near rmcore's")
    parser.add_argument("--trl-order", choices=("random", "rmcore"), default="random",
                        help="random: TRL's own shuffled pairs (default); rmcore: TRL reads the pairs in rmcore's "
                             "batch order, a control that separates the implementations from data-order luck in "
                             "held-out accuracy (step for step the same data when every prompt has one pair, as in "
                             "HH)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in every trial (default: torch's choice). On a machine shared with "
                             "other jobs, 1 thread can be much faster than 2")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: trl, untrained (the starting model's accuracy), "
                             "scoring, head")
    parser.add_argument("--ref", default=None,
                        help="a git ref: also run rmcore as of that commit (training and scoring), alternating, "
                             "for before/after ratios")
    parser.add_argument("--head-epochs", type=int, default=3, help="epochs of the head-mode trial")
    parser.add_argument("--score-repeats", type=int, default=5, help="timed calls per scorer (after a warm-up)")
    parser.add_argument("--in-process", action="store_true",
                        help="run trials in this process (quick, for tests); peak memory then accumulates")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"),
                        help="folder for the results (.json and .md); '' to write nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = run_worker(json.loads(args.worker))
        Path(args.worker_out).write_text(json.dumps(result))
        return 0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = device_name()
    preset = args.preset or ("gpu" if device == "cuda" else "cpu")
    if args.lr is None:
        args.lr = PRESET_LR.get(preset, 1e-5)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl is not installed (pip install -r bench/requirements.txt): skipping the TRL trials", file=sys.stderr)
        skip.add("trl")
    workloads = [w for w in args.workloads.split(",") if w and w != "none"]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
        if not WORKLOADS[w].is_file():
            parser.error(f"{WORKLOADS[w]} not found: the benchmark reads ../shared/data beside the project")

    workdir = Path(tempfile.mkdtemp(prefix="rmcore-bench-"))
    ref_path = None
    try:
        model_path = resolve_model(args.model, workdir)
        if args.ref:
            ref_path = make_ref_tree(args.ref, workdir)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "git": git_info(), "machine": machine_info(device),
                "threads": args.threads or "default", "preset": preset, "args": vars(args),
                "load_before": load_average()}
        print(f"rmcore bench: {device}, preset {preset}, model {args.model}, load average {meta['load_before']}",
              file=sys.stderr)
        common = {"model_path": model_path, "max_length": args.max_length, "lr": args.lr, "threads": args.threads,
                  "trl_micro_pairs": args.trl_micro_pairs, "seed": args.seed[0], "trl_order": args.trl_order}
        summary: dict[str, Any] = {"meta": meta, "training": []}
        for workload in workloads:
            sizes = dict(PRESETS[preset][workload])
            for key in ("steps", "batch_size", "eval_groups"):
                if getattr(args, key) is not None:
                    sizes[key] = getattr(args, key)
            spec = {**common, "workload": workload, "batch_size": sizes["batch_size"],
                    "n_train": sizes["steps"] * sizes["batch_size"], "n_eval": sizes["eval_groups"]}
            impls = ["rmcore"] + ([] if "trl" in skip else ["trl"]) + ([f"rmcore@{args.ref}"] if ref_path else [])
            trials: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
            print(f"{workload}: {spec['n_train']} training prompts in {sizes['steps']} steps, "
                  f"{spec['n_eval']} held out", file=sys.stderr)
            untrained = []
            for seed in args.seed:
                seeded = {**spec, "seed": seed}
                for repeat in range(args.repeats):
                    for impl in (impls if repeat % 2 == 0 else list(reversed(impls))):
                        kind = "trl" if impl == "trl" else "rmcore"
                        result = run_trial({**seeded, "kind": kind, "label": f"{impl}, seed {seed}"},
                                           in_process=args.in_process,
                                           pythonpath=ref_path if impl.startswith("rmcore@") else None)
                        trials[impl].append({**result, "seed": seed})
                if "untrained" not in skip:
                    untrained.append({**run_trial({**seeded, "kind": "untrained", "label": f"untrained, seed {seed}"},
                                                  in_process=args.in_process), "seed": seed})
            summary["training"].append(summarize_training(workload, trials, untrained))
        if "scoring" not in skip:
            spec = {**common, "kind": "scoring", "score_repeats": args.score_repeats}
            summary["scoring"] = run_trial(spec, in_process=args.in_process)
            if ref_path:
                summary["scoring_ref"] = {args.ref: run_trial({**spec, "label": f"scoring@{args.ref}"},
                                                              in_process=args.in_process, pythonpath=ref_path)}
        if "head" not in skip:
            sizes = PRESETS[preset]["oasst"]
            spec = {**common, "kind": "head", "head_epochs": args.head_epochs,
                    "n_train": 16 if preset.startswith("cpu") else 4 * sizes["batch_size"] * sizes["steps"],
                    "n_eval": sizes["eval_groups"]}
            summary["head"] = run_trial(spec, in_process=args.in_process)
        meta["load_after"] = load_average()
        summary["targets"] = check_targets(summary)
        table = markdown(summary)
        print(table)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            stem = f"{time.strftime('%Y%m%d-%H%M')}_{meta['git']['commit'] or 'nogit'}_{device}_{args.model}"
            (out / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str))
            (out / f"{stem}.md").write_text(table)
            print(f"wrote {out / stem}.json and .md", file=sys.stderr)
        return 0
    finally:
        if ref_path:
            subprocess.run(["git", "worktree", "remove", "--force", ref_path], cwd=ROOT, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
