"""The `rmcore` command line: validate data, train, score candidates, evaluate.

Every failure a user can cause (bad data, a missing model folder, bad options) prints one line on
stderr and exits with status 2; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rmcore.errors import RmcoreError

EPILOG = """examples:
  rmcore validate ../shared/data/oasst/en_100_tree.jsonl
  rmcore train data.jsonl --out runs/rm --mode head --epochs 3
  rmcore score --model runs/rm --prompt "Name a prime" --response 7 --response 8 --json
  rmcore score --model runs/rm --data samples.jsonl --out scored.jsonl
  rmcore eval held_out.jsonl --model runs/rm --json
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


def build_parser() -> argparse.ArgumentParser:
    from rmcore.data import RANKED_FORMATS
    from rmcore.train import DEFAULT_LR, MODES

    parser = argparse.ArgumentParser(
        prog="rmcore", description="Train, score and evaluate reward models from ranked human preferences.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from rmcore import __version__

    parser.add_argument("--version", action="version", version=f"rmcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = "base or trained model: 'embedded' (SmolLM2-135M-Instruct, the default) or a local HF folder"
    formats = "".join(f"\n  {name:15} {text}" for name, text in RANKED_FORMATS.items())
    dtype_option = {"choices": ("float32", "bfloat16"), "default": "float32",
                    "help": "precision of the trunk (default float32); bfloat16 is faster on GPUs and on CPUs with "
                            "bfloat16 instructions, with rewards a little off float32's"}

    p = sub.add_parser("validate", help="check a data file and summarise it",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read DATA, detect its format and report what training would use.\n"
                                   f"Formats (detected from the fields):{formats}")
    p.add_argument("data", metavar="DATA", help=".jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--model", default="embedded", help=model_help + " (its tokenizer counts truncation)")
    p.add_argument("--max-length", type=_max_length, default=512, help="tokens of prompt + response (default 512)")
    p.add_argument("--no-tokenize", action="store_true", help="skip counting truncated examples (no model needed)")

    p = sub.add_parser("train", help="train a reward model", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train on ranked groups with the Bradley-Terry loss over every ordered pair.\n"
                                   f"Formats (detected from the fields):{formats}")
    p.add_argument("data", metavar="DATA", help="ranked preferences: .jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the trained model (a standard HF folder): new, empty, or an rmcore model to "
                        "replace; a folder with a stopped run's checkpoint needs --resume")
    p.add_argument("--model", default="embedded", help=model_help)
    p.add_argument("--mode", choices=MODES, default="head",
                   help="head: train only the reward neuron on cached trunk features (fast, CPU-friendly); "
                        "lora: adapters on every linear layer + the neuron; full: every weight (default head)")
    p.add_argument("--epochs", type=_positive_int, default=1, help="passes over the training prompts (default 1)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default by mode: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="prompts per step, each with all its responses; halve it if you run out of memory")
    p.add_argument("--max-length", type=_max_length, default=512,
                   help="tokens of prompt + one response; longer prompts are cut from the left (default 512)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--eval", metavar="DATA", help="held-out data file (otherwise --eval-fraction of DATA)")
    held.add_argument("--eval-fraction", type=_fraction, default=0.1, help="share of prompts held out (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="head initialisation, held-out split and data order (default 0)")
    p.add_argument("--center-coefficient", type=_coefficient, default=0.0,
                   help="weight c of c x mean(r^2) in the loss, keeps rewards near 0 (default 0)")
    p.add_argument("--lora-r", type=_positive_int, default=16, help="LoRA rank (mode lora; default 16)")
    p.add_argument("--checkpoint-every", type=_steps, default=0, metavar="STEPS", help="0 = at each epoch end")
    p.add_argument("--eval-every", type=_steps, default=0, metavar="STEPS", help="0 = at each epoch end")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                   help="use only the first N prompts (groups of ranked responses, after reading the file)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint (same data and options)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "score", help="score candidate responses to one prompt, or every response in a file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score the candidates of one prompt (--prompt, --response ...), or every response of\n"
                    "every prompt in a file (--data) into JSON lines: prompt, responses, rewards, best, source,\n"
                    "and ranks when the file has them. --data reads every training format, and unranked\n"
                    "candidates too: prompt + responses (a list per row) or prompt + response (a row each).",
    )
    p.add_argument("--model", default="embedded", help=model_help + " (a base model gets an untrained head)")
    p.add_argument("--prompt", help="the instruction")
    p.add_argument("--response", action="append", metavar="TEXT", help="a candidate; repeat for more")
    p.add_argument("--data", metavar="FILE", help="score every response in FILE instead (any format rmcore reads)")
    p.add_argument("--out", metavar="FILE", help="with --data: write the JSON lines here (default: standard output)")
    p.add_argument("--json", action="store_true", help="print rewards, probabilities (K x K) and best as JSON")
    p.add_argument("--max-length", type=_max_length, default=None, help="default: the model's training max length")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="with --data: prompts per forward pass")
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="with --data: the first N prompts")
    p.add_argument("--dtype", **dtype_option)

    p = sub.add_parser(
        "eval", help="evaluate a model on ranked data", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score every response of DATA and compare with the human ranks: accuracy over\n"
                    "every strictly ordered pair, by rank gap, calibration, length bias, best of n.\n"
                    f"Formats (detected from the fields):{formats}",
    )
    p.add_argument("data", metavar="DATA", help="ranked preferences: .jsonl, .json, .csv or .parquet, optionally .gz")
    p.add_argument("--model", default="embedded", help=model_help)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--max-length", type=_max_length, default=None, help="default: the model's training max length")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="prompts per forward pass (default 8)")
    p.add_argument("--dtype", **dtype_option)
    p.add_argument("--limit", type=_positive_int, default=None, metavar="N", help="use only the first N prompts")
    p.add_argument("--pairs-csv", metavar="FILE", help="also write every scored pair to a CSV file")

    p = sub.add_parser("embedded", help="print the folder of the embedded model (converting it on first use)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _quiet_libraries()
    args = parser.parse_args(argv)
    try:
        return {"validate": cmd_validate, "train": cmd_train, "score": cmd_score, "eval": cmd_eval,
                "embedded": cmd_embedded}[args.command](args)
    except RmcoreError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"rmcore {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `rmcore validate FILE | head`: the reader left; that is fine
        sys.stderr.close()
        return 0


def _quiet_libraries() -> None:
    """Our own progress output only: no per-file progress bars or init warnings from transformers."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _read(path: str, limit: int | None = None):
    from rmcore.data import read_preferences

    data = read_preferences(path)
    if limit:
        data.groups = data.groups[:limit]
    return data


def cmd_validate(args) -> int:
    data = _read(args.data)
    if not args.no_tokenize:
        from rmcore.encoding import count_truncated, encode_groups
        from rmcore.model import choose_pad_token, load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(args.model)[0])
        choose_pad_token(tokenizer)
        prompts, responses = count_truncated(encode_groups(tokenizer, data.groups, args.max_length))
        data.report.truncated_prompts, data.report.truncated_responses = prompts, responses
        data.report.max_length = args.max_length
    if args.json:
        print(json.dumps(data.report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print("\n".join(data.report.summary_lines()))
    return 0


def cmd_train(args) -> int:
    from rmcore.data import split_groups
    from rmcore.train import TrainConfig, train

    data = _read(args.data, args.limit)
    if args.eval:
        train_groups, eval_groups = data.groups, _read(args.eval).groups
    else:
        train_groups, eval_groups = split_groups(data.groups, args.eval_fraction, args.seed)
    config = TrainConfig(
        model=args.model, mode=args.mode, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, eval_fraction=0.0 if args.eval else args.eval_fraction, seed=args.seed,
        center_coefficient=args.center_coefficient, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
        checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
    )
    config.check()
    printer = _ProgressPrinter(quiet=args.quiet)
    summary = {"file": args.data, "format": data.report.format, "skipped_rows": len(data.report.skipped)}
    try:
        result = train(config, train_groups, args.out, eval_groups=eval_groups, on_step=printer,
                       resume=args.resume, data_summary=summary)
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
        if result.stopped:
            line += f" (stopped early: resume with --resume; checkpoint in {Path(args.out) / 'checkpoint'})"
        print(line, file=sys.stderr)
    return 130 if result.stopped else 0  # a stopped run is not a success: `train && eval` must not go on


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
                print(f"[rmcore] {metrics['phase']}", file=sys.stderr, flush=True)
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
    from rmcore.model import RewardModel

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

    from tqdm import tqdm

    from rmcore.data import read_preferences
    from rmcore.model import RewardModel
    from rmcore.scoring import scored_records

    data = read_preferences(args.data, for_scoring=True)
    groups = data.groups[: args.limit] if args.limit else data.groups
    out = _output_file(args.out, "--out", args.data)
    replaced = out is not None and out.exists()
    model = RewardModel.load(args.model, max_length=args.max_length, dtype=args.dtype)
    if not model.trained:
        print("note: this model's reward head is untrained (random); train one with `rmcore train`.", file=sys.stderr)
    if data.report.skipped:
        first = data.report.skipped[0]
        print(f"skipped {len(data.report.skipped)} rows that cannot be read, the first {first.where}: {first.reason} "
              "(rmcore validate lists them)", file=sys.stderr)
    start = time.perf_counter()
    part = out.with_name(out.name + ".partial") if out is not None else None
    sink = part.open("w", encoding="utf-8") if part is not None else sys.stdout
    try:
        with tqdm(total=len(groups), unit="prompt", disable=None, file=sys.stderr, dynamic_ncols=True) as bar:
            for record in scored_records(model, groups, args.batch_size, lambda done: bar.update(done - bar.n)):
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
    except BaseException:
        if part is not None:
            sink.close()
            part.unlink(missing_ok=True)
        raise
    if part is not None:
        sink.close()
        part.replace(out)
    responses = sum(len(g.responses) for g in groups)
    where = f"; {'replaced' if replaced else 'wrote'} {out}" if out is not None else ""
    print(f"scored {responses} responses of {len(groups)} prompts in {time.perf_counter() - start:.1f} s{where}",
          file=sys.stderr)
    return 0


def _output_file(name: str | None, flag: str, data: str) -> Path | None:
    """Check an output file before any work: not the input, not a folder, in a folder that exists."""
    if not name:
        return None
    out = Path(name)
    if out.resolve() == Path(data).resolve():
        raise ValueError(f"{flag} {out} is the input file; choose another name")
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a folder; give a file name")
    if not out.parent.is_dir():
        raise ValueError(f"{flag} {out}: no such folder {out.parent}")
    return out


def cmd_eval(args) -> int:
    from rmcore.evaluate import evaluate, worst_pairs
    from rmcore.model import RewardModel

    pairs_csv = _output_file(args.pairs_csv, "--pairs-csv", args.data)
    data = _read(args.data, args.limit)
    model = RewardModel.load(args.model, max_length=args.max_length, dtype=args.dtype)
    from tqdm import tqdm

    with tqdm(total=100, unit="% of tokens", disable=None, file=sys.stderr, dynamic_ncols=True) as bar:
        result = evaluate(model, data.groups, batch_size=args.batch_size,
                          on_progress=lambda share: bar.update(round(100 * share) - bar.n))
    summary = {**result.summary, "data": args.data, "format": data.report.format,
               "skipped_rows": len(data.report.skipped)}
    if pairs_csv is not None:
        import pandas as pd

        part = pairs_csv.with_name(pairs_csv.name + ".partial")
        pd.DataFrame(result.pairs).to_csv(part, index=False)
        part.replace(pairs_csv)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    s = result.summary
    if not model.trained:
        print("note: this model's reward head is untrained (random); expect accuracy near 0.5.")
    print(f"model:       {s['model']}")
    print(f"data:        {args.data} ({data.report.format}, {s['prompts']} prompts, {s['comparisons']} comparisons)")
    print(f"accuracy:    {s['accuracy']:.3f} over every strictly ordered pair")
    for gap, v in s["by_rank_gap"].items():
        print(f"  rank gap {gap}: {v['accuracy']:.3f} ({v['comparisons']} comparisons)")
    if s["best_of_group_accuracy"] is not None:
        print(f"best-of-n:   {s['best_of_group_accuracy']:.3f} (top reward is a human-best response)")
    lc = s["length_correlation"]
    print(f"length bias: corr(reward, response tokens) = {lc:+.3f}" if lc is not None else "length bias: n/a")
    print("calibration: predicted -> observed (count)")
    for b in s["calibration"]:
        if b["count"]:
            low, high = b["bin_low"], b["bin_high"]
            print(f"  {low:.1f}-{high:.1f}: {b['predicted']:.3f} -> {b['observed']:.3f} ({b['count']})")
    print("worst pairs:")
    for p in worst_pairs(result, 3):
        print(f"  r_w - r_l = {p['margin']:+.3f} at {p['source']}: {p['prompt'][:60]!r}")
    return 0


def cmd_embedded(args) -> int:
    from rmcore.embedded import embedded_model_dir

    print(embedded_model_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
