"""GRPO's learning rate on the embedded policy (issue 26, item 6): one short run per learning rate.

    .venv/bin/python bench/grpo_lr.py --lrs 1e-5,1e-4,1e-3

The proxy is the demo set's head-mode reward model (`rmcore train rmcore/demo/demo_ranked.jsonl --mode
head --epochs 20`), trained once into the work folder. The prompts are the demo instructions 11 to 58,
a third of them held out, as in the README's rejection-sampling runs. Each learning rate runs
`rlhf --method grpo` with the same seed, group size, rounds and token limit, so the runs differ only in
the learning rate. Reported per run: the held-out mean reward before and after (and the gain in standard
deviations of the starting policy's rewards), the KL to the start, the answer length and the wall time.
Writes bench/results/<stamp>_<commit>_grpo_lr.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report import git_info, load_average, machine_info  # noqa: E402

from rmcore.data import demo_data_path  # noqa: E402


def demo_prompts() -> list[str]:
    """The demo instructions 11 to 58 as the file writes them (the first ten are the sampling runs' own)."""
    lines = demo_data_path().read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines][10:58]


def train_proxy(work: Path) -> Path:
    """The demo set's head-mode reward model, through the CLI as a user trains it."""
    out = work / "rm-demo"
    if not (out / "rmcore.json").exists():
        subprocess.run([sys.executable, "-m", "rmcore", "train", str(demo_data_path()), "--out", str(out),
                        "--mode", "head", "--epochs", "20", "--quiet"], check=True)
    return out


def one_run(lr: float, proxy: Path, work: Path, options: dict[str, Any]) -> dict[str, Any]:
    from rmcore.policy.config import RLHFConfig
    from rmcore.policy.rlhf import split_prompts, train_policy

    config = RLHFConfig(reward_model=str(proxy), method="grpo", lr=lr, **options)
    train, held_out = split_prompts(demo_prompts(), config.eval_fraction, config.seed)
    start = time.monotonic()
    result = train_policy(config, train, held_out, work / f"grpo-lr{lr:g}")
    wall = time.monotonic() - start
    evals = [h for h in result.history if h.get("event") == "eval"]
    first, last = evals[0], evals[-1]
    sd = first.get("reward_std") or float("nan")
    row = {"lr": lr, "wall_s": wall, "steps": result.steps, "reward_start": first["reward_mean"],
           "reward_end": last["reward_mean"], "reward_std_start": sd,
           "gain_sd": (last["reward_mean"] - first["reward_mean"]) / sd, "kl_end": last["kl"],
           "length_start": first["length_mean"], "length_end": last["length_mean"], "evals": evals}
    print(f"lr {lr:g}: {wall:.0f} s, gain {row['gain_sd']:+.2f} sd, KL {row['kl_end']:.2f}", file=sys.stderr,
          flush=True)
    return row


def markdown(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    lines = [f"# GRPO learning rates on the embedded policy ({meta['date']}, commit {meta['git']['commit']})", "",
             f"load average before {meta['load_before']}, after {meta['load_after']}; settings "
             f"{json.dumps(summary['options'])}", "",
             "| lr | wall s | steps | held-out reward start -> end | gain (sd) | KL to the start | length |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["runs"]:
        lines.append(f"| {r['lr']:g} | {r['wall_s']:.0f} | {r['steps']} | {r['reward_start']:.3f} -> "
                     f"{r['reward_end']:.3f} | {r['gain_sd']:+.2f} | {r['kl_end']:.2f} | "
                     f"{r['length_start']:.0f} -> {r['length_end']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", default="1e-5,1e-4,1e-3")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--n", type=int, default=8, help="GRPO's group size")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--work", default="", help="keep the proxy and the policies here (default: a temp folder)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="'' to write nothing")
    args = parser.parse_args(argv)
    options = {"rounds": args.rounds, "n": args.n, "max_new_tokens": args.max_new_tokens, "eval_fraction": 0.34}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "git": git_info(), "machine": machine_info("cpu"),
            "load_before": load_average(), "stamp": time.strftime("%Y%m%d-%H%M")}
    with tempfile.TemporaryDirectory() as temp:
        work = Path(args.work or temp)
        proxy = train_proxy(work)
        runs = [one_run(float(lr), proxy, work, options) for lr in args.lrs.split(",")]
    meta["load_after"] = load_average()
    summary = {"meta": meta, "options": options, "runs": runs}
    print(markdown(summary))
    if args.out:
        stem = Path(args.out) / f"{meta['stamp']}_{meta['git']['commit']}_grpo_lr"
        stem.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        stem.with_suffix(".md").write_text(markdown(summary), encoding="utf-8")
        print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
