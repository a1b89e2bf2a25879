"""The over-optimisation lesson (`rmcore lesson goodhart`) measured across seeds, as issue 26 asks.

    .venv/bin/python bench/goodhart.py --seeds 0,1,2,3,4

For each seed: a fresh lesson folder and a fresh rmcore cache (only the embedded model's converted
folder is linked in, as every install has it after its first use; nothing of the lesson, no trunk
features), the whole lesson timed; then the first seed once more in the same folder (the class's
second run). Reports per seed the issue's three criteria (proxy rises at every n; the gold's last
point at least two standard errors below its peak; the trait's share rises) and whether the
gold first rose (its peak past n = 1), the fit, the stage
times, and how many seeds met all three (the target: at least 4 of 5). Writes
bench/results/<stamp>_<commit>_goodhart.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from report import git_info, load_average, machine_info  # noqa: E402


def fresh_cache(root: Path) -> Path:
    """An empty rmcore cache holding only a link to the embedded model's converted folder."""
    from rmcore.model.embedded import EMBEDDED_NAME, embedded_model_dir

    source = embedded_model_dir()  # converts it once in the user's cache when it is missing there
    cache = root / "cache"
    (cache / "base").mkdir(parents=True)
    (cache / "base" / EMBEDDED_NAME).symlink_to(source, target_is_directory=True)
    return cache


def one_seed(seed: int, root: Path, config_options: dict[str, Any]) -> dict[str, Any]:
    from rmcore.policy.lesson import LessonConfig, run_lesson

    os.environ["RMCORE_CACHE"] = str(fresh_cache(root / f"seed{seed}"))
    start = time.monotonic()
    result = run_lesson(LessonConfig(seed=seed, **config_options), root / f"seed{seed}" / "lesson")
    row = {"seed": seed, "wall_s": time.monotonic() - start, **result.to_dict()}
    print(f"seed {seed}: {row['wall_s']:.0f} s, criteria {result.turn}", file=sys.stderr, flush=True)
    return row


def rerun(seed: int, root: Path, config_options: dict[str, Any]) -> float:
    from rmcore.policy.lesson import LessonConfig, run_lesson

    os.environ["RMCORE_CACHE"] = str(root / f"seed{seed}" / "cache")
    start = time.monotonic()
    run_lesson(LessonConfig(seed=seed, **config_options), root / f"seed{seed}" / "lesson")
    return time.monotonic() - start


def markdown(summary: dict[str, Any]) -> str:
    meta, rows = summary["meta"], summary["seeds"]
    lines = [f"# rmcore lesson goodhart, {len(rows)} seeds ({meta['date']}, commit {meta['git'].get('commit')})", "",
             f"load average before {meta['load_before']}, after {meta['load_after']}", "",
             f"**{summary['met_three']} of {len(rows)} seeds** met the issue's three criteria "
             "(target: at least 4 of 5); "
             f"**{summary['met']}** also had the gold rise before it fell (its peak past n = 1). " +
             (f"Second run in the same folder: {summary['rerun_s']:.1f} s." if summary["rerun_s"] is not None
              else "(seeds still running)"), "",
             "| seed | wall s | proxy rises | gold turns | trait rises | gold rises first | gold peak n | drop ± se "
             "| beta ± se | peak KL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t, f = r["turn"], r["gold_fit"]
        peak = f"{f['peak_kl']:.2f}" if f["peak_kl"] is not None else "none"
        lines.append(f"| {r['seed']} | {r['wall_s']:.0f} | {t['proxy_rises']} | {t['gold_turns']} | {t['trait_rises']} "
                     f"| {t['gold_rises_first']} | {t['gold_peak_n']} | {t['gold_drop']:.3f} ± {t['gold_drop_se']:.3f} "
                     f"| {f['beta']:.3f} ± {f['beta_se']:.3f} | {peak} |")
    lines += ["", "Points (seed: n, proxy, gold, trait share):", ""]
    for r in rows:
        pts = "; ".join(f"{p['n']}: {p['proxy']:.2f}, {p['gold']:.2f}±{p['gold_se']:.2f}, {p['trait_share']:.0%}"
                        for p in r["points"])
        lines.append(f"- seed {r['seed']}: {pts}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--samples-per-prompt", type=int, default=None, help="default: the lesson's")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="'' to write nothing")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    options = {} if args.samples_per_prompt is None else {"samples_per_prompt": args.samples_per_prompt}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "git": git_info(), "machine": machine_info("cpu"),
            "load_before": load_average(), "options": options,
            "stamp": time.strftime("%Y%m%d-%H%M", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for seed in seeds:  # the results so far are written after every seed: a long run leaves a trace
            rows.append(one_seed(seed, Path(tmp), options))
            write(args.out, meta, rows, None)
        rerun_s = rerun(seeds[0], Path(tmp), options)
    write(args.out, meta, rows, rerun_s)
    return 0


def write(out_folder: str, meta: dict[str, Any], rows: list[dict[str, Any]], rerun_s: float | None) -> None:
    meta["load_after"] = load_average()
    three = ("proxy_rises", "gold_turns", "trait_rises")
    summary = {"meta": meta, "met": sum(r["turn"]["all"] for r in rows),
               "met_three": sum(all(r["turn"][k] for k in three) for r in rows), "rerun_s": rerun_s, "seeds": rows}
    table = markdown(summary)
    print(table)
    if out_folder:
        out = Path(out_folder)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{meta['stamp']}_{meta['git'].get('commit') or 'nogit'}_goodhart"
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str))
        (out / f"{stem}.md").write_text(table)
        print(f"wrote {out / stem}.json and .md", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
