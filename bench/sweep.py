"""Choose rmcore's recipe on the validation split: each trial trains for the same wall budget and is scored on
the HH validation parts (never the test parts). One JSON line per trial in bench/results/.

    python bench/sweep.py --baseline                                  # untrained start + length-only, on val
    python bench/sweep.py --budget 5m --trial '{"mode": "full", "lr": 1e-4}'
    python bench/sweep.py --budget 5m --trial '{"mode": "lora", "lr": 1e-3, "lora_r": 64}' --time-scale 1.2

A trial is a `quality.Recipe` (mode, lr, batch_size, max_length, epochs, center_coefficient, lora_r, ...);
its pairs are the longest prefix of the mixed HH training parts that the budget allows, planned here from
one timed batch (`quality.plan_groups`, the same fit for every trial even while the library's own
time budget changes), so every trial gets the same wall time with a fully decayed schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402  (the bench folder is not a package)

DEFAULT_LOG = quality.RESULTS / f"{time.strftime('%Y%m%d', time.gmtime())}-sweep-hh.jsonl"  # one file a day


def recipe_from(options: dict[str, Any]) -> quality.Recipe:
    known = {f.name for f in fields(quality.Recipe)}
    extra = {k: v for k, v in options.items() if k not in known}
    return quality.Recipe(**{k: v for k, v in options.items() if k in known}, extra=extra)


def val_parts(splits: dict[str, quality.SetSplit], names: list[str]) -> dict[str, list]:
    return {name: splits[name].val for name in names}


def run_trial(options: dict[str, Any], budget_s: float, model: str, sets: list[str], time_scale: float,
              splits: dict[str, quality.SetSplit], clock: str) -> dict[str, Any]:
    recipe = recipe_from(options)
    pool = quality.mixed([splits[name].train for name in sets])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rm"
        record = quality.train_rmcore(recipe, model, pool, budget_s, out, time_scale=time_scale, fit="bench",
                                      clock=clock, on_step=lambda e: None)
        started = time.perf_counter()
        record["val"] = {name: quality.evaluate_folder(str(out), groups)
                         for name, groups in val_parts(splits, sets).items()}
        record["eval_s"] = time.perf_counter() - started
    accuracies = [row["accuracy"] for row in record["val"].values()]
    record["val_mean"] = sum(accuracies) / len(accuracies)
    return record


def run_baseline(model: str, sets: list[str], splits: dict[str, quality.SetSplit],
                 max_length: int) -> dict[str, Any]:
    record: dict[str, Any] = {"trainer": "baseline", "max_length": max_length, "val": {}}
    for name, groups in val_parts(splits, sets).items():
        row = quality.evaluate_folder(model, groups, max_length=max_length)
        record["val"][name] = {"untrained": row, "length_only": quality.length_baseline(groups)}
    return record


def summary_markdown(records: list[dict[str, Any]]) -> str:
    """The sweep's trials as a table, in the order they ran, beside the untrained start and length-only."""
    lines = ["| trial | budget | steps | pairs seen | loop CPU s | val helpful | val harmless | mean | progressive |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(row: dict[str, Any] | None) -> str:
        return "" if not row else f"{row['accuracy']:.3f} ± {row['se']:.3f}"

    for record in records:
        val = record.get("val", {})
        if record.get("trainer") == "baseline":
            for label, pick in (("untrained start", lambda v: cell(v["untrained"])),
                                ("length-only", lambda v: f"{v['length_only']:.3f}")):
                cells = [pick(val[name]) if name in val else "" for name in ("helpful", "harmless")]
                lines.append(f"| {label} | | | | | {cells[0]} | {cells[1]} | | |")
            continue
        options = ", ".join(f"{k} {v}" for k, v in record.get("options", {}).items())
        progressive = record.get("progressive_accuracy")
        progressive_cell = "" if progressive is None else f"{progressive:.3f} ({record['progressive_comparisons']})"
        lines.append(
            f"| {options} | {record['budget_s'] / 60:g} min {record.get('clock', '')} | {record['steps']} | "
            f"{record['comparisons_seen']} | {record.get('loop_cpu_s') or 0:.0f} | {cell(val.get('helpful'))} | "
            f"{cell(val.get('harmless'))} | {record['val_mean']:.3f} | "
            f"{progressive_cell} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trial", action="append", default=[], help="a recipe as JSON (repeatable)")
    parser.add_argument("--baseline", action="store_true", help="untrained start and length-only on val")
    parser.add_argument("--budget", type=quality.parse_duration, default=300.0, help="wall budget per trial")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--sets", default="helpful,harmless", help="HH sets whose train parts mix")
    parser.add_argument("--max-length", type=int, default=512, help="for --baseline")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="real / planned loop time measured by earlier trials (corrects the one-batch timing)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="the budget's clock: this process's CPU time (default: steady on a shared machine; "
                             "use with --threads 1) or wall time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch's default)")
    parser.add_argument("--val-limit", type=int, default=0, help="use only the first N prompts of each val part")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG, help="JSON lines, appended")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny splits (tests)")
    parser.add_argument("--summary", action="store_true", help="print the --log's trials as a Markdown table")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary_markdown([json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]))
        return 0
    sets = args.sets.split(",")
    quality.quiet(args.threads)
    sizes = quality.SMOKE_SPLIT_SIZES if args.smoke else quality.SPLIT_SIZES
    splits = quality.load_splits(sets, sizes)
    if args.val_limit:
        for split in splits.values():
            split.val = split.val[: args.val_limit]
    model = quality.resolve_model(args.model, Path(tempfile.gettempdir()) / "rmcore-bench") if args.smoke \
        else args.model
    jobs = ([("baseline", None)] if args.baseline else []) + [("trial", json.loads(t)) for t in args.trial]
    for kind, options in jobs:
        started = time.time()
        if kind == "baseline":
            record = run_baseline(model, sets, splits, args.max_length)
        else:
            record = run_trial(options, args.budget, model, sets, args.time_scale, splits, args.clock)
            record["options"] = options
        record.update(budget_s=args.budget, sets=sets, started=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
                      total_s=time.time() - started, time_scale=args.time_scale, threads=args.threads,
                      split={name: splits[name].sizes() for name in sets}, model=args.model)
        args.log.parent.mkdir(parents=True, exist_ok=True)
        with args.log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps({k: record.get(k) for k in ("options", "steps", "comparisons_seen", "loop_s", "loop_cpu_s",
                                                     "planned_loop_s", "progressive_accuracy", "wall_s",
                                                     "val_mean", "total_s")}),
              flush=True)
        for name, row in record["val"].items():
            print(f"  {name}: {row}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
