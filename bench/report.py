"""The benchmark's report: the run's context, the summary of the trials, the targets, and Markdown.

Pure functions of the trials' measurements (`bench/trials.py`), so the report can be rebuilt
from a results .json, and tested without training anything.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The targets, checked at the end of a run (ratios are rmcore / TRL from the same run).
TARGETS = {"oasst_speedup": 3.0, "hh_speedup": 1.6, "flop_utilisation": 0.5, "scoring_speedup": 2.5,
           "scoring_latency_s": 0.7, "head_later_epoch_speedup": 50.0}


# ----------------------------------------------------------------------------- the run's context


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "rmcore", "bench"))}


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info = {"device": device, "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    for name in ("transformers", "accelerate", "trl"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- the summary


def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize_training(workload: str, trials: dict[str, list[dict[str, Any]]],
                       untrained: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Per implementation medians over repeats; ratios are medians of the paired (same-repeat) ratios.

    Held-out accuracy is the mean over seeds of each seed's median; with several seeds the block also
    has each seed's accuracies and the paired rmcore - TRL difference with its standard error.
    """
    rows = {impl: _implementation_row(results) for impl, results in trials.items()}
    block = {"workload": workload, "implementations": rows, "ratios": _ratios(rows, trials),
             "untrained": _untrained_start(untrained), "same_order": _same_order(trials)}
    difference = _accuracy_difference(rows)
    if difference:
        block["accuracy_difference"] = difference
    return block


def _implementation_row(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One implementation's figures: medians over its trials (each trial gets its rates added)."""
    for r in results:
        r["comparisons_per_s"] = r["comparisons"] / r["time_s"]
        r["tokens_per_s"] = r["real_tokens"] / r["time_s"]
        r["flop_utilisation"] = 6 * r["params"] * r["real_tokens"] / r["time_s"] / r["matmul_flops"]
    row = {key: median([r[key] for r in results]) for key in
           ("comparisons_per_s", "tokens_per_s", "peak_memory_bytes", "flop_utilisation", "time_s", "matmul_flops")}
    row.update({key: results[0][key] for key in ("comparisons", "real_tokens", "padded_tokens", "steps")})
    by_seed = _by_seed(results)
    row["eval_accuracy"] = None if None in by_seed.values() else statistics.fmean(by_seed.values())
    row["accuracy_by_seed"] = by_seed
    if "order" in results[0]:
        row["order"] = results[0]["order"]  # TRL's data order: its own shuffle, or rmcore's batches
    return row


def _ratios(rows: dict[str, dict[str, Any]], trials: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    ratios = {}
    if "trl" in rows:
        # what the data allows: TRL's tokens (real, and with its padding) per rmcore token
        ratios["trl/rmcore real tokens"] = rows["trl"]["real_tokens"] / rows["rmcore"]["real_tokens"]
        ratios["trl/rmcore padded tokens"] = rows["trl"]["padded_tokens"] / rows["rmcore"]["padded_tokens"]
    for impl in rows:
        if impl == "rmcore":
            continue
        for key in ("comparisons_per_s", "tokens_per_s", "peak_memory_bytes"):
            ratios[f"rmcore/{impl} {key}"] = median(
                [a[key] / b[key] for a, b in zip(trials["rmcore"], trials[impl]) if b[key]])
    return ratios


def _same_order(trials: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """When TRL read rmcore's batches, how far apart the two trained models' held-out margins are
    (they should be one model, within float error)."""
    paired = [(a, b) for a, b in zip(trials.get("rmcore", []), trials.get("trl", [])) if "eval_margins" in b]
    if not paired:
        return None
    ours, theirs = paired[0][0]["eval_margins"], paired[0][1]["eval_margins"]
    return {"max_abs_margin_difference": max(abs(a - b) for a, b in zip(ours, theirs)),
            "margin_std": statistics.pstdev(ours), "pairs": len(ours)}


def _untrained_start(untrained: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    if not untrained:
        return None
    return {"eval_accuracy": statistics.fmean(u["eval_accuracy"] for u in untrained),
            "eval_comparisons": untrained[0]["eval_comparisons"], "accuracy_by_seed": _by_seed(untrained)}


def _accuracy_difference(rows: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """rmcore - TRL held-out accuracy, paired by seed, with its standard error (two seeds or more)."""
    if "trl" not in rows or len(rows["rmcore"]["accuracy_by_seed"]) <= 1:
        return None
    ours, theirs = rows["rmcore"]["accuracy_by_seed"], rows["trl"]["accuracy_by_seed"]
    differences = [ours[k] - theirs[k] for k in ours if ours[k] is not None and theirs.get(k) is not None]
    if len(differences) <= 1:
        return None
    return {"mean": statistics.fmean(differences), "seeds": len(differences),
            "standard_error": statistics.stdev(differences) / math.sqrt(len(differences))}


def _by_seed(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """{seed: median held-out accuracy of that seed's trials} (seed as a string: JSON keys)."""
    seeds = sorted({r.get("seed", 0) for r in results})
    return {str(seed): median([r["eval_accuracy"] for r in results if r.get("seed", 0) == seed]) for seed in seeds}


def accuracy_standard_error(untrained: dict[str, Any]) -> float | None:
    """Binomial standard error of a held-out accuracy near the untrained one (comparisons share prompts,
    so the true error is somewhat larger): differences below ~2 of these are noise."""
    n, acc = untrained.get("eval_comparisons"), untrained.get("eval_accuracy")
    if not n or acc is None:
        return None
    return math.sqrt(max(acc * (1 - acc), 0.05) / n)


# ----------------------------------------------------------------------------- the targets


def check_targets(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{what: {value, target, met}} for every target the run measured."""
    checks: dict[str, dict[str, Any]] = {}
    training = {s["workload"]: s for s in summary.get("training", [])}
    for workload, key in (("oasst", "oasst_speedup"), ("hh", "hh_speedup")):
        if workload in training:
            checks.update(_training_targets(workload, training[workload], TARGETS[key]))
    if summary.get("scoring"):
        checks.update(_scoring_targets(summary["scoring"]["latency_s"]))
    head = summary.get("head")
    if head:
        wanted = TARGETS["head_later_epoch_speedup"]
        checks["head: later epochs vs first"] = {"value": head["later_epoch_speedup"], "target": f">= {wanted}",
                                                 "met": head["later_epoch_speedup"] >= wanted}
    return checks


def _training_targets(workload: str, block: dict[str, Any], speedup: float) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    ratio = block.get("ratios", {}).get("rmcore/trl comparisons_per_s")
    if ratio is not None:
        checks[f"{workload}: comparisons/s vs TRL"] = {"value": ratio, "target": f">= {speedup}",
                                                      "met": ratio >= speedup}
    impls = block.get("implementations", {})
    if "rmcore" in impls and "trl" in impls:
        ours, theirs = impls["rmcore"]["eval_accuracy"], impls["trl"]["eval_accuracy"]
        if ours is not None and theirs is not None:
            seeds = len(impls["rmcore"].get("accuracy_by_seed") or [0])
            paired = block.get("accuracy_difference")
            wanted = ">= 0 (rmcore - TRL" + (f", mean of {seeds} seeds, standard error "
                                             f"{_fmt(paired['standard_error'])})" if paired else ")")
            checks[f"{workload}: held-out accuracy vs TRL"] = {"value": ours - theirs, "target": wanted,
                                                              "met": ours >= theirs}
    if "rmcore" in impls:
        util = impls["rmcore"]["flop_utilisation"]
        checks[f"{workload}: FLOP utilisation"] = {"value": util, "target": f">= {TARGETS['flop_utilisation']}",
                                                  "met": util >= TARGETS["flop_utilisation"]}
    return checks


def _scoring_targets(latency: dict[str, float]) -> dict[str, dict[str, Any]]:
    checks: dict[str, dict[str, Any]] = {}
    best_pipe = min(latency["pipeline"], latency["pipeline_batched"])
    for label, key in (("new instruction", "rmcore"), ("seen instruction", "rmcore_same_prompt")):
        if key in latency:
            speedup = best_pipe / latency[key]
            checks[f"scoring: speed-up vs pipeline, {label}"] = {
                "value": speedup, "target": f">= {TARGETS['scoring_speedup']}",
                "met": speedup >= TARGETS["scoring_speedup"]}
    checks["scoring: 4 candidates warm (s)"] = {"value": latency["rmcore"],
                                                "target": f"<= {TARGETS['scoring_latency_s']}",
                                                "met": latency["rmcore"] <= TARGETS["scoring_latency_s"]}
    return checks


# ----------------------------------------------------------------------------- Markdown


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return f"{value / 2**30:.2f} GiB"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(summary: dict[str, Any]) -> str:
    """The run as Markdown: a header line, the training table and notes, scoring, head mode, the targets."""
    lines = [_header(summary["meta"]), ""]
    if summary.get("training"):
        lines += _training_table(summary["training"])
        lines += _training_notes(summary["training"])
    if summary.get("scoring"):
        lines += _scoring_lines(summary["scoring"], summary.get("scoring_ref", {}))
    if summary.get("head"):
        h = summary["head"]
        lines += [f"Head mode ({h['groups']} OASST groups): epoch times "
                  f"{', '.join(f'{t:.2f}' for t in h['epoch_s'])} s; later epochs {h['later_epoch_speedup']:,.0f}x "
                  f"faster than the first; a second run's first epoch (cached features) "
                  f"{h['second_run_epoch_s'][0]:.2f} s.", ""]
    if summary.get("targets"):
        lines += _target_table(summary["targets"], summary["meta"]["args"]["model"])
    return "\n".join(lines) + "\n"


def _header(meta: dict[str, Any]) -> str:
    machine, args = meta["machine"], meta["args"]
    return (f"### {meta['date']} · commit {meta['git']['commit']}{' (dirty)' if meta['git']['dirty'] else ''} · "
            f"{machine['device']} ({machine.get('gpu') or machine['cpu']}, "
            f"{machine['cpu_count']} cores, {meta['threads']} threads) · model {args['model']} · "
            f"max length {args['max_length']} · preset {meta['preset']} · lr {args['lr']:g} · "
            f"load average {meta['load_before']} -> {meta['load_after']}")


def _training_table(blocks: list[dict[str, Any]]) -> list[str]:
    lines = ["| workload | trainer | steps | comparisons | comparisons/s | tokens/s | peak memory | FLOP util. "
             "| held-out acc. |", "|---|---|---|---|---|---|---|---|---|"]
    for block in blocks:
        for impl, row in block["implementations"].items():
            lines.append(f"| {block['workload']} | {impl} | {row['steps']} | {row['comparisons']} | "
                         f"{_fmt(row['comparisons_per_s'])} | {_fmt(row['tokens_per_s'])} | "
                         f"{_fmt(row['peak_memory_bytes'], 'bytes')} | {_fmt(row['flop_utilisation'], 'pct')} | "
                         f"{_fmt(row['eval_accuracy'])} |")
        if block.get("untrained"):
            u = block["untrained"]
            lines.append(f"| {block['workload']} | untrained start (held-out: {u['eval_comparisons']} comparisons, "
                         f"standard error {_fmt(accuracy_standard_error(u))}) | 0 | | | | | | "
                         f"{_fmt(u['eval_accuracy'])} |")
        for name, value in block["ratios"].items():
            bold = "**" if name.endswith("comparisons_per_s") else ""
            lines.append(f"| {block['workload']} | {bold}{name}{bold} | | | {bold}{_fmt(value)}x{bold} | | | | |")
    return lines + [""]


def _training_notes(blocks: list[dict[str, Any]]) -> list[str]:
    """The same-order control and the accuracies by seed, one paragraph each where measured."""
    lines = []
    for block in blocks:
        if block.get("same_order"):
            same = block["same_order"]
            lines += [f"{block['workload']}: TRL read rmcore's batches in rmcore's order (`--trl-order rmcore`); "
                      f"the two trained models' held-out margins r_w - r_l differ by at most "
                      f"{same['max_abs_margin_difference']:.1e} over {same['pairs']} pairs (margins spread "
                      f"{same['margin_std']:.2g}).", ""]
        if block.get("accuracy_difference"):
            d = block["accuracy_difference"]
            rows = {**block["implementations"], "untrained start": block.get("untrained") or {}}
            per_seed = "; ".join(f"{impl} " + " ".join(_fmt(a) for a in row["accuracy_by_seed"].values())
                                 for impl, row in rows.items() if row.get("accuracy_by_seed"))
            seeds = ", ".join(rows["rmcore"]["accuracy_by_seed"])
            lines += [f"{block['workload']} held-out accuracy by seed ({seeds}): {per_seed}. "
                      f"rmcore - TRL, paired by seed: {d['mean']:+.3f} (standard error "
                      f"{d['standard_error']:.3f}, {d['seeds']} seeds).", ""]
    return lines


def _scoring_lines(s: dict[str, Any], scoring_ref: dict[str, Any]) -> list[str]:
    lat = s["latency_s"]
    prompts, candidates = s["prompt_tokens"], s["candidate_tokens"]
    best_pipe = min(lat["pipeline"], lat["pipeline_batched"])
    lines = [f"Scoring one instruction ({min(prompts)}-{max(prompts)} tokens with the chat template) and "
             f"{len(candidates[0])} candidates ({min(map(min, candidates))}-{max(map(max, candidates))} tokens "
             f"each), a different instruction and candidates on every call, warm median of {len(prompts)}: "
             f"rmcore {lat['rmcore']:.3f} s, pipeline {lat['pipeline']:.3f} s "
             f"(batch_size={len(candidates[0])}: {lat['pipeline_batched']:.3f} s); speed-up "
             f"{best_pipe / lat['rmcore']:.2f}x over the faster pipeline call. New candidates for an "
             f"instruction rmcore has scored before (its prompt cache holds the prompt): "
             f"{lat['rmcore_same_prompt']:.3f} s, {best_pipe / lat['rmcore_same_prompt']:.2f}x. "
             f"Rewards agree with the pipeline's to {s['max_abs_reward_difference']:.1e}.", ""]
    if s.get("bf16_reward_error"):
        err = s["bf16_reward_error"]
        pipe_half = min(lat["pipeline_bf16"], lat["pipeline_bf16_batched"])
        half = lat["rmcore_bf16"]
        lines += [f"bfloat16 weights (`--dtype bfloat16`), same calls: rmcore {half:.3f} s, "
                  f"{lat['rmcore'] / half:.2f}x its float32 time, {best_pipe / half:.2f}x the float32 pipeline, "
                  f"{pipe_half / half:.2f}x the bfloat16 pipeline "
                  f"({pipe_half:.3f} s). Rewards off float32 by {err['mean_abs']:.2g} on average "
                  f"(max {err['max_abs']:.2g}; rewards spread {err['reward_std']:.2g}), "
                  f"{err['order_flips']} of {err['pairs']} pair orders flipped.", ""]
    for label, extra in scoring_ref.items():
        lines += [f"rmcore@{label} scoring: {extra['latency_s']['rmcore']:.3f} s "
                  f"(this tree is {extra['latency_s']['rmcore'] / lat['rmcore']:.2f}x faster)", ""]
    return lines


def _target_table(targets: dict[str, dict[str, Any]], model: str) -> list[str]:
    lines = []
    if model != "embedded":
        lines += ["(The targets are set for the embedded SmolLM2-135M model on a 2-core CPU; this run used "
                  f"{model}.)", ""]
    lines += ["| target | value | wanted | met |", "|---|---|---|---|"]
    for name, check in targets.items():
        lines.append(f"| {name} | {_fmt(check['value'])} | {check['target']} | {'yes' if check['met'] else 'NO'} |")
    return lines
