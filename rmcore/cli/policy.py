"""The command-line verbs that put a reward model to work on a policy: sample, bon, rlhf.

    rmcore sample prompts.txt --n 32 --out samples.jsonl
    rmcore bon samples.jsonl --model runs/rm --gold runs/rm-gold --plot bon.html
    rmcore rlhf prompts.txt --reward-model runs/rm --out runs/policy --method rs --rounds 2

Kept apart from rmcore/cli.py, which registers them with `add_commands` and dispatches to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from rmcore.cli.commands import _coefficient, _fraction, _int_at_least  # cli imports this module lazily
from rmcore.core.errors import DataError, ModelError, RmcoreError

POLICY_HELP = ("the policy that writes answers: 'embedded' (SmolLM2-135M-Instruct, the default) "
               "or a local causal-LM folder")
PROMPTS_HELP = ("prompts: a .txt file with one instruction per line, or any data file rmcore reads "
                "(its prompts, each once)")


def _at_least(minimum: int):
    return _int_at_least(minimum, f"must be at least {minimum}")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _defaults():
    from rmcore.policy.rlhf import RLHFConfig

    return {f.name: f.default for f in fields(RLHFConfig) if f.name != "reward_model"}


def add_commands(sub) -> None:
    """Register `sample`, `bon` and `rlhf` on the CLI's subparsers."""
    defaults = _defaults()
    _add_sample(sub, defaults)
    _add_bon(sub)
    _add_rlhf(sub, defaults)


def _add_sample(sub, defaults: dict) -> None:
    from rmcore.policy.sampling import SEQUENCES_PER_CALL

    p = sub.add_parser(
        "sample", help="sample n answers per prompt from a policy (resumable)",
        description="Sample N answers per prompt with the policy, batched with the KV cache, and append them to "
                    "OUT as unranked candidates (rmcore score --data reads it). A rerun with the same settings "
                    "continues where it stopped; answers that hit --max-new-tokens are marked (hit_limit).")
    p.add_argument("prompts", metavar="PROMPTS", help=PROMPTS_HELP)
    p.add_argument("--n", type=_at_least(1), default=32, help="answers per prompt (default 32)")
    p.add_argument("--out", required=True, metavar="FILE.jsonl",
                   help="output; must be new, or a samples file of the same settings to continue")
    p.add_argument("--model", default="embedded", help=POLICY_HELP)
    p.add_argument("--max-new-tokens", type=_at_least(1), default=defaults["max_new_tokens"],
                   help=f"longest answer in tokens (default {defaults['max_new_tokens']})")
    p.add_argument("--temperature", type=_positive_float, default=defaults["temperature"],
                   help=f"sampling temperature (default {defaults['temperature']}: the policy's own distribution)")
    p.add_argument("--top-p", type=_positive_float, default=1.0, help="nucleus sampling (default 1.0: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--limit", type=_at_least(1), default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--sequences-per-call", type=_at_least(1), default=SEQUENCES_PER_CALL,
                   help=f"sequences generated together (default {SEQUENCES_PER_CALL}; lower it if memory is short)")


def _add_bon(sub) -> None:
    p = sub.add_parser(
        "bon", help="best-of-n curve of a samples file: reward, gold reward and length of the pick against n",
        description="For n = 1, 2, 4, ..., N: the expected reward of the best-of-n pick, computed exactly from the "
                    "N samples per prompt (order statistics, no resampling), the gold reward of the same pick "
                    "(--gold), its length, KL(best-of-n || policy) = log n - (n-1)/n and the win rate n/(n+1).")
    p.add_argument("samples", metavar="SAMPLES", help="a file from rmcore sample (or any prompt + responses file)")
    p.add_argument("--model", required=True, metavar="RM", help="the reward model that picks (the proxy)")
    p.add_argument("--gold", metavar="RM2", help="a second, independent reward model that judges the picks")
    p.add_argument("--json", action="store_true", help="print the curve as JSON")
    p.add_argument("--plot", metavar="FILE.html", help="write the plotly figure to a self-contained HTML file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    p.add_argument("--batch-size", type=_at_least(1), default=8, help="prompts per scoring pass (default 8)")


def _add_rlhf(sub, defaults: dict) -> None:
    p = sub.add_parser(
        "rlhf", help="fine-tune the policy toward a reward model (rejection sampling or GRPO)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune the policy (LoRA, merged on save) toward the reward model and save it as a plain "
                    "causal-LM folder.\n  rs:   rounds of sample n -> keep the best (by reward minus kl-coef x "
                    "log pi/pi_ref) -> fine-tune on the picks\n  grpo: TRL's GRPOTrainer with the reward model "
                    "as reward function\nHeld-out prompts report the mean reward (and --gold), the KL to the "
                    "starting policy and the answer length after each round; before/after answers are saved in "
                    "OUT/rmcore_policy.json.")
    p.add_argument("prompts", metavar="PROMPTS", help=PROMPTS_HELP)
    p.add_argument("--reward-model", required=True, metavar="RM", help="the reward model to optimise (the proxy)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new, empty, or a policy to replace)")
    p.add_argument("--method", choices=("rs", "grpo"), default=defaults["method"], help="default rs")
    p.add_argument("--gold", metavar="RM2", help="an independent reward model that only judges (never optimised)")
    p.add_argument("--policy", default=defaults["policy"], help=POLICY_HELP)
    p.add_argument("--eval", metavar="PROMPTS2", help="held-out prompts (default: --eval-fraction of PROMPTS)")
    p.add_argument("--eval-fraction", type=_fraction, default=defaults["eval_fraction"],
                   help=f"share of prompts held out when --eval is not given (default {defaults['eval_fraction']})")
    p.add_argument("--limit", type=_at_least(1), default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--rounds", type=_at_least(1), default=defaults["rounds"],
                   help="rs: sample/pick/fine-tune rounds; grpo: passes over the prompts "
                        f"(default {defaults['rounds']})")
    p.add_argument("--n", type=_at_least(1), default=defaults["n"],
                   help=f"samples per prompt (rs: best of n; grpo: group size) (default {defaults['n']})")
    p.add_argument("--max-new-tokens", type=_at_least(1), default=defaults["max_new_tokens"],
                   help=f"longest answer in tokens (default {defaults['max_new_tokens']})")
    p.add_argument("--temperature", type=_positive_float, default=defaults["temperature"],
                   help=f"sampling temperature (default {defaults['temperature']})")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: rs 3e-4, grpo 1e-5)")
    p.add_argument("--kl-coef", type=_coefficient, default=defaults["kl_coef"],
                   help=f"beta of the KL term to the starting policy (default {defaults['kl_coef']})")
    p.add_argument("--batch-size", type=_at_least(1), default=defaults["batch_size"],
                   help=f"answers per optimizer step (default {defaults['batch_size']})")
    p.add_argument("--sft-epochs", type=_at_least(1), default=defaults["sft_epochs"],
                   help=f"rs: passes over each round's picks (default {defaults['sft_epochs']})")
    p.add_argument("--keep", type=_at_least(1), default=defaults["keep"],
                   help=f"rs: answers kept per prompt each round, the best K of --n (default {defaults['keep']})")
    p.add_argument("--eval-samples", type=_at_least(1), default=defaults["eval_samples"],
                   help=f"answers per held-out prompt at each evaluation (default {defaults['eval_samples']})")
    p.add_argument("--lora-r", type=_at_least(1), default=defaults["lora_r"],
                   help=f"LoRA rank (default {defaults['lora_r']}; alpha is twice it)")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")


# ----------------------------------------------------------------------------- sample


def cmd_sample(args) -> int:
    from rmcore.core.outputs import check_output_file
    from rmcore.policy.sampling import (
        Progress,
        SamplingSettings,
        load_policy,
        prompts_done,
        read_prompts,
        write_samples,
    )

    out = check_output_file(args.out, "--out", inputs=(args.prompts,), read_folders=(args.model,), append=True)
    prompts = read_prompts(args.prompts)[: args.limit]
    settings = SamplingSettings(model=args.model, n=args.n, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    already = prompts_done(out, settings)  # refuses a file that is not ours before loading anything
    if all(_key(p) in already for p in prompts):
        print(f"{out}: all {len(prompts)} prompts already sampled with these settings; nothing to do", file=sys.stderr)
        return 0
    print(f"[rmcore] loading the policy ({args.model})", file=sys.stderr, flush=True)
    model, tokenizer, name = load_policy(args.model)
    started = time.perf_counter()
    written, skipped = write_samples(model, tokenizer, prompts, out, settings,
                                     sequences_per_call=args.sequences_per_call,
                                     on_progress=Progress(f"sampling {args.n} answers per prompt"))
    seconds = time.perf_counter() - started
    from rmcore.policy.sampling import read_samples_file

    records = read_samples_file(out)
    answers = sum(len(r["responses"]) for r in records)
    cut = sum(sum(r["hit_limit"]) for r in records)
    tokens = sum(sum(r["num_tokens"]) for r in records[-written:]) if written else 0
    print(f"wrote {written} prompts x {args.n} answers to {out} in {seconds:.0f} s ({tokens / max(seconds, 1e-9):.0f} "
          f"tokens/s){f'; {skipped} prompts were already there' if skipped else ''}; {cut} of {answers} answers "
          f"hit the {args.max_new_tokens}-token limit", file=sys.stderr)
    return 0


def _key(prompt) -> str:
    from rmcore.policy.sampling import prompt_key

    return prompt_key(prompt)


# ----------------------------------------------------------------------------- bon


def read_sample_records(path: str) -> list[dict]:
    """Records with prompt and responses: a samples file as written, or any file rmcore scores."""
    from rmcore.data import read_preferences
    from rmcore.policy.sampling import read_samples_file

    file = Path(path)
    if not file.is_file():
        raise DataError(path, "no such file" if not file.exists() else "is a folder, not a samples file")
    try:
        records = read_samples_file(file)
    except DataError:
        records = []
    if records:
        return records
    groups = read_preferences(file, for_scoring=True).groups
    return [{"prompt": g.to_record()["prompt"], "responses": g.responses} for g in groups]


def cmd_bon(args) -> int:
    from rmcore.core.outputs import check_output_file
    from rmcore.policy.best_of_n import bon_figure, curve_from_records, score_proxy_and_gold
    from rmcore.policy.rlhf import load_reward_model
    from rmcore.policy.sampling import Progress

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
    proxy, gold = score_proxy_and_gold(records, proxy_model, gold_model, args.batch_size,
                                       on_progress=Progress("scoring"))
    scoring_s = time.perf_counter() - started
    started = time.perf_counter()
    curve = curve_from_records(records, proxy, gold)
    curve_s = time.perf_counter() - started
    print(f"[rmcore] scored {sum(len(r) for r in proxy)} answers in {scoring_s:.1f} s; curve computed in "
          f"{curve_s * 1000:.1f} ms", file=sys.stderr)
    if args.plot:
        from rmcore.core.outputs import atomic_write_text

        atomic_write_text(args.plot, bon_figure(curve).to_html(include_plotlyjs=True, full_html=True))
        print(f"[rmcore] wrote {args.plot}", file=sys.stderr)
    if args.json:
        print(json.dumps({**curve.to_dict(), "rows": curve.rows(), "scoring_s": scoring_s, "curve_s": curve_s}))
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


# ----------------------------------------------------------------------------- rlhf


def cmd_rlhf(args) -> int:
    from rmcore.policy.rlhf import RLHFConfig, check_policy_output, grpo_available, split_prompts, train_policy
    from rmcore.policy.sampling import read_prompts

    if args.method == "grpo" and not grpo_available():
        raise ModelError("--method grpo is unavailable in this installation (rmcore.policy.grpo is missing); use --method rs")
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
    printer = PolicyProgress(quiet=args.quiet)
    try:
        result = train_policy(config, train_prompts, eval_prompts, args.out, on_step=printer, resume=args.resume)
    finally:
        printer.close()
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
        line += f" (stopped early: continue with --resume; checkpoint in {Path(args.out) / 'checkpoint'})"
    print(line, file=sys.stderr)
    return 130 if result.stopped else 0


class PolicyProgress:
    """The on_step callback of `rmcore rlhf`: phases and held-out results as lines, steps as a tqdm bar."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None

    def _print(self, message: str) -> None:
        (self.bar.write(message, file=sys.stderr) if self.bar else print(message, file=sys.stderr, flush=True))

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        kind = event.get("event")
        if kind == "phase":
            self._print(f"[rmcore] {event['phase']}")
        elif kind == "step":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=event["total_steps"], initial=event["step"] - 1, unit="step",
                                dynamic_ncols=True, file=sys.stderr, mininterval=2.0)
            self.bar.update(event["step"] - self.bar.n)
            postfix = {"loss": f"{event['loss']:.3f}"} if "loss" in event else {}
            self.bar.set_postfix(postfix)
        elif kind == "eval":
            text = f"[rmcore] held-out after step {event['step']}: reward {event['reward_mean']:.3f}"
            if "reward_se" in event:
                text += f" ± {event['reward_se']:.3f}"
            if "gold_mean" in event:
                text += f", gold {event['gold_mean']:.3f}"
            text += f", KL {event['kl']:.3f} nats, length {event['length_mean']:.1f} tokens"
            self._print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


COMMANDS = {"sample": cmd_sample, "bon": cmd_bon, "rlhf": cmd_rlhf}
__all__ = ["COMMANDS", "add_commands", "RmcoreError"]
