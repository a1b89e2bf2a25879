"""`rmcore sample`, `bon` and `rlhf`: a reward model at work on a policy.

    rmcore sample prompts.txt --n 32 --out samples.jsonl
    rmcore bon samples.jsonl --model runs/rm --gold runs/rm-gold --plot bon.html
    rmcore rlhf prompts.txt --reward-model runs/rm --out runs/policy --method rs --rounds 2

Their options are in rmcore.cli.parser.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from rmcore.cli.progress import StepPrinter
from rmcore.core.errors import DataError, ModelError, printable
from rmcore.core.folders import CHECKPOINT_DIR
from rmcore.core.outputs import atomic_write_text, check_output_file
from rmcore.core.progress import ProgressCallback
from rmcore.data import read_preferences
from rmcore.data.prompts import prompt_key, read_prompts
from rmcore.policy.best_of_n import bon_figure, curve_from_records, score_proxy_and_gold
from rmcore.policy.config import RLHFConfig, RLHFResult
from rmcore.policy.models import load_policy, load_reward_model
from rmcore.policy.rlhf import grpo_available, split_prompts, train_policy
from rmcore.policy.sampling import (
    MAX_PROMPT_TOKENS,
    MAX_SEQUENCES_PER_CALL,
    SamplingSettings,
    check_context,
    prompts_cut,
    prompts_done,
    read_samples_file,
    read_samples_located,
    sample_record_problem,
    write_samples,
)
from rmcore.policy.saving import check_policy_output


def cmd_sample(args) -> int:
    out = check_output_file(args.out, "--out", inputs=(args.prompts,), read_folders=(args.model,), append=True)
    settings = SamplingSettings(model=args.model, n=args.n, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    settings.check()  # options first: a refusal comes before any reading or loading
    if not 1 <= args.sequences_per_call <= MAX_SEQUENCES_PER_CALL:
        raise ValueError(f"--sequences-per-call must be from 1 to {MAX_SEQUENCES_PER_CALL}, got "
                         f"{args.sequences_per_call:,}")
    prompts = read_prompts(args.prompts)[: args.limit]
    already = prompts_done(out, settings)  # refuses a file that is not ours before loading anything
    if all(prompt_key(p) in already for p in prompts):
        print(f"{out}: all {len(prompts)} prompts already sampled with these settings; nothing to do", file=sys.stderr)
        return 0
    print(f"[rmcore] loading the policy ({args.model})", file=sys.stderr, flush=True)
    model, tokenizer, name = load_policy(args.model)
    check_context(model, args.max_new_tokens)
    todo = [p for p in prompts if prompt_key(p) not in already]
    cut = prompts_cut(tokenizer, todo)
    if cut:
        print(f"[rmcore] {args.prompts}: {cut} of {len(todo)} prompts are longer than {MAX_PROMPT_TOKENS:,} tokens; "
              f"the policy reads the last {MAX_PROMPT_TOKENS:,} tokens of each (a long prompt is cut from the left, "
              "as everywhere in rmcore)", file=sys.stderr)
    started = time.perf_counter()
    with ProgressCallback(f"sampling {args.n} answers per prompt") as progress_bar:
        written, skipped = write_samples(model, tokenizer, prompts, out, settings,
                                         sequences_per_call=args.sequences_per_call, on_progress=progress_bar)
    seconds = time.perf_counter() - started
    records = read_samples_file(out)
    answers = sum(len(r["responses"]) for r in records)
    cut = sum(sum(r["hit_limit"]) for r in records)
    tokens = sum(sum(r["num_tokens"]) for r in records[-written:]) if written else 0
    print(f"wrote {written} prompts x {args.n} answers to {out} in {seconds:.0f} s ({tokens / max(seconds, 1e-9):.0f} "
          f"tokens/s){f'; {skipped} prompts were already there' if skipped else ''}; {cut} of {answers} answers "
          f"hit the {args.max_new_tokens}-token limit", file=sys.stderr)
    return 0


def read_sample_records(path: str) -> list[dict]:
    """Records with prompt and responses: a samples file as written, or any file rmcore scores. Samples
    records that cannot be scored (responses not a list of texts, num_tokens not one count per answer,
    ...) are skipped and reported, as every data reader does; a file without any is refused."""
    file = Path(path)
    try:
        located = read_samples_located(file)
    except DataError:
        located = []  # not a samples file: read as data (which refuses a folder, a named pipe, a device)
    if located:
        records, skipped = [], []
        for where, record in located:
            problem = sample_record_problem(record)
            if problem:
                skipped.append((where, problem))
            else:
                records.append(record)
        if not records:
            raise DataError(skipped[0][0], f"{skipped[0][1]}; no record of the file can be scored")
        if skipped:
            print(printable(f"[rmcore] {path}: skipped {len(skipped)} of {len(located)} records that cannot be "
                            f"scored (first: {skipped[0][0]}: {skipped[0][1]})"), file=sys.stderr)
        return records
    groups = read_preferences(file, for_scoring=True).groups
    return [{"prompt": g.to_record()["prompt"], "responses": g.responses} for g in groups]


def check_finite(records: list[dict], rewards: list[list[float]], model: str, samples: str) -> None:
    """A reward that is NaN or infinite (weights that overflow on this text) is refused in one line, not
    carried into the curve and its JSON."""
    for i, row in enumerate(rewards):
        for j, reward in enumerate(row):
            if not math.isfinite(reward):
                raise ModelError(f"{model}: gave the reward {reward} to answer {j + 1} of record {i + 1} of {samples}; "
                                 "the reward model is broken (its weights overflow on this text)")


def json_safe(value):
    """The value with every NaN or infinity as null, so the JSON printed is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def cmd_bon(args) -> int:
    check_output_file(args.plot, "--plot", inputs=(args.samples,), read_folders=(args.model, args.gold),
                      overwrite=args.overwrite)  # before any scoring: a refusal comes at once
    records = read_sample_records(args.samples)
    sizes = sorted({len(r["responses"]) for r in records})
    if len(sizes) > 1:
        print(f"[rmcore] prompts have {sizes[0]} to {sizes[-1]} samples; the curve runs to n = {sizes[0]}",
              file=sys.stderr)
    proxy_model = load_reward_model(args.model, "--model")
    gold_model = load_reward_model(args.gold, "--gold") if args.gold else None
    started = time.perf_counter()
    with ProgressCallback("scoring") as progress_bar:
        proxy, gold = score_proxy_and_gold(records, proxy_model, gold_model, args.batch_size,
                                           on_progress=progress_bar)
    scoring_s = time.perf_counter() - started
    check_finite(records, proxy, args.model, args.samples)
    if gold is not None:
        check_finite(records, gold, args.gold, args.samples)
    started = time.perf_counter()
    curve = curve_from_records(records, proxy, gold)
    curve_s = time.perf_counter() - started
    print(f"[rmcore] scored {sum(len(r) for r in proxy)} answers in {scoring_s:.1f} s; curve computed in "
          f"{curve_s * 1000:.1f} ms", file=sys.stderr)
    if args.plot:
        atomic_write_text(args.plot, bon_figure(curve).to_html(include_plotlyjs=True, full_html=True))
        print(f"[rmcore] wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps(json_safe({**curve.to_dict(), "rows": curve.rows(), "scoring_s": scoring_s,
                                    "curve_s": curve_s}), allow_nan=False))
        return 0
    print(f"best-of-n over {curve.prompts} prompts x {curve.samples_per_prompt} samples "
          f"(one sample's reward spread: proxy sd {curve.proxy_std:.3f}"
          + (f", gold sd {curve.gold_std:.3f})" if gold else ")"))
    header = f"{'n':>4} {'KL':>6} {'win':>5} {'proxy':>16}" + (f" {'gold':>16}" if gold else "") + f" {'tokens':>7}"
    print(header)
    for row in curve.rows():
        line = f"{row['n']:>4} {row['kl']:>6.3f} {row['win_rate']:>5.3f} {row['proxy']:>8.3f} ± {row['proxy_se']:<5.3f}"
        if gold:
            line += f" {row['gold']:>8.3f} ± {row['gold_se']:<5.3f}"
        print(line + f" {row['length']:>7.1f}")
    return 0


def cmd_rlhf(args) -> int:
    if args.method == "grpo" and not grpo_available():
        raise ModelError("--method grpo needs TRL, which this installation lacks (pip install -r "
                         "bench/requirements.txt installs it); use --method rs")
    check_policy_output(Path(args.out), args.resume, RLHFConfig(reward_model=args.reward_model, policy=args.policy,
                                                                 gold_model=args.gold),
                        inputs=(args.prompts, args.eval))  # before reading anything: a refusal comes at once
    prompts = read_prompts(args.prompts)[: args.limit]
    if args.eval:
        train_prompts, eval_prompts = prompts, read_prompts(args.eval)
    else:
        train_prompts, eval_prompts = split_prompts(prompts, args.eval_fraction, args.seed)
    config = RLHFConfig(
        reward_model=args.reward_model, policy=args.policy, method=args.method, gold_model=args.gold,
        rounds=args.rounds, n=args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, lr=args.lr,
        lora_r=args.lora_r, lora_alpha=2 * args.lora_r, kl_coef=args.kl_coef, batch_size=args.batch_size,
        eval_fraction=0.0 if args.eval else args.eval_fraction, seed=args.seed, sft_epochs=args.sft_epochs,
        keep=args.keep, eval_samples=args.eval_samples,
    )
    config.check()
    printer = StepPrinter("policy", quiet=args.quiet)
    try:
        result = train_policy(config, train_prompts, eval_prompts, args.out, on_step=printer, resume=args.resume)
    finally:
        printer.close()
    print(summary_line(result, Path(args.out)), file=sys.stderr)
    return 130 if result.stopped else 0


def summary_line(result: RLHFResult, out: Path) -> str:
    """What the run did, in one line: the held-out reward (and gold), length and KL, first to last."""
    evals = [h for h in result.history if h.get("event") == "eval"]
    line = f"saved {result.out_dir} after {result.steps} steps"
    if len(evals) >= 2:
        first, last = evals[0], evals[-1]
        sd = first.get("reward_std") or float("nan")
        line += (f"; held-out reward {first['reward_mean']:.3f} -> {last['reward_mean']:.3f} "
                 f"({(last['reward_mean'] - first['reward_mean']) / sd:+.2f} sd of the starting policy's rewards)")
        if "gold_mean" in first:
            line += f", gold {first['gold_mean']:.3f} -> {last['gold_mean']:.3f}"
        line += (f", length {first['length_mean']:.0f} -> {last['length_mean']:.0f} tokens, "
                 f"KL to the start {last['kl']:.2f} nats")
    if result.stopped:
        line += f" (stopped early: continue with --resume; checkpoint in {out / CHECKPOINT_DIR})"
    return line
