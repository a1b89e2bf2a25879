"""The `rmcore` argument parser: every command's options, defaults and help, with no heavy import.

Defaults come from the settings dataclasses (rmcore.training.config.TrainConfig,
rmcore.policy.config.RLHFConfig, rmcore.serving.config.ServeConfig), so `rmcore --help` and the
library agree and the parser needs no torch.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from rmcore import __version__
from rmcore.cli.options import (
    DTYPE_OPTION,
    MODEL_HELP,
    POLICY_HELP,
    PROMPTS_HELP,
    at_least,
    coefficient,
    duration,
    formats,
    fraction,
    int_at_least,
    max_length_tokens,
    positive_float,
    positive_int,
    steps_count,
    turns,
)
from rmcore.policy.config import DEFAULT_LR, METHODS, SEQUENCES_PER_CALL, RLHFConfig
from rmcore.policy.lesson_data import LESSON_SEED
from rmcore.serving.config import add_arguments as add_serve_arguments
from rmcore.training.config import TrainConfig, default, parse_duration

MAX_LENGTH_HELP = "default: the model's training max length"

EPILOG = """examples:
  rmcore validate ../shared/data/oasst/en_100_tree.jsonl
  rmcore train data.jsonl --out runs/rm --mode head --epochs 3
  rmcore score --model runs/rm --prompt "Name a prime" --response 7 --response 8 --json
  rmcore score --model runs/rm --data samples.jsonl --out scored.jsonl
  rmcore eval held_out.jsonl --model runs/rm --json
  rmcore serve --model runs/rm --port 8000
  rmcore sample prompts.txt --n 32 --out samples.jsonl
  rmcore bon samples.jsonl --model runs/rm --gold runs/rm-gold --plot bon.html
  rmcore rlhf prompts.txt --reward-model runs/rm --out runs/policy --method rs --rounds 2
"""


NOT_ON_THE_COMMAND_LINE = ("cache_features", "max_tokens")


_OPTION_NAMES = {"time_budget_s": "--time-budget"}


_METAVARS = {"checkpoint_every": "STEPS", "eval_every": "STEPS", "model": "NAME|DIR"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmcore", description="Train, score and evaluate reward models from ranked human preferences.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rmcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_validate, _add_train, _add_score, _add_eval, _add_serve):
        add(sub)
    _add_sample(sub, _defaults())  # sample, bon, rlhf: a reward model at work on a policy
    _add_bon(sub)
    _add_rlhf(sub, _defaults())
    _add_probe(sub)
    _add_lesson(sub)
    sub.add_parser("embedded", help="print the folder of the embedded model (converting it on first use)")
    return parser


def _add_validate(sub) -> None:
    """rmcore validate: check a data file and summarise it."""
    p = sub.add_parser("validate", help="check a data file and summarise it",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read DATA, detect its format and report what training would use.\n"
                                   f"Formats (detected from the fields):{formats()}")
    p.add_argument("data", metavar="DATA", help=".jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--model", default="embedded", help=MODEL_HELP + " (its tokenizer counts truncation)")
    p.add_argument("--max-length", type=max_length_tokens, default=default("max_length"),
                   help=f"tokens of prompt + response (default {default('max_length')}, as training's)")
    p.add_argument("--no-tokenize", action="store_true", help="skip counting truncated examples (no model needed)")


def _add_train(sub) -> None:
    """rmcore train: every TrainConfig field as an option, plus the data, output and run options."""
    p = sub.add_parser("train", help="train a reward model", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train on ranked groups with the Bradley-Terry loss over every ordered pair.\n"
                                   f"Formats (detected from the fields):{formats()}")
    p.add_argument("data", metavar="DATA", help="ranked preferences: .jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the trained model (a standard HF folder): new, empty, or an rmcore model to "
                        "replace; a folder with a stopped run's checkpoint needs --resume")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--eval", metavar="DATA", help="held-out data file (otherwise --eval-fraction of DATA)")
    _add_config_options(p, held)
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N prompts (groups of ranked responses, after reading the file)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint (same data and options)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ensemble", type=positive_int, default=1, metavar="N",
                   help="train N members (seeds --seed, +1, ...; each on a bootstrap resample of the prompts) into "
                        "DIR/members/<i>, read together by rmcore.training.ensemble; head mode: they share the cached "
                        "trunk features, lora/full: N full trainings (default 1: one model)")


def _add_config_options(parser: argparse.ArgumentParser, held_out_group) -> None:
    """`rmcore train`'s options, one per TrainConfig field: default, choices and help come from there."""
    for spec in fields(TrainConfig):
        if spec.name in NOT_ON_THE_COMMAND_LINE:
            continue
        flag = _OPTION_NAMES.get(spec.name, "--" + spec.name.replace("_", "-"))
        default = spec.default if spec.default is not MISSING else None
        words = spec.metadata["help"]
        options = {"default": default, "metavar": _METAVARS.get(spec.name, spec.name.split("_")[-1].upper()),
                   "help": words if "default" in words else f"{words} (default {default})"}
        if "choices" in spec.metadata:
            options.update(choices=spec.metadata["choices"], metavar=None)
        elif spec.name == "time_budget_s":
            options.update(type=duration(parse_duration), metavar="TIME",
                           help="wall-clock budget for the whole command, e.g. 30m, 90s, 1h30m: the steps are "
                                "fitted to it from the measured time per step, and the run ends on time with a "
                                "finished, evaluated model (default none)")
        elif spec.name == "max_length":
            options["type"] = max_length_tokens
        elif spec.name == "max_turns":
            options.update(type=turns, metavar="N|all|auto")
        elif spec.metadata.get("minimum") == 0:
            options["type"] = steps_count
        elif "minimum" in spec.metadata:
            options["type"] = int_at_least(spec.metadata["minimum"], f"must be at least {spec.metadata['minimum']}")
        elif spec.name in ("eval_fraction",):
            options["type"] = fraction
        elif spec.name in ("center_coefficient", "weight_decay", "max_grad_norm", "warmup_ratio"):
            options["type"] = coefficient
        elif spec.name in ("lr",):
            options["type"] = float
        elif spec.name in ("seed", "lora_alpha"):
            options["type"] = int
        target = held_out_group if spec.name == "eval_fraction" else parser
        target.add_argument(flag, dest=spec.name, **options)


def _add_score(sub) -> None:
    """rmcore score: one prompt's candidates, or every response of a file."""
    p = sub.add_parser(
        "score", help="score candidate responses to one prompt, or every response in a file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score the candidates of one prompt (--prompt, --response ...), or every response of\n"
                    "every prompt in a file (--data) into JSON lines: prompt, responses, rewards, best, source,\n"
                    "and ranks when the file has them. --data reads every training format, and unranked\n"
                    "candidates too: prompt + responses (a list per row) or prompt + response (a row each).",
    )
    p.add_argument("--model", default="embedded", help=MODEL_HELP + " (a base model gets an untrained head)")
    p.add_argument("--prompt", help="the instruction")
    p.add_argument("--response", action="append", metavar="TEXT", help="a candidate; repeat for more")
    p.add_argument("--data", metavar="FILE", help="score every response in FILE instead (any format rmcore reads)")
    p.add_argument("--out", metavar="FILE", help="with --data: write the JSON lines here (default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (never a file of the model)")
    p.add_argument("--json", action="store_true", help="print rewards, probabilities (K x K) and best as JSON")
    p.add_argument("--max-length", type=max_length_tokens, default=None, help=MAX_LENGTH_HELP)
    p.add_argument("--batch-size", type=positive_int, default=8, help="with --data: prompts per forward pass")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="with --data: the first N prompts")
    p.add_argument("--dtype", **DTYPE_OPTION)


def _add_eval(sub) -> None:
    """rmcore eval: accuracy and the rest against human ranks; several models compared."""
    p = sub.add_parser(
        "eval", help="evaluate a model on ranked data", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score every response of DATA and compare with the human ranks: accuracy over\n"
                    "every strictly ordered pair, by rank gap, calibration, length bias, best of n.\n"
                    f"Formats (detected from the fields):{formats()}",
    )
    p.add_argument("data", metavar="DATA", help="ranked preferences: .jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help=MODEL_HELP + "; repeat (--model A --model B) to compare each model with the first "
                                     "(paired bootstrap interval of the accuracy difference)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--max-length", type=max_length_tokens, default=None, help=MAX_LENGTH_HELP)
    p.add_argument("--batch-size", type=positive_int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--dtype", **DTYPE_OPTION)
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--pairs-csv", metavar="FILE", help="also write every scored pair to a CSV file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --pairs-csv if it exists (never a file of the model)")


def _add_serve(sub) -> None:
    """rmcore serve: the HTTP reward service (options from rmcore.serving.service)."""
    p = sub.add_parser("serve", help="serve a reward model over HTTP (/score, OpenRLHF's /get_reward)",
                       description="Serve a reward model over HTTP: POST /score, POST /get_reward (OpenRLHF's "
                                   "remote reward format), GET /health, GET /metrics. Concurrent requests are "
                                   "scored together. Binds to 127.0.0.1 unless --host says otherwise.")
    add_serve_arguments(p)


def _add_probe(sub) -> None:
    """rmcore probe: counterfactual edits of one answer."""
    p = sub.add_parser(
        "probe", help="how the reward moves for edits of one answer (flattery, filler, repetition, ...)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score an answer and counterfactual edits of it that make it no better (a closing\n"
                    "pleasantry, flattery, repeating it, filler, bullet points) or worse (cut in half, wrong\n"
                    "facts written confidently with --wrong). Changes are in units of the reward's spread\n"
                    "(its standard deviation) over --spread-data.",
    )
    p.add_argument("--model", default="embedded", help=MODEL_HELP + " (a base model gets an untrained head)")
    p.add_argument("--prompt", required=True, help="the instruction")
    p.add_argument("--response", required=True, metavar="TEXT", help="the answer to edit")
    p.add_argument("--wrong", metavar="TEXT", help="your version of the answer with wrong facts in a confident tone")
    p.add_argument("--spread-data", metavar="FILE",
                   help="data whose reward spread is the unit (default: the model's held_out.jsonl when it has "
                        "one, else the demo set)")
    p.add_argument("--spread-limit", type=positive_int, default=40, metavar="N",
                   help="prompts of --spread-data to score (default 40)")
    p.add_argument("--json", action="store_true", help="print the rewards and changes as JSON")
    p.add_argument("--no-record", action="store_true",
                   help="do not add the results to the model folder's rmcore.json and model card (by default a "
                        "model rmcore saved keeps its last 20 probed answers there)")
    p.add_argument("--max-length", type=max_length_tokens, default=None, help=MAX_LENGTH_HELP)
    p.add_argument("--dtype", **DTYPE_OPTION)


def _defaults():
    return {f.name: f.default for f in fields(RLHFConfig) if f.name != "reward_model"}


def _add_sample(sub, defaults: dict) -> None:
    p = sub.add_parser(
        "sample", help="sample n answers per prompt from a policy (resumable)",
        description="Sample N answers per prompt with the policy, batched with the KV cache, and append them to "
                    "OUT as unranked candidates (rmcore score --data reads it). A rerun with the same settings "
                    "continues where it stopped; answers that hit --max-new-tokens are marked (hit_limit).")
    p.add_argument("prompts", metavar="PROMPTS", help=PROMPTS_HELP)
    p.add_argument("--n", type=at_least(1), default=32, help="answers per prompt (default 32)")
    p.add_argument("--out", required=True, metavar="FILE.jsonl",
                   help="output; must be new, or a samples file of the same settings to continue")
    p.add_argument("--model", default="embedded", help=POLICY_HELP)
    p.add_argument("--max-new-tokens", type=at_least(1), default=defaults["max_new_tokens"],
                   help=f"longest answer in tokens (default {defaults['max_new_tokens']})")
    p.add_argument("--temperature", type=positive_float, default=defaults["temperature"],
                   help=f"sampling temperature (default {defaults['temperature']}: the policy's own distribution)")
    p.add_argument("--top-p", type=positive_float, default=1.0, help="nucleus sampling (default 1.0: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--limit", type=at_least(1), default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--sequences-per-call", type=at_least(1), default=SEQUENCES_PER_CALL,
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
    p.add_argument("--batch-size", type=at_least(1), default=8, help="prompts per scoring pass (default 8)")


def _add_lesson(sub) -> None:
    p = sub.add_parser(
        "lesson", help="a ready lesson: goodhart (reward hacking you can watch: the gold judge turns down)",
        description="goodhart: trains a proxy reward model whose labeler liked answers ending on '!' and a gold "
                    "judge whose data penalises them (head mode, from the demo set), samples the embedded policy, "
                    "and measures best-of-n for n = 1, 2, 4, ...: KL, proxy and gold reward with standard errors, "
                    "the trait's share, and the Gao-Schulman-Hilton fit gold(d) = d(alpha - beta d), d = sqrt(KL). "
                    "What it trained and sampled stays in --out: a second run there is quick.")
    p.add_argument("name", choices=["goodhart"], help="the lesson")
    p.add_argument("--out", required=True, metavar="DIR", help="the lesson's folder (created; reused by a second run)")
    p.add_argument("--seed", type=int, default=LESSON_SEED,
                   help=f"the judges' initialisation and the policy's sampling (default {LESSON_SEED})")
    p.add_argument("--json", action="store_true", help="print the points, the fits and the criteria as JSON")


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
    p.add_argument("--method", choices=METHODS, default=defaults["method"], help=f"default {defaults['method']}")
    p.add_argument("--gold", metavar="RM2", help="an independent reward model that only judges (never optimised)")
    p.add_argument("--policy", default=defaults["policy"], help=POLICY_HELP)
    p.add_argument("--eval", metavar="PROMPTS2", help="held-out prompts (default: --eval-fraction of PROMPTS)")
    p.add_argument("--eval-fraction", type=fraction, default=defaults["eval_fraction"],
                   help=f"share of prompts held out when --eval is not given (default {defaults['eval_fraction']})")
    p.add_argument("--limit", type=at_least(1), default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--rounds", type=at_least(1), default=defaults["rounds"],
                   help="rs: sample/pick/fine-tune rounds; grpo: passes over the prompts "
                        f"(default {defaults['rounds']})")
    p.add_argument("--n", type=at_least(1), default=defaults["n"],
                   help=f"samples per prompt (rs: best of n; grpo: group size) (default {defaults['n']})")
    p.add_argument("--max-new-tokens", type=at_least(1), default=defaults["max_new_tokens"],
                   help=f"longest answer in tokens (default {defaults['max_new_tokens']})")
    p.add_argument("--temperature", type=positive_float, default=defaults["temperature"],
                   help=f"sampling temperature (default {defaults['temperature']})")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate (default: "
                        + ", ".join(f"{m} {lr:.0e}".replace("e-0", "e-") for m, lr in DEFAULT_LR.items()) + ")")
    p.add_argument("--kl-coef", type=coefficient, default=defaults["kl_coef"],
                   help=f"beta of the KL term to the starting policy (default {defaults['kl_coef']})")
    p.add_argument("--batch-size", type=at_least(1), default=defaults["batch_size"],
                   help=f"answers per optimizer step (default {defaults['batch_size']})")
    p.add_argument("--sft-epochs", type=at_least(1), default=defaults["sft_epochs"],
                   help=f"rs: passes over each round's picks (default {defaults['sft_epochs']})")
    p.add_argument("--keep", type=at_least(1), default=defaults["keep"],
                   help=f"rs: answers kept per prompt each round, the best K of --n (default {defaults['keep']})")
    p.add_argument("--eval-samples", type=at_least(1), default=defaults["eval_samples"],
                   help=f"answers per held-out prompt at each evaluation (default {defaults['eval_samples']})")
    p.add_argument("--lora-r", type=at_least(1), default=defaults["lora_r"],
                   help=f"LoRA rank (default {defaults['lora_r']}; alpha is twice it)")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
