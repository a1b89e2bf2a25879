"""Comparisons per CPU-minute in full mode: the settings issue 28 was filed against, and today's, one run.

    .venv/bin/python bench/throughput.py                        # HH helpful, 5-minute budgets, 2 rounds
    .venv/bin/python bench/throughput.py --budget 3m --rounds 1 --data ../shared/data/oasst/en_100_tree.jsonl
    .venv/bin/python bench/throughput.py --filed-at 288a3eb   # `filed` also runs that commit's rmcore

Each setting trains full mode on the file under `--time-budget`, as `rmcore train DATA --mode full
--time-budget B` does (the same library call, the CLI's 10% held out by prompt, seed 0), in a process of
its own, in turns (filed, bfloat16, default, filed, ...) so that a change in the machine's load hits
every setting alike:
- filed: `--precision float32 --max-turns all`, what a full-mode run did when the issue was filed
  (with `--filed-at COMMIT`, also rmcore's code as it was at that commit, from a temporary worktree);
- bfloat16: `--precision auto --max-turns all` (bfloat16 autocast where the chip makes it fast);
- default: `--precision auto --max-turns auto`, today's defaults (a budget that cannot cover every
  comparison may cut dialogues to their last turns, see rmcore/training/budget.py).
A run counts the comparisons its steps trained on, and the CPU seconds and wall seconds of the whole
command (reading, loading, probe, training, evaluations, saving). It prints comparisons per CPU-minute,
their ratio to `filed` (the median over rounds), and each run's held-out accuracy with its standard
error (on the sample the budget scored: few comparisons, read it as a sanity check, not a comparison).
Results go to bench/results/ (JSON and Markdown).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from report import git_info, load_average, machine_info  # noqa: E402

SETTINGS = {
    "filed": {"precision": "float32", "max_turns": "all"},
    "bfloat16": {"precision": "auto", "max_turns": "all"},
    "default": {"precision": "auto", "max_turns": "auto"},
}
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "helpful-base-test.jsonl.gz"


def one_run(data: str, setting: str, budget_s: float, model: str, out: str) -> dict:
    """One `rmcore train --mode full --time-budget` of `setting`, in this process; what it trained."""
    import rmcore
    from rmcore.data import read_preferences, split_groups
    from rmcore.training.train import TrainConfig, train

    started, cpu_started = time.perf_counter(), time.process_time()
    config = TrainConfig(model=model, mode="full", time_budget_s=budget_s, **SETTINGS[setting])
    groups = read_preferences(data).groups
    train_groups, eval_groups = split_groups(groups, config.eval_fraction, config.seed)
    events: list[dict] = []
    result = train(config, train_groups, out, eval_groups=eval_groups, on_step=events.append, started_at=started)
    steps = [e for e in events if e["event"] == "step"]
    meta = json.loads((Path(out) / "rmcore.json").read_text())
    final_eval = (result.final or {}).get("eval") or {}
    return {
        "setting": setting, **SETTINGS[setting], "steps": result.steps,
        "comparisons": sum(e["comparisons"] for e in steps), "trained_at": meta.get("precision"),
        "max_turns_used": meta.get("max_turns"), "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu_started, "phase_seconds": meta.get("phase_seconds"),
        "eval_accuracy": final_eval.get("eval_accuracy"), "eval_accuracy_se": final_eval.get("eval_accuracy_se"),
        "eval_comparisons": final_eval.get("eval_comparisons"), "rmcore_file": rmcore.__file__,
    }


def run_in_child(args, setting: str, source: Path | None = None) -> dict:
    """One run in a fresh process; `source`: a checkout whose rmcore the run imports instead of this one's."""
    with tempfile.TemporaryDirectory(prefix="rmcore-throughput-") as tmp:
        command = [sys.executable, __file__, "--one", setting, "--data", str(args.data), "--budget", args.budget,
                   "--model", args.model, "--out", str(Path(tmp) / "model")]
        if source is not None:
            command += ["--source", str(source)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"setting": setting, "failed": proc.stderr.strip().splitlines()[-1:] or ["no output"]}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def all_runs(args, chosen: list[str], filed_source: Path | None) -> list[dict]:
    runs = []
    for round_ in range(args.rounds):
        for setting in chosen:
            run = run_in_child(args, setting, filed_source if setting == "filed" else None)
            runs.append(run)
            rate = "failed" if "failed" in run else f"{per_cpu_minute(run):.1f} comparisons per CPU-minute"
            print(f"round {round_ + 1}, {setting}: {rate}", flush=True)
    return runs


@contextlib.contextmanager
def filed_checkout(commit: str | None):
    """A temporary git worktree of `commit` (None: no checkout, every setting runs this checkout's rmcore)."""
    if commit is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="rmcore-filed-") as tmp:
        subprocess.run(["git", "worktree", "add", "--detach", tmp, commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield Path(tmp)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tmp], cwd=ROOT, capture_output=True)


def per_cpu_minute(run: dict) -> float:
    return run["comparisons"] / (run["cpu_s"] / 60) if run.get("cpu_s") else 0.0


def summary(runs: list[dict]) -> dict[str, dict]:
    names = [name for name in SETTINGS if any(r["setting"] == name for r in runs)]
    rates = {name: [per_cpu_minute(r) for r in runs if r["setting"] == name and "failed" not in r] for name in names}
    base = statistics.median(rates["filed"]) if rates.get("filed") else None
    return {name: {"per_cpu_minute": statistics.median(values) if values else None,
                   "ratio_to_filed": statistics.median(values) / base if values and base else None,
                   "runs": len(values)} for name, values in rates.items()}


def markdown(head: dict, runs: list[dict], totals: dict[str, dict]) -> str:
    machine = head["machine"]
    lines = [f"# Comparisons per CPU-minute in full mode ({head['date']}, {head['git']['commit']})", "",
             f"{machine['cpu']}, {machine['cpu_count']} cores, load {head['load_before']} before and "
             f"{head['load_after']} after; data {head['data']}; budget {head['budget']} per run", "",
             "| setting | comparisons per CPU-minute (median) | ratio to filed | runs |", "|---|---|---|---|"]
    for name, row in totals.items():
        rate, ratio = row["per_cpu_minute"], row["ratio_to_filed"]
        lines.append(f"| {name} | {rate:.1f} | {ratio:.2f}x | {row['runs']} |" if rate and ratio
                     else f"| {name} | failed | | 0 |")
    lines += ["", "| run | setting | trained at | turns | steps | comparisons | CPU s | wall s | held-out |",
              "|---|---|---|---|---|---|---|---|---|"]
    for n, run in enumerate(runs, 1):
        if "failed" in run:
            lines.append(f"| {n} | {run['setting']} | failed: {run['failed']} | | | | | | |")
            continue
        held = (f"{run['eval_accuracy']:.3f} ± {run['eval_accuracy_se']:.3f} ({run['eval_comparisons']})"
                if run.get("eval_accuracy") is not None else "")
        lines.append(f"| {n} | {run['setting']} | {run['trained_at']} | {run['max_turns_used']} | {run['steps']} | "
                     f"{run['comparisons']} | {run['cpu_s']:.0f} | {run['wall_s']:.0f} | {held} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--budget", default="5m", help="each run's --time-budget (90s, 5m, ...)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated: " + ", ".join(SETTINGS))
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results"), help="'' to write nothing")
    parser.add_argument("--filed-at", metavar="COMMIT",
                        help="run `filed` with rmcore as it was at this commit (a temporary git worktree), so the "
                             "ratio also counts what changed in the code, not only in the settings")
    parser.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)  # a child process: one run
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.source:
        sys.path.insert(0, args.source)
    from rmcore.training.config import parse_duration

    budget_s = parse_duration(args.budget)
    if args.one:
        print(json.dumps(one_run(args.data, args.one, budget_s, args.model, args.out)))
        return 0
    chosen = [name.strip() for name in args.settings.split(",") if name.strip()]
    head = {"date": time.strftime("%Y-%m-%d %H:%M"), "git": git_info(), "machine": machine_info("cpu"),
            "load_before": load_average(), "stamp": time.strftime("%Y%m%d-%H%M"), "data": str(args.data),
            "budget": args.budget}
    if args.filed_at:
        head["filed_at"] = args.filed_at
    with filed_checkout(args.filed_at) as filed_source:
        runs = all_runs(args, chosen, filed_source)
    head["load_after"] = load_average()
    totals = summary(runs)
    text = markdown(head, runs, totals)
    print(text)
    if args.results:
        stem = Path(args.results) / f"{head['stamp']}_{head['git']['commit']}_throughput"
        stem.with_suffix(".json").write_text(json.dumps({"header": head, "runs": runs, "summary": totals}, indent=2)
                                             + "\n", encoding="utf-8")
        stem.with_suffix(".md").write_text(text, encoding="utf-8")
        print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
