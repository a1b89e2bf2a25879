"""The benchmark's trials: what runs inside one worker process, and the measuring it needs.

`bench/run.py` (the command line) starts one worker per trial,

    python bench/trials.py SPEC.json OUT.json

so each trial's peak memory is its own. A `TrialSpec` says what to run ("rmcore", "trl",
"untrained", "scoring" or "head") on which workload and model; the worker writes the trial's
measurements as JSON. With `--ref`, the worker imports rmcore from an older commit (PYTHONPATH),
so these trials use only rmcore's public interface, and tolerate what older versions lack.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WORKLOADS = {
    "oasst": DATA / "oasst" / "en_100_tree.jsonl",  # 212 ranked groups, K = 2..9
    "hh": DATA / "hh-rlhf" / "helpful-base-test.jsonl.gz",  # 2,348 pairs sharing a dialogue
}


@dataclass
class TrialSpec:
    """One trial: what the worker runs. Sent to it as JSON (`to_json`, `from_json`)."""

    kind: str  # a key of TRIALS
    model_path: str  # a local HF folder
    max_length: int = 512
    lr: float = 1e-5
    seed: int = 0  # the reward head's initialisation and each trainer's data order
    threads: int | None = None  # torch threads (None: torch's choice)
    workload: str = ""  # a key of WORKLOADS (training and untrained trials)
    batch_size: int = 0  # prompts per optimizer step
    n_train: int = 0  # training prompts
    n_eval: int = 0  # held-out prompts
    trl_micro_pairs: int = 4  # pairs per TRL forward
    trl_order: str = "random"  # "random": TRL's own shuffle; "rmcore": rmcore's batches in rmcore's order
    score_repeats: int = 5  # scoring: timed calls per scorer
    head_epochs: int = 3  # head: epochs per run
    label: str = ""  # what progress lines call it (default: the kind)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialSpec:
        return cls(**json.loads(text))

    @property
    def name(self) -> str:
        return self.label or self.kind

    @property
    def same_order(self) -> bool:
        return self.trl_order == "rmcore"


# ----------------------------------------------------------------------------- measuring


def device_name() -> str:
    import torch

    from rmcore.model.device import autodetect_device

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


def step_times(steps: list[dict[str, Any]]) -> list[float]:
    """Each step's duration, from the steps' elapsed_s."""
    elapsed = [s["elapsed_s"] for s in steps]
    return [b - a for a, b in zip([0.0] + elapsed, elapsed)]


# ----------------------------------------------------------------------------- data and models


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
        from rmcore.model.tiny import build_tiny_model

        target = workdir / "tiny-llama"
        if not (target / "config.json").is_file():
            build_tiny_model(target)
        return str(target)
    from rmcore.model.reward_model import resolve_model_path

    return resolve_model_path(name)[0]


def encode(tokenizer, groups, max_length: int):
    from rmcore.data.encoding import encode_groups

    return encode_groups(tokenizer, groups, max_length)


def held_out_accuracy(classifier, tokenizer, eval_groups, max_length: int, device: str,
                      margins: list[float] | None = None) -> float | None:
    """Pairwise accuracy of a trained classifier, by the same code for rmcore and TRL models; each held-out
    pair's r_w - r_l is appended to `margins` when given."""
    from rmcore.analysis.evaluate import evaluate
    from rmcore.model.reward_model import RewardModel

    if not eval_groups:
        return None
    model = RewardModel(classifier, tokenizer, device=device, max_length=max_length)
    result = evaluate(model, eval_groups, batch_size=4)
    if margins is not None:
        margins.extend(pair["margin"] for pair in result.pairs)
    return result.summary["accuracy"]


def eval_comparisons(eval_groups) -> int:
    return sum(len(g.pairs()) for g in eval_groups)


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


# ----------------------------------------------------------------------------- training: rmcore, TRL, the start


def trial_rmcore(spec: TrialSpec) -> dict[str, Any]:
    """Full fine-tune with rmcore.training.train: shared-prompt packed rows, all C(K,2) pairs per group."""
    from rmcore.model.reward_model import RewardModel
    from rmcore.training.train import TrainConfig, train

    device = device_name()
    train_groups, eval_groups = load_workload(spec.workload, spec.n_train, spec.n_eval)
    # float32, as TRL's RewardTrainer trains on a CPU: the same work at the same precision
    config = TrainConfig(model=spec.model_path, mode="full", epochs=1, lr=spec.lr, batch_size=spec.batch_size,
                         precision="float32",
                         max_length=spec.max_length, seed=spec.seed, warmup_ratio=0.05, max_grad_norm=1.0)
    steps: list[dict[str, Any]] = []
    rate_before = matmul_rate(device)
    reset_peak_memory(device)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, train_groups, Path(tmp) / "rm",
                       on_step=lambda e: steps.append(e) if e["event"] == "step" else None)
        memory = peak_memory(device)
        seconds = steps[-1]["elapsed_s"]  # the training loop alone: no loading, tokenizing or saving
        rate_after = matmul_rate(device)
        trained = RewardModel.load(Path(tmp) / "rm", device=device, max_length=spec.max_length)
        params = parameter_count(trained.model)
        margins: list[float] = []
        accuracy = held_out_accuracy(trained.model, trained.tokenizer, eval_groups, spec.max_length, device,
                                     margins)
    encoded = encode(trained.tokenizer, train_groups, spec.max_length)
    return {"steps": result.steps, "comparisons": sum(len(e.pairs()) for e in encoded),
            "real_tokens": sum(e.num_tokens for e in encoded), "padded_tokens": _padded_tokens(steps),
            "time_s": seconds, "step_s": step_times(steps), "peak_memory_bytes": memory, "params": params,
            "matmul_flops": (rate_before + rate_after) / 2, "eval_accuracy": accuracy,
            **({"eval_margins": margins} if spec.same_order else {})}


def _padded_tokens(steps: list[dict[str, Any]]) -> int | None:
    """Tokens rmcore computed, padding included, as train() reports them per step (None where an older
    rmcore, run with --ref, does not)."""
    if not steps or any("padded_tokens" not in s for s in steps):
        return None
    return sum(s["padded_tokens"] for s in steps)


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


def trial_untrained(spec: TrialSpec) -> dict[str, Any]:
    """Held-out accuracy of the common starting model: what training has to move away from."""
    from rmcore.model.reward_model import load_sequence_classifier

    device = device_name()
    _, eval_groups = load_workload(spec.workload, spec.n_train, spec.n_eval)
    classifier, tokenizer, _ = load_sequence_classifier(spec.model_path, seed=spec.seed)
    return {"eval_accuracy": held_out_accuracy(classifier, tokenizer, eval_groups, spec.max_length, device),
            "eval_comparisons": eval_comparisons(eval_groups)}


def trl_rows(spec: TrialSpec, tokenizer, train_groups) -> list[dict[str, list[int]]]:
    """Every (chosen, rejected) pair of the groups as TRL's token-id rows, in rmcore's batch order with
    --trl-order rmcore (isolating the implementations from data-order luck)."""
    encoded = encode(tokenizer, train_groups, spec.max_length)
    if spec.same_order:
        from rmcore.model.batching import length_bucketed_batches

        batches = length_bucketed_batches([e.num_tokens for e in encoded], spec.batch_size, spec.seed, 0)
        encoded = [encoded[i] for batch in batches for i in batch]
    return [{"chosen_ids": e.prompt_ids + e.response_ids[w], "rejected_ids": e.prompt_ids + e.response_ids[l]}
            for e in encoded for w, l in e.pairs()]


def trial_trl(spec: TrialSpec) -> dict[str, Any]:
    """Full fine-tune with TRL's RewardTrainer on every (chosen, rejected) pair of the same groups."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import RewardTrainer

    from rmcore.model.reward_model import load_sequence_classifier

    device = device_name()
    train_groups, eval_groups = load_workload(spec.workload, spec.n_train, spec.n_eval)
    # The same starting model as rmcore's (same seeded head, same pad token) and the same token ids.
    classifier, tokenizer, _ = load_sequence_classifier(spec.model_path, seed=spec.seed)
    rows = trl_rows(spec, tokenizer, train_groups)
    steps = math.ceil(len(train_groups) / spec.batch_size)  # rmcore's optimizer steps
    micro, accumulate = trl_batching(len(rows), steps, spec.trl_micro_pairs)
    collate, counted = _counting_collator(tokenizer.pad_token_id)
    clock, clock_callback = _step_clock()
    with tempfile.TemporaryDirectory() as tmp:
        config = _reward_config(spec, tmp, micro, accumulate, steps, device)
        rate_before = matmul_rate(device)
        reset_peak_memory(device)
        trainer = RewardTrainer(model=classifier, args=config, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, data_collator=collate, callbacks=[clock_callback])
        trainer.remove_callback(PrinterCallback)  # its end-of-training dict on stdout
        trainer.train()
        memory = peak_memory(device)
        step_s = step_times([{"elapsed_s": t - clock["start"]} for t in clock["ends"]])
        rate_after = matmul_rate(device)
        model = trainer.accelerator.unwrap_model(trainer.model).float()
        margins: list[float] = []
        accuracy = held_out_accuracy(model, tokenizer, eval_groups, spec.max_length, device, margins)
    return {"steps": trainer.state.global_step, "comparisons": len(rows), "real_tokens": counted["real"],
            "padded_tokens": counted["padded"], "time_s": clock["end"] - clock["start"], "step_s": step_s,
            "peak_memory_bytes": memory, "params": parameter_count(model),
            "matmul_flops": (rate_before + rate_after) / 2, "eval_accuracy": accuracy,
            "micro_pairs": micro, "accumulation": accumulate, "order": "rmcore" if spec.same_order else "random",
            **({"eval_margins": margins} if spec.same_order else {})}


def _reward_config(spec: TrialSpec, output_dir: str, micro: int, accumulate: int, steps: int, device: str):
    """TRL's RewardConfig with rmcore's optimisation: the same lr, warm-up, decay, clipping and precision."""
    from trl import RewardConfig

    return RewardConfig(
        output_dir=output_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=accumulate,
        num_train_epochs=1, learning_rate=spec.lr, lr_scheduler_type="linear",
        warmup_steps=int(0.05 * steps), weight_decay=0.0, max_grad_norm=1.0,
        bf16=device == "cuda",
        gradient_checkpointing=False,  # TRL's default (True) would only cost it time
        max_length=None,  # rows are already cut to max_length by rmcore's encoding
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        seed=spec.seed, data_seed=spec.seed, dataloader_num_workers=0, use_cpu=device == "cpu",
        train_sampling_strategy="sequential" if spec.same_order else "random",
    )


def _counting_collator(pad_token_id: int):
    """TRL's preference collator, counting the real and padded tokens it hands the model."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    counted = {"padded": 0, "real": 0}
    collator = DataCollatorForPreference(pad_token_id=pad_token_id)

    def collate(examples):
        batch = collator(examples)
        counted["padded"] += batch["input_ids"].numel()
        counted["real"] += int(batch["attention_mask"].sum())
        return batch

    return collate, counted


def _step_clock():
    """A TrainerCallback noting when training began and when each optimizer step ended."""
    from transformers import TrainerCallback

    clock: dict[str, Any] = {"ends": []}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock["end"] = time.perf_counter()
            clock["ends"].append(clock["end"])

    return clock, Clock()


# ----------------------------------------------------------------------------- scoring


def trial_scoring(spec: TrialSpec) -> dict[str, Any]:
    """Warm latency of RewardModel.score against transformers' text-classification pipeline, alternating.

    "rmcore" scores a new instruction on every call (its prompt cache can only reuse the chat
    template's opening); "rmcore_same_prompt" scores new candidates for an instruction it has seen
    (probing one instruction, best-of-n in a loop), where the cache holds the whole prompt.
    "rmcore_bf16" and "pipeline_bf16*" run the same calls with bfloat16 weights (rmcore's head stays
    float32), for the speed and the reward error that precision brings on this machine.
    """
    from transformers import pipeline

    from rmcore.model.reward_model import RewardModel

    device = device_name()
    repeats = spec.score_repeats
    with tempfile.TemporaryDirectory() as tmp:
        folder = RewardModel.load(spec.model_path, device=device).save(Path(tmp) / "rm")
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
            calls.update(_bf16_calls(folder, device, warmup, work, texts))
        times, outputs = _time_calls(calls, repeats, device)
        bf16_error = _bf16_error(outputs["rmcore"], outputs["rmcore_bf16"]) if bf16_supported else None
        encoded = [model.encode(*call) for call in work]
        cache = getattr(model, "prompt_cache", None)  # (rmcore before the prompt cache has none: --ref)
        reused = cache.hits_tokens if cache is not None else 0
    return {"latency_s": {k: statistics.median(v) for k, v in times.items()},
            "all_s": times, "prompt_tokens": [len(e.prompt_ids) for e in encoded],
            "candidate_tokens": [[len(r) for r in e.response_ids] for e in encoded],
            "prompt_cache_hit_tokens": reused, "bf16_reward_error": bf16_error,
            "max_abs_reward_difference": max(abs(a - b) for a, b in zip(ours, theirs))}


def _bf16_calls(folder, device: str, warmup, work, texts) -> dict[str, Any]:
    """rmcore and the pipeline with bfloat16 weights, warmed up, as timed calls by repeat index."""
    import torch
    from transformers import pipeline

    from rmcore.model.reward_model import RewardModel

    half = RewardModel.load(folder, device=device, dtype="bfloat16")
    pipe_half = pipeline("text-classification", model=str(folder), function_to_apply="none", device=device,
                         dtype=torch.bfloat16)
    half.score(*warmup), pipe_half(texts[0]), pipe_half(texts[0], batch_size=len(texts[0]))
    return {"rmcore_bf16": lambda r: half.score(*work[r]),
            "pipeline_bf16": lambda r: pipe_half(texts[r + 1]),
            "pipeline_bf16_batched": lambda r: pipe_half(texts[r + 1], batch_size=len(texts[r + 1]))}


def _time_calls(calls: dict[str, Any], repeats: int, device: str) -> tuple[dict[str, list[float]], dict[str, list]]:
    """Each call's durations over the repeats, taking turns (the order reversed every other repeat),
    and its outputs by repeat (for the bf16 error)."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in calls}
    outputs: dict[str, list[Any]] = {name: [None] * repeats for name in calls}
    for r in range(repeats):
        for name in (list(calls) if r % 2 == 0 else list(reversed(calls))):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[name][r] = calls[name](r)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def _bf16_error(exact_results, approx_results) -> dict[str, Any]:
    """How far bfloat16 rewards are from float32 ones on the same calls, and how many pair orders flip."""
    exact = [result.rewards for result in exact_results]
    approx = [result.rewards for result in approx_results]
    errors = [abs(a - b) for e, h in zip(exact, approx) for a, b in zip(e, h)]
    flips = sum((e[i] - e[j]) * (h[i] - h[j]) < 0 for e, h in zip(exact, approx)
                for i in range(len(e)) for j in range(i + 1, len(e)))
    return {"max_abs": max(errors), "mean_abs": statistics.fmean(errors),
            "reward_std": statistics.pstdev([x for rewards in exact for x in rewards]),
            "order_flips": flips, "pairs": sum(len(e) * (len(e) - 1) // 2 for e in exact)}


# ----------------------------------------------------------------------------- head mode


def trial_head(spec: TrialSpec) -> dict[str, Any]:
    """Head mode: epoch 1 computes and caches trunk features; later epochs (and later runs) reuse them."""
    train_groups, eval_groups = load_workload("oasst", spec.n_train, spec.n_eval)
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


def _head_runs(spec: TrialSpec, train_groups, eval_groups, tmp: Path) -> list[list[float]]:
    """Epoch durations of two identical head-mode runs sharing one feature cache.

    Epoch 1 is timed from the "tokenizing" phase, so it includes computing the trunk features.
    """
    from rmcore.training.train import TrainConfig, train

    runs = []
    for run in range(2):
        marks: list[tuple[str, float, float]] = []

        def on_event(e, marks=marks):
            if e["event"] == "phase" and e["phase"] == "tokenizing":
                marks.append(("start", 0.0, time.perf_counter()))
            elif e["event"] == "step":
                marks.append(("step", e["epoch"], time.perf_counter()))

        config = TrainConfig(model=spec.model_path, mode="head", epochs=spec.head_epochs,
                             batch_size=8, max_length=spec.max_length)
        train(config, train_groups, tmp / f"rm{run}", eval_groups=eval_groups, on_step=on_event)
        ends = [marks[0][2]] + [t for kind, epoch, t in marks if kind == "step" and float(epoch).is_integer()]
        runs.append([b - a for a, b in zip(ends, ends[1:])])
    return runs


# ----------------------------------------------------------------------------- the worker


TRIALS = {"rmcore": trial_rmcore, "trl": trial_trl, "untrained": trial_untrained, "scoring": trial_scoring,
          "head": trial_head}


def run_worker(spec: TrialSpec) -> dict[str, Any]:
    """Run one trial in this process, quietly; its measurements, with the rmcore it imported."""
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # TRL's gradient_checkpointing name, in transformers 5

    if spec.threads:
        torch.set_num_threads(spec.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import rmcore

    out = TRIALS[spec.kind](spec)
    out["rmcore_file"] = rmcore.__file__
    out["threads"] = torch.get_num_threads()
    return out


def main(argv: list[str]) -> int:
    """python bench/trials.py SPEC.json OUT.json: run the trial SPEC.json describes, write its results."""
    spec_file, out_file = argv
    result = run_worker(TrialSpec.from_json(Path(spec_file).read_text()))
    Path(out_file).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
