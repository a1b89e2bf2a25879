"""`rmcore train`: one reward model, or an ensemble, with progress on stderr."""

from __future__ import annotations

import sys
import time
from dataclasses import fields
from pathlib import Path

from rmcore.cli.data import read_data
from rmcore.cli.progress import StepPrinter
from rmcore.core.folders import check_output_folder
from rmcore.data import split_groups
from rmcore.training.budget import PhaseTimes
from rmcore.training.ensemble import train_ensemble
from rmcore.training.train import TrainConfig, train


def cmd_train(args) -> int:
    started_at = time.monotonic()  # a --time-budget covers the whole command
    values = {spec.name: getattr(args, spec.name) for spec in fields(TrainConfig) if hasattr(args, spec.name)}
    if args.eval:
        values["eval_fraction"] = 0.0
    config = TrainConfig(**values)
    config.check()
    # before reading the data: a refusal must come at once
    check_output_folder(Path(args.out), args.resume, inputs=(args.data, args.eval), read_folders=(args.model,))
    data = read_data(args.data, args.limit)
    if args.eval:
        train_groups, eval_groups = data.groups, read_data(args.eval).groups
    else:
        train_groups, eval_groups = split_groups(data.groups, config.eval_fraction, config.seed)
    printer = StepPrinter("reward model", quiet=args.quiet)
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
        if config.time_budget_s:
            print(f"[rmcore] {PhaseTimes.from_dict(result.phase_seconds).describe()}", file=sys.stderr)
    return 130 if result.stopped else 0  # a stopped run is not a success: `train && eval` must not go on


def _train_ensemble(args, config, train_groups, eval_groups, summary) -> int:
    """`train --ensemble N`: rmcore.training.ensemble.train_ensemble, with a fresh progress bar per member."""
    if args.resume:
        raise ValueError("--resume continues one model; an ensemble is trained into a new folder")
    printers = [StepPrinter("reward model", quiet=args.quiet)]

    def on_step(event: dict) -> None:
        if event.get("event") == "phase" and str(event.get("phase", "")).startswith("ensemble member"):
            printers[-1].close()
            printers.append(StepPrinter("reward model", quiet=args.quiet))
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
