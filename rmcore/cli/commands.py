"""The `rmcore` command line: validate data, train, score candidates, evaluate.

Every failure a user can cause (bad data, a missing model folder, bad options) prints one line on
stderr and exits with status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from rmcore.core.errors import RmcoreError, printable

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


def _int_at_least(minimum: int, wanted: str):
    """An argparse type: a whole number of at least `minimum`; `wanted` says so in the error."""
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{wanted}, got {value}")
        return value

    parse.__name__ = "int"  # argparse's own message then reads "invalid int value"
    return parse


_positive_int = _int_at_least(1, "must be at least 1")
_steps = _int_at_least(0, "must be 0 (each epoch) or a number of steps")
_max_length = _int_at_least(16, "must be at least 16 tokens (prompt + one response)")


def _coefficient(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


# TrainConfig fields that are not command-line options (the library and the app set them).
NOT_ON_THE_COMMAND_LINE = ("cache_features", "max_tokens")
_OPTION_NAMES = {"time_budget_s": "--time-budget"}
_METAVARS = {"checkpoint_every": "STEPS", "eval_every": "STEPS", "model": "NAME|DIR"}


def _add_config_options(parser: argparse.ArgumentParser, held_out_group) -> None:
    """`rmcore train`'s options, one per TrainConfig field: default, choices and help come from there."""
    from dataclasses import MISSING, fields

    from rmcore.training.config import TrainConfig, parse_duration

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
            options.update(type=_duration(parse_duration), metavar="TIME",
                           help="wall-clock budget for the whole command, e.g. 30m, 90s, 1h30m: the steps are "
                                "fitted to it from the measured time per step, and the run ends on time with a "
                                "finished, evaluated model (default none)")
        elif spec.name == "max_length":
            options["type"] = _max_length
        elif spec.metadata.get("minimum") == 0:
            options["type"] = _steps
        elif "minimum" in spec.metadata:
            options["type"] = _int_at_least(spec.metadata["minimum"], f"must be at least {spec.metadata['minimum']}")
        elif spec.name in ("eval_fraction",):
            options["type"] = _fraction
        elif spec.name in ("center_coefficient", "weight_decay", "max_grad_norm", "warmup_ratio"):
            options["type"] = _coefficient
        elif spec.name in ("lr",):
            options["type"] = float
        elif spec.name in ("seed", "lora_alpha"):
            options["type"] = int
        target = held_out_group if spec.name == "eval_fraction" else parser
        target.add_argument(flag, dest=spec.name, **options)


def _duration(parse):
    def read(text: str) -> float:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = "duration"
    return read


MODEL_HELP = "base or trained model: 'embedded' (SmolLM2-135M-Instruct, the default) or a local HF folder"
DTYPE_OPTION = {"choices": ("float32", "bfloat16"), "default": "float32",
                "help": "precision of the trunk (default float32); bfloat16 is faster on GPUs and on CPUs with "
                        "bfloat16 instructions, with rewards a little off float32's"}


def _formats() -> str:
    from rmcore.data import RANKED_FORMATS

    return "".join(f"\n  {name:15} {text}" for name, text in RANKED_FORMATS.items())


def build_parser() -> argparse.ArgumentParser:
    from rmcore import __version__
    from rmcore.cli.policy import add_commands as add_policy_commands

    parser = argparse.ArgumentParser(
        prog="rmcore", description="Train, score and evaluate reward models from ranked human preferences.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rmcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_validate, _add_train, _add_score, _add_eval, _add_serve):
        add(sub)
    add_policy_commands(sub)  # sample, bon, rlhf
    _add_probe(sub)
    sub.add_parser("embedded", help="print the folder of the embedded model (converting it on first use)")
    return parser


def _add_validate(sub) -> None:
    """rmcore validate: check a data file and summarise it."""
    from rmcore.training.config import default

    p = sub.add_parser("validate", help="check a data file and summarise it",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read DATA, detect its format and report what training would use.\n"
                                   f"Formats (detected from the fields):{_formats()}")
    p.add_argument("data", metavar="DATA", help=".jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--model", default="embedded", help=MODEL_HELP + " (its tokenizer counts truncation)")
    p.add_argument("--max-length", type=_max_length, default=default("max_length"),
                   help=f"tokens of prompt + response (default {default('max_length')}, as training's)")
    p.add_argument("--no-tokenize", action="store_true", help="skip counting truncated examples (no model needed)")


def _add_train(sub) -> None:
    """rmcore train: every TrainConfig field as an option, plus the data, output and run options."""
    p = sub.add_parser("train", help="train a reward model", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train on ranked groups with the Bradley-Terry loss over every ordered pair.\n"
                                   f"Formats (detected from the fields):{_formats()}")
    p.add_argument("data", metavar="DATA", help="ranked preferences: .jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the trained model (a standard HF folder): new, empty, or an rmcore model to "
                        "replace; a folder with a stopped run's checkpoint needs --resume")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--eval", metavar="DATA", help="held-out data file (otherwise --eval-fraction of DATA)")
    _add_config_options(p, held)
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use only the first N prompts (groups of ranked responses, after reading the file)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint (same data and options)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ensemble", type=_positive_int, default=1, metavar="N",
                   help="train N members (seeds --seed, +1, ...; each on a bootstrap resample of the prompts) into "
                        "DIR/members/<i>, read together by rmcore.training.ensemble; head mode: they share the cached trunk "
                        "features, lora/full: N full trainings (default 1: one model)")


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
    p.add_argument("--max-length", type=_max_length, default=None, help="default: the model's training max length")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="with --data: prompts per forward pass")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="with --data: the first N prompts")
    p.add_argument("--dtype", **DTYPE_OPTION)


def _add_eval(sub) -> None:
    """rmcore eval: accuracy and the rest against human ranks; several models compared."""
    p = sub.add_parser(
        "eval", help="evaluate a model on ranked data", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score every response of DATA and compare with the human ranks: accuracy over\n"
                    "every strictly ordered pair, by rank gap, calibration, length bias, best of n.\n"
                    f"Formats (detected from the fields):{_formats()}",
    )
    p.add_argument("data", metavar="DATA", help="ranked preferences: .jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help=MODEL_HELP + "; repeat (--model A --model B) to compare each model with the first "
                                     "(paired bootstrap interval of the accuracy difference)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--max-length", type=_max_length, default=None, help="default: the model's training max length")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--dtype", **DTYPE_OPTION)
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--pairs-csv", metavar="FILE", help="also write every scored pair to a CSV file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --pairs-csv if it exists (never a file of the model)")


def _add_serve(sub) -> None:
    """rmcore serve: the HTTP reward service (options from rmcore.serving.service)."""
    p = sub.add_parser("serve", help="serve a reward model over HTTP (/score, OpenRLHF's /get_reward)",
                       description="Serve a reward model over HTTP: POST /score, POST /get_reward (OpenRLHF's "
                                   "remote reward format), GET /health, GET /metrics. Concurrent requests are "
                                   "scored together. Binds to 127.0.0.1 unless --host says otherwise.")
    from rmcore.serving.service import add_arguments as add_serve_arguments

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
    p.add_argument("--spread-limit", type=_positive_int, default=40, metavar="N",
                   help="prompts of --spread-data to score (default 40)")
    p.add_argument("--json", action="store_true", help="print the rewards and changes as JSON")
    p.add_argument("--no-record", action="store_true",
                   help="do not add the results to the model folder's rmcore.json and model card (by default a "
                        "model rmcore saved keeps its last 20 probed answers there)")
    p.add_argument("--max-length", type=_max_length, default=None, help="default: the model's training max length")
    p.add_argument("--dtype", **DTYPE_OPTION)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _quiet_libraries()
    args = parser.parse_args(argv)
    try:
        return {"validate": cmd_validate, "train": cmd_train, "score": cmd_score, "eval": cmd_eval, "probe": cmd_probe,
                "embedded": cmd_embedded, "serve": cmd_serve, **_policy_commands()}[args.command](args)
    except RmcoreError as exc:
        print(printable(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(printable(f"rmcore {args.command}: {exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rmcore validate FILE | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


def _policy_commands() -> dict:
    from rmcore.cli.policy import COMMANDS

    return COMMANDS


def _quiet_libraries() -> None:
    """Our own progress output only: no per-file progress bars or init warnings from transformers."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _read(path: str, limit: int | None = None, announce: bool = True):
    from rmcore.data import read_preferences

    data = read_preferences(path)
    if limit:
        data.groups = data.groups[:limit]
    if announce:
        _say_what_was_skipped(data.report)
    return data


def _say_what_was_skipped(report) -> None:
    """One line each on stderr for skipped rows and warnings, as validate lists them in full."""
    if report.skipped:
        first = report.skipped[0]
        print(printable(f"skipped {len(report.skipped)} of {report.rows} rows, the first {first.where}: "
                        f"{first.reason} (rmcore validate {report.path} lists them)"), file=sys.stderr)
    if report.warnings:
        more = f" and {len(report.warnings) - 1} more" if len(report.warnings) > 1 else ""
        print(printable(f"warning: {report.warnings[0]}{more} (rmcore validate lists them)"), file=sys.stderr)


def cmd_validate(args) -> int:
    data = _read(args.data, announce=False)  # the report lists every skipped row and warning
    if not args.no_tokenize:
        from rmcore.data.encoding import count_truncated, encode_groups
        from rmcore.model.reward_model import choose_pad_token, load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(args.model)[0])
        choose_pad_token(tokenizer)
        prompts, responses = count_truncated(encode_groups(tokenizer, data.groups, args.max_length))
        data.report.truncated_prompts, data.report.truncated_responses = prompts, responses
        data.report.max_length = args.max_length
    if args.json:
        print(json.dumps(data.report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(printable("\n".join(data.report.summary_lines()), keep_newlines=True))
    return 0


def cmd_train(args) -> int:
    import time
    from dataclasses import fields

    from rmcore.data import split_groups
    from rmcore.training.train import TrainConfig, train

    started_at = time.monotonic()  # a --time-budget covers the whole command
    values = {spec.name: getattr(args, spec.name) for spec in fields(TrainConfig) if hasattr(args, spec.name)}
    if args.eval:
        values["eval_fraction"] = 0.0
    config = TrainConfig(**values)
    config.check()
    from rmcore.core.folders import check_output_folder

    # before reading the data: a refusal must come at once
    check_output_folder(Path(args.out), args.resume, inputs=(args.data, args.eval), read_folders=(args.model,))
    data = _read(args.data, args.limit)
    if args.eval:
        train_groups, eval_groups = data.groups, _read(args.eval).groups
    else:
        train_groups, eval_groups = split_groups(data.groups, config.eval_fraction, config.seed)
    printer = _ProgressPrinter(quiet=args.quiet)
    summary = {"file": args.data, "format": data.report.format, "skipped_rows": len(data.report.skipped)}
    if args.ensemble > 1:
        return _train_ensemble(args, config, train_groups, eval_groups, summary)
    try:
        result = train(config, train_groups, args.out, eval_groups=eval_groups, on_step=printer,
                       resume=args.resume, data_summary=summary, started_at=started_at)
    except KeyboardInterrupt:  # a second Ctrl-C: quit at once
        printer.close()
        has_checkpoint = (Path(args.out) / "checkpoint" / "state.json").is_file()
        print("interrupted; " + (f"continue from the last checkpoint with: rmcore train ... --out {args.out} --resume"
                                 if has_checkpoint else "nothing was saved"), file=sys.stderr)
        return 130
    finally:
        printer.close()
    if result.is_main_process:
        ev = result.final.get("eval") or {}
        tr = result.final.get("train") or {}
        line = f"saved {result.out_dir} after {result.steps}/{result.total_steps} steps"
        if tr:
            line += f"; train loss {tr.get('loss', float('nan')):.4f} accuracy {tr.get('accuracy', float('nan')):.3f}"
        if ev:
            line += f"; held-out accuracy {ev['eval_accuracy']:.3f} on {ev['eval_comparisons']} comparisons"
        if config.time_budget_s and not result.stopped:
            line += f"; {time.monotonic() - started_at:.0f} s of a {config.time_budget_s:.0f} s budget"
        if result.stopped:
            line += f" (stopped early: resume with --resume; checkpoint in {Path(args.out) / 'checkpoint'})"
        print(line, file=sys.stderr)
    return 130 if result.stopped else 0  # a stopped run is not a success: `train && eval` must not go on


def _train_ensemble(args, config, train_groups, eval_groups, summary) -> int:
    """`train --ensemble N`: rmcore.training.ensemble.train_ensemble, with a fresh progress bar per member."""
    from rmcore.training.ensemble import train_ensemble

    if args.resume:
        raise ValueError("--resume continues one model; an ensemble is trained into a new folder")
    printers = [_ProgressPrinter(quiet=args.quiet)]

    def on_step(event: dict) -> None:
        if event.get("event") == "phase" and str(event.get("phase", "")).startswith("ensemble member"):
            printers[-1].close()
            printers.append(_ProgressPrinter(quiet=args.quiet))
        printers[-1](event)

    try:
        info = train_ensemble(config, args.ensemble, train_groups, args.out, eval_groups=eval_groups,
                              on_step=on_step, data_summary=summary)
    finally:
        printers[-1].close()
    held = ", ".join("n/a" if m["held_out"] is None else f"{m['held_out']:.3f}" for m in info["members"])
    seconds = ", ".join(f"{s:.1f}" for s in info["seconds"])
    print(f"saved an ensemble of {len(info['members'])} members in {args.out} (members/<i>, ensemble.json); "
          f"held-out accuracy per member: {held}; seconds per member: {seconds}", file=sys.stderr)
    return 130 if info.get("stopped") else 0


class _ProgressPrinter:
    """The CLI's on_step callback: a tqdm bar with loss and accuracy, phases as log lines."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None

    def __call__(self, metrics: dict) -> None:
        if self.quiet:
            return
        event = metrics.get("event")
        if event == "phase":
            if self.bar is None:
                text = metrics["phase"]
                if metrics.get("eta_s") is not None:
                    from rmcore.training.estimate import format_duration

                    text += f", about {format_duration(metrics['eta_s'])} left"
                print(f"[rmcore] {text}", file=sys.stderr, flush=True)
        elif event == "step":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=metrics["total_steps"], initial=metrics["step"] - 1, unit="step",
                                dynamic_ncols=True, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['accuracy']:.2f}",
                                 lr=f"{metrics['lr']:.1e}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        elif event == "eval":
            message = (f"[rmcore] held-out after step {metrics['step']}: loss {metrics['eval_loss']:.4f}, "
                       f"accuracy {metrics['eval_accuracy']:.3f} ({metrics['eval_comparisons']} comparisons)")
            (self.bar.write(message, file=sys.stderr) if self.bar else print(message, file=sys.stderr))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_score(args) -> int:
    from rmcore.model.reward_model import RewardModel

    if args.data:
        if args.prompt is not None or args.response:
            raise ValueError("give either --data FILE or --prompt with --response, not both")
        return _score_file(args)
    if args.out:
        raise ValueError("--out goes with --data (one prompt's scores print to the terminal)")
    if args.prompt is None or not args.response:
        raise ValueError("give --prompt TEXT and at least one --response TEXT, or --data FILE")
    empty = [str(i) for i, text in enumerate(args.response) if not text.strip()]
    if empty:
        raise ValueError(f"--response [{', '.join(empty)}] is empty; give each candidate some text")
    model = RewardModel.load(args.model, max_length=args.max_length, dtype=args.dtype)
    result = model.score(args.prompt, args.response)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    if not result.trained:
        print("note: this model's reward head is untrained (random); train one with `rmcore train`.")
    cuts = (["the prompt lost its start"] if result.truncated_prompt else []) + [
        f"response [{i}] lost its end" for i in result.truncated_responses]
    if cuts:
        print(f"note: over --max-length {model.max_length} tokens, {', '.join(cuts)}; rewards are for the cut text.")
    order = sorted(range(len(result.rewards)), key=lambda i: -result.rewards[i])
    for place, i in enumerate(order, start=1):
        text = args.response[i].replace("\n", " ")
        print(f"{place}. reward {result.rewards[i]:+.4f}  [{i}] {text[:70]}{'...' if len(text) > 70 else ''}")
    print("\nP[i][j] = sigma(r_i - r_j), the probability that i is preferred over j:")
    k = len(result.rewards)
    print("      " + "".join(f"{j:>7}" for j in range(k)))
    for i in range(k):
        print(f"{i:>5} " + "".join(f"{result.probabilities[i][j]:>7.3f}" for j in range(k)))
    return 0


def _score_file(args) -> int:
    """`score --data`: rewards of every response in a file, as JSON lines, written atomically."""
    import time

    from rmcore.analysis.scoring import scored_records
    from rmcore.core.outputs import atomic_writer, check_output_file
    from rmcore.core.progress import progress
    from rmcore.data import read_preferences
    from rmcore.model.reward_model import RewardModel

    data = read_preferences(args.data, for_scoring=True)
    groups = data.groups[: args.limit] if args.limit else data.groups
    out = check_output_file(args.out, "--out", inputs=(args.data,), read_folders=(args.model,),
                            overwrite=args.overwrite)
    replaced = out is not None and out.exists()
    model = RewardModel.load(args.model, max_length=args.max_length, dtype=args.dtype)
    if not model.trained:
        print("note: this model's reward head is untrained (random); train one with `rmcore train`.", file=sys.stderr)
    if data.report.skipped:
        first = data.report.skipped[0]
        print(printable(f"skipped {len(data.report.skipped)} rows that cannot be read, the first {first.where}: "
                        f"{first.reason} (rmcore validate lists them)"), file=sys.stderr)
    start = time.perf_counter()
    # --out is written only when every line is done (a hidden temporary file until then)
    with atomic_writer(out) if out is not None else contextlib.nullcontext(sys.stdout) as sink:
        with progress(len(groups), "prompts", "score") as bar:  # a bar on a terminal, else a line every 5 s
            for record in scored_records(model, groups, args.batch_size, lambda done: bar.update(done - bar.n)):
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
    responses = sum(len(g.responses) for g in groups)
    where = f"; {'replaced' if replaced else 'wrote'} {out}" if out is not None else ""
    print(f"scored {responses} responses of {len(groups)} prompts in {time.perf_counter() - start:.1f} s{where}",
          file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from rmcore.analysis.evaluate import categories_for, compare
    from rmcore.core.outputs import atomic_writer, check_output_file

    pairs_csv = check_output_file(args.pairs_csv, "--pairs-csv", inputs=(args.data,),
                                  read_folders=tuple(args.model or ()), overwrite=args.overwrite)
    from rmcore.model.reward_model import resolve_model_path
    from rmcore.training.ensemble import is_ensemble

    for name in args.model or []:  # a missing second model fails now, not after the first is scored
        if not is_ensemble(name):
            resolve_model_path(name)
    data = _read(args.data, args.limit)
    categories = categories_for(args.data, data.groups)
    results = []
    for name in args.model or ["embedded"]:
        results.append(_evaluate_one(args, name, data.groups, categories))
    comparisons = [compare(results[0], other) for other in results[1:]]
    extra = {"data": args.data, "format": data.report.format, "skipped_rows": len(data.report.skipped)}
    if pairs_csv is not None:
        import pandas as pd

        from rmcore.core.csv_safe import safe_table

        frames = [pd.DataFrame(r.pairs).assign(model=r.summary["model"]) for r in results]
        with atomic_writer(pairs_csv) as handle:
            safe_table(pd.concat(frames)).to_csv(handle, index=False)
    if args.json:
        if len(results) == 1:
            print(json.dumps({**results[0].summary, **extra}, indent=2))
        else:
            print(json.dumps({"models": [{**r.summary, **extra} for r in results], "comparisons": comparisons},
                             indent=2))
        return 0
    for result in results:
        _print_eval(result, args.data, data.report.format)
    for comparison in comparisons:
        _print_comparison(comparison)
    return 0


def _evaluate_one(args, name: str, groups, categories):
    from rmcore.analysis.evaluate import evaluate
    from rmcore.core.progress import progress
    from rmcore.model.reward_model import RewardModel
    from rmcore.training.ensemble import Ensemble, evaluate_ensemble, is_ensemble

    ensemble = is_ensemble(name)
    model = Ensemble.load(name) if ensemble else RewardModel.load(name, max_length=args.max_length, dtype=args.dtype)
    # a bar on a terminal, else a line every 5 s (a log file or CI would otherwise see nothing for minutes)
    with progress(100, "% of tokens", f"eval {Path(name).name}" if len(args.model or []) > 1 else "eval") as bar:
        score = evaluate_ensemble if ensemble else evaluate
        return score(model, groups, batch_size=args.batch_size, categories=categories,
                     on_progress=lambda share: bar.update(round(100 * share) - bar.n))


def _with_se(value, se) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} ± {se:.3f}" if se is not None else f"{value:.3f}"


def _print_eval(result, data_name: str, fmt: str) -> None:
    from rmcore.analysis.evaluate import worst_pairs

    s = result.summary
    if not s["trained"]:
        print("note: this model's reward head is untrained (random); expect accuracy near 0.5.")
    base, ranking = s["length_baseline"], s["ranking"]
    print(f"model:       {s['model']}")
    print(f"data:        {data_name} ({fmt}, {s['prompts']} prompts, {s['comparisons']} comparisons)")
    print(f"accuracy:    {_with_se(s['accuracy'], s['accuracy_se'])} over every strictly ordered pair "
          f"(± one standard error); \"the longer answer wins\": {_with_se(base['accuracy'], base['se'])}")
    for gap, v in s["by_rank_gap"].items():
        print(f"  rank gap {gap}: {v['accuracy']:.3f} ({v['comparisons']} comparisons)")
    if s["best_of_group_accuracy"] is not None:
        print(f"best-of-n:   {s['best_of_group_accuracy']:.3f} (top reward is a human-best response)")
    if ranking["prompts"]:
        print(f"ranking:     Kendall's tau {ranking['kendall_tau']:+.3f} per prompt, best-of-K "
              f"{ranking['best_of_k_accuracy']:.3f} ({ranking['prompts']} prompts with K > 2)")
    for name, v in (s["by_category"] or {}).items():
        print(f"  {name}: {_with_se(v['accuracy'], v['se'])} ({v['comparisons']} comparisons; "
              f"length baseline {v['length_baseline']:.3f})")
    lc, agree = s["length_correlation"], s["length_agreement"]
    controlled, logistic = s["length_controlled"], s["length_logistic"]
    print("length bias: " + (f"corr(reward, response tokens) = {lc:+.3f}" if lc is not None else "corr n/a")
          + (f"; prefers the longer answer in {agree:.0%} of pairs" if agree is not None else ""))
    if controlled["accuracy"] is not None:
        print(f"  pairs of similar length (within {controlled['max_relative_difference']:.0%}): "
              f"{_with_se(controlled['accuracy'], controlled['se'])} ({controlled['comparisons']} comparisons)")
    if logistic["accuracy"] is not None:
        print(f"  a logistic model on length alone ({logistic['folds']}-fold by prompt): {logistic['accuracy']:.3f}")
    if s["length_warning"]:
        print(f"warning:     {s['length_warning']}")
    if s.get("ensemble"):
        members = ", ".join(f"{a:.3f}" for a in s["ensemble"]["member_accuracies"])
        print(f"ensemble:    {s['ensemble']['members']} members (each alone: {members}); "
              "accuracy as they disagree more:")
        for b in s["ensemble"]["accuracy_by_disagreement"]:
            print(f"  spread of margins {b['low']:.2f}-{b['high']:.2f}: {b['accuracy']:.3f} ({b['comparisons']} pairs)")
    print("calibration: predicted -> observed (count)")
    for b in s["calibration"]:
        if b["count"]:
            low, high = b["bin_low"], b["bin_high"]
            print(f"  {low:.1f}-{high:.1f}: {b['predicted']:.3f} -> {b['observed']:.3f} ({b['count']})")
    print("worst pairs:")
    for p in worst_pairs(result, 3):
        print(f"  r_w - r_l = {p['margin']:+.3f} at {p['source']}: {p['prompt'][:60]!r}")
    print()


def _print_comparison(c: dict) -> None:
    from rmcore.analysis.evaluate import compare_sentence

    print(f"A: {c['model_a']}  accuracy {_with_se(c['accuracy_a'], c['accuracy_a_se'])}")
    print(f"B: {c['model_b']}  accuracy {_with_se(c['accuracy_b'], c['accuracy_b_se'])}")
    print(compare_sentence(c))
    if c["top_disagreements"]:
        print("pairs where they disagree most (P(winner) by A -> by B):")
        for row in c["top_disagreements"][:5]:
            print(f"  {row['p_a']:.3f} -> {row['p_b']:.3f} at {row['source']}: {row['prompt'][:60]!r}")
    print()


def cmd_serve(args) -> int:
    from rmcore.serving.service import main as serve

    return serve(args)


def cmd_probe(args) -> int:
    from rmcore.analysis.probes import reward_spread, run_probes, verdict
    from rmcore.model.reward_model import RewardModel
    from rmcore.training.ensemble import Ensemble, is_ensemble

    if not args.response.strip():
        raise ValueError("--response is empty; give the answer to edit")
    spread_file = _spread_data(args)
    ensemble = is_ensemble(args.model)  # an ensemble's reward is its members' mean
    model = Ensemble.load(args.model) if ensemble else RewardModel.load(args.model, max_length=args.max_length,
                                                                        dtype=args.dtype)
    spread_data = _read(str(spread_file))
    spread = reward_spread(model, spread_data.groups, args.spread_limit)
    source = f"{spread_file} ({min(len(spread_data.groups), args.spread_limit)} prompts)"
    report = run_probes(model, args.prompt, args.response, args.wrong, spread, source)
    recorded, notes = _record_probes(args, report, ensemble)
    if args.json:
        print(json.dumps({**report.to_dict(), "model": model.name, "trained": model.trained,
                          "recorded": recorded}, indent=2))
        for note in notes:
            print(note, file=sys.stderr)
        return 0
    if not model.trained:
        print("note: this model's reward head is untrained (random); train one with `rmcore train`.")
    unit = f"spread {report.spread:.3f}" if report.spread else "reward"
    print(f"reward of the answer: {report.original_reward:+.4f}")
    print(f"changes in units of the reward's spread ({unit}, the standard deviation on {report.spread_source}):")
    for row in sorted(report.rows, key=lambda r: -r["delta_units"]):
        print(f"  {row['delta_units']:+6.2f}  ({row['delta']:+.3f})  {row['label']:<45} {verdict(row)}")
    if report.truncated:
        print(f"note: cut to fit --max-length {model.max_length}: {', '.join(report.truncated)}")
    for note in notes:
        print(f"note: {note}")
    return 0


def _record_probes(args, report, ensemble: bool) -> tuple[bool, list[str]]:
    """rmcore.analysis.probes.record_probes into the model's folder when it is one rmcore saved: whether it was, and
    what happened, in words."""
    from rmcore.analysis.probes import record_probes
    from rmcore.core.folders import METADATA_FILE

    if args.no_record:
        return False, []
    if ensemble or not (Path(args.model) / METADATA_FILE).is_file():
        what = "an ensemble (each member has its own card)" if ensemble else "not a model folder rmcore saved"
        return False, [f"not recorded: {args.model} is {what}"]
    return True, record_probes(args.model, report, args.prompt, args.response)


def _spread_data(args) -> Path:
    """The file whose reward spread is the unit: --spread-data, the model's held-out prompts, or the demo set."""
    from rmcore.data import demo_data_path

    if args.spread_data:
        return Path(args.spread_data)
    held_out = Path(args.model) / "held_out.jsonl"
    return held_out if held_out.is_file() else demo_data_path()


def cmd_embedded(args) -> int:
    from rmcore.model.embedded import embedded_model_dir

    print(embedded_model_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
