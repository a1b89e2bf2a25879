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

This file is the command line: it plans the trials and runs them; bench/trials.py holds the trials
(what runs in each worker process) and bench/report.py the summary, the targets and the Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ holds scripts, not a package
from report import check_targets, git_info, load_average, machine_info, markdown, summarize_training  # noqa: E402
from trials import (  # noqa: E402
    ROOT,
    WORKLOADS,
    TrialSpec,
    device_name,
    resolve_model,
    run_worker,
    scoring_calls,  # bench/serve.py reads the OASST scoring calls from here
)

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

__all__ = ["PRESETS", "device_name", "git_info", "load_average", "machine_info", "main", "scoring_calls"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = device_name()
    # 1. the plan: preset, learning rate, workloads, parts to skip
    preset = args.preset or ("gpu" if device == "cuda" else "cpu")
    if args.lr is None:
        args.lr = PRESET_LR.get(preset, 1e-5)
    skip = parts_to_skip(args.skip)
    workloads = check_workloads(parser, args.workloads)
    workdir = Path(tempfile.mkdtemp(prefix="rmcore-bench-"))
    ref_path = None
    try:
        # 2. the model, and rmcore as of --ref in a worktree of its own
        model_path = resolve_model(args.model, workdir)
        if args.ref:
            ref_path = make_ref_tree(args.ref, workdir)
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "git": git_info(), "machine": machine_info(device),
                "threads": args.threads or "default", "preset": preset, "args": vars(args),
                "load_before": load_average()}
        print(f"rmcore bench: {device}, preset {preset}, model {args.model}, load average {meta['load_before']}",
              file=sys.stderr)
        common = TrialSpec(kind="", model_path=model_path, max_length=args.max_length, lr=args.lr,
                           threads=args.threads, trl_micro_pairs=args.trl_micro_pairs, seed=args.seed[0],
                           trl_order=args.trl_order)
        summary: dict[str, Any] = {"meta": meta, "training": []}
        # 3. training: rmcore and TRL (and rmcore@ref) taking turns, per workload, seed and repeat
        for workload in workloads:
            summary["training"].append(run_workload(args, preset, skip, common, workload, ref_path))
        # 4. scoring and head mode
        if "scoring" not in skip:
            summary.update(run_scoring(args, common, ref_path))
        if "head" not in skip:
            summary["head"] = run_head(args, preset, common)
        # 5. the report: targets, the Markdown table on stdout, the results in --out
        meta["load_after"] = load_average()
        summary["targets"] = check_targets(summary)
        table = markdown(summary)
        print(table)
        if args.out:
            write_results(Path(args.out), summary, table, f"{device}_{args.model}")
        return 0
    finally:
        if ref_path:
            subprocess.run(["git", "worktree", "remove", "--force", ref_path], cwd=ROOT, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- options


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers separated by commas, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more distinct integers")
    return seeds


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def parts_to_skip(text: str) -> set[str]:
    """--skip's parts, plus "trl" when TRL is not installed."""
    skip = {s.strip() for s in text.split(",") if s.strip()}
    try:
        import trl  # noqa: F401
    except ImportError:
        print("trl is not installed (pip install -r bench/requirements.txt): skipping the TRL trials", file=sys.stderr)
        skip.add("trl")
    return skip


def check_workloads(parser: argparse.ArgumentParser, text: str) -> list[str]:
    workloads = [w for w in text.split(",") if w and w != "none"]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
        if not WORKLOADS[w].is_file():
            parser.error(f"{WORKLOADS[w]} not found: the benchmark reads ../shared/data beside the project")
    return workloads


# ----------------------------------------------------------------------------- running the trials


def run_workload(args, preset: str, skip: set[str], common: TrialSpec, workload: str,
                 ref_path: str | None) -> dict[str, Any]:
    """One workload's training trials, rmcore and TRL (and rmcore@ref) taking turns; its summary block."""
    sizes = dict(PRESETS[preset][workload])
    for key in ("steps", "batch_size", "eval_groups"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    spec = dataclasses.replace(common, workload=workload, batch_size=sizes["batch_size"],
                               n_train=sizes["steps"] * sizes["batch_size"], n_eval=sizes["eval_groups"])
    impls = ["rmcore"] + ([] if "trl" in skip else ["trl"]) + ([f"rmcore@{args.ref}"] if ref_path else [])
    trials: dict[str, list[dict[str, Any]]] = {impl: [] for impl in impls}
    print(f"{workload}: {spec.n_train} training prompts in {sizes['steps']} steps, {spec.n_eval} held out",
          file=sys.stderr)
    untrained = []
    for seed in args.seed:
        for repeat in range(args.repeats):
            for impl in (impls if repeat % 2 == 0 else list(reversed(impls))):
                trial = dataclasses.replace(spec, kind="trl" if impl == "trl" else "rmcore", seed=seed,
                                            label=f"{impl}, seed {seed}")
                result = run_trial(trial, in_process=args.in_process,
                                   pythonpath=ref_path if impl.startswith("rmcore@") else None)
                trials[impl].append({**result, "seed": seed})
        if "untrained" not in skip:
            trial = dataclasses.replace(spec, kind="untrained", seed=seed, label=f"untrained, seed {seed}")
            untrained.append({**run_trial(trial, in_process=args.in_process), "seed": seed})
    return summarize_training(workload, trials, untrained)


def run_scoring(args, common: TrialSpec, ref_path: str | None) -> dict[str, Any]:
    spec = dataclasses.replace(common, kind="scoring", score_repeats=args.score_repeats)
    out = {"scoring": run_trial(spec, in_process=args.in_process)}
    if ref_path:
        ref_spec = dataclasses.replace(spec, label=f"scoring@{args.ref}")
        out["scoring_ref"] = {args.ref: run_trial(ref_spec, in_process=args.in_process, pythonpath=ref_path)}
    return out


def run_head(args, preset: str, common: TrialSpec) -> dict[str, Any]:
    sizes = PRESETS[preset]["oasst"]
    spec = dataclasses.replace(common, kind="head", head_epochs=args.head_epochs,
                               n_train=16 if preset.startswith("cpu") else 4 * sizes["batch_size"] * sizes["steps"],
                               n_eval=sizes["eval_groups"])
    return run_trial(spec, in_process=args.in_process)


def run_trial(spec: TrialSpec, *, in_process: bool, pythonpath: str | None = None) -> dict[str, Any]:
    """One trial, in a fresh worker process (bench/trials.py) unless --in-process; its measurements."""
    print(f"  {spec.name} {spec.workload} ...", end=" ", flush=True, file=sys.stderr)
    started = time.perf_counter()
    if in_process:
        result = run_worker(spec)
    else:
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        if pythonpath:
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        with tempfile.TemporaryDirectory() as tmp:
            spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
            spec_file.write_text(spec.to_json())
            worker = Path(__file__).resolve().parent / "trials.py"
            proc = subprocess.run([sys.executable, str(worker), str(spec_file), str(out_file)], env=env,
                                  cwd=str(ROOT), stdout=sys.stderr)
            if proc.returncode != 0:
                raise SystemExit(f"{spec.name} {spec.workload}: the worker failed (exit {proc.returncode})")
            result = json.loads(out_file.read_text())
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def make_ref_tree(ref: str, workdir: Path) -> str:
    """Check out rmcore as of `ref` into a temp worktree; workers import it via PYTHONPATH."""
    target = workdir / "ref"
    subprocess.run(["git", "worktree", "add", "--detach", str(target), ref], cwd=ROOT, check=True,
                   capture_output=True)
    return str(target)


def write_results(out: Path, summary: dict[str, Any], table: str, what: str) -> None:
    """OUT/<date>_<commit>_<device>_<model>.json (everything) and .md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M')}_{summary['meta']['git']['commit'] or 'nogit'}_{what}"
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / f"{stem}.md").write_text(table)
    print(f"wrote {out / stem}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
