"""`rmcore lesson goodhart --out DIR [--seed S] [--json]`: the over-optimisation lesson (rmcore.policy.lesson).

Progress and the time left go to stderr; the points table (or, with --json, the whole result) to stdout.
"""

from __future__ import annotations

import json

from rmcore.cli.progress import StepPrinter
from rmcore.policy.lesson import LessonConfig, LessonResult, run_lesson


class _LessonPrinter(StepPrinter):
    """The step printer, with a fresh bar for each judge's training (each counts its steps from 1)."""

    def __call__(self, event: dict) -> None:
        if event.get("event") == "phase" and str(event.get("phase", "")).startswith("lesson:"):
            self.close()
        super().__call__(event)


def cmd_lesson(args) -> int:
    printer = _LessonPrinter("reward model")
    try:
        result = run_lesson(LessonConfig(seed=args.seed), args.out, on_event=printer)
    finally:
        printer.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(summary(result, args.out))
    return 0


def summary(result: LessonResult, out: str) -> str:
    """The points as a table, the fit and the verdict, for a reader at a terminal."""
    lines = [f"proxy's flaw: it likes answers where {result.trait}; the gold judge penalises them",
             f"{'n':>4} {'KL':>6} {'proxy':>14} {'gold':>14} {'trait share':>12}"]
    for p in result.points:
        lines.append(f"{p['n']:>4} {p['kl']:>6.2f} {p['proxy']:>7.3f} ± {p['proxy_se']:<5.3f}"
                     f"{p['gold']:>7.3f} ± {p['gold_se']:<5.3f}{p['trait_share']:>8.0%}")
    fit = result.gold_fit
    lines.append(f"gold fit d(alpha - beta d): alpha {fit['alpha']:.3f} ± {fit['alpha_se']:.3f}, "
                 f"beta {fit['beta']:.3f} ± {fit['beta_se']:.3f}" + (
                     f"; peak at KL {fit['peak_kl']:.2f} nats" if fit["peak_kl"] is not None else "; no turn"))
    turn = result.turn
    verdict = "the gold turned down" if turn["all"] else "no clear turn in this run"
    lines.append(f"{verdict}: gold peak at n = {turn['gold_peak_n']}, last point {turn['gold_drop']:.3f} ± "
                 f"{turn['gold_drop_se']:.3f} below it; proxy rises at every n: {turn['proxy_rises']}; "
                 f"trait share rises: {turn['trait_rises']}")
    lines.append(f"(everything is in {out}; run again there to reuse it)")
    return "\n".join(lines)


__all__ = ["cmd_lesson", "summary"]
