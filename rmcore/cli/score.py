"""`rmcore score`, `eval` and `probe`: what a reward model says about answers, printed for people or as JSON."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import pandas as pd

from rmcore.analysis.evaluate import categories_for, compare, compare_sentence, evaluate, worst_pairs
from rmcore.analysis.probes import record_probes, reward_spread, run_probes
from rmcore.analysis.scoring import scored_records
from rmcore.cli.data import read_data
from rmcore.core.csv_safe import safe_table
from rmcore.core.errors import printable
from rmcore.core.folders import HELD_OUT_FILE, METADATA_FILE
from rmcore.core.outputs import atomic_writer, check_output_file
from rmcore.core.progress import SlowNotice, count, progress
from rmcore.data import demo_data_path, read_preferences
from rmcore.model.card import verdict
from rmcore.model.reward_model import RewardModel, resolve_model_path
from rmcore.training.ensemble import Ensemble, evaluate_ensemble, is_ensemble


def _load(args, name: str, ensembles: bool = True):
    """The reward model `name` (or the ensemble, where `ensembles`), saying so when loading takes more
    than a moment."""
    with SlowNotice(f"loading the model {Path(name).name}"):
        if ensembles and is_ensemble(name):
            return Ensemble.load(name)
        return RewardModel.load(name, max_length=args.max_length, dtype=args.dtype)


def cmd_score(args) -> int:

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
    model = _load(args, args.model, ensembles=False)
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


    data = read_preferences(args.data, for_scoring=True)
    groups = data.groups[: args.limit] if args.limit else data.groups
    out = check_output_file(args.out, "--out", inputs=(args.data,), read_folders=(args.model,),
                            overwrite=args.overwrite)
    replaced = out is not None and out.exists()
    model = _load(args, args.model, ensembles=False)
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

    pairs_csv = check_output_file(args.pairs_csv, "--pairs-csv", inputs=(args.data,),
                                  read_folders=tuple(args.model or ()), overwrite=args.overwrite)
    for name in args.model or []:  # a missing second model fails now, not after the first is scored
        if not is_ensemble(name):
            resolve_model_path(name)
    data = read_data(args.data, args.limit)
    categories = categories_for(args.data, data.groups)
    results = []
    for name in args.model or ["embedded"]:
        results.append(_evaluate_one(args, name, data.groups, categories))
    comparisons = [compare(results[0], other) for other in results[1:]]
    extra = {"data": args.data, "format": data.report.format, "skipped_rows": len(data.report.skipped)}
    if pairs_csv is not None:

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

    ensemble = is_ensemble(name)
    model = _load(args, name)
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

    s = result.summary
    if not s["trained"]:
        print("note: this model's reward head is untrained (random); expect accuracy near 0.5.")
    base, ranking = s["length_baseline"], s["ranking"]
    print(f"model:       {s['model']}")
    print(f"data:        {data_name} ({fmt}, {count(s['prompts'], 'prompt')}, {count(s['comparisons'], 'comparison')})")
    print(f"accuracy:    {_with_se(s['accuracy'], s['accuracy_se'])} over every strictly ordered pair "
          f"(± one standard error); \"the longer answer wins\": {_with_se(base['accuracy'], base['se'])}")
    for gap, v in s["by_rank_gap"].items():
        print(f"  rank gap {gap}: {v['accuracy']:.3f} ({count(v['comparisons'], 'comparison')})")
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
              f"{_with_se(controlled['accuracy'], controlled['se'])} "
              f"({count(controlled['comparisons'], 'comparison')})")
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

    print(f"A: {c['model_a']}  accuracy {_with_se(c['accuracy_a'], c['accuracy_a_se'])}")
    print(f"B: {c['model_b']}  accuracy {_with_se(c['accuracy_b'], c['accuracy_b_se'])}")
    print(compare_sentence(c))
    if c["top_disagreements"]:
        print("pairs where they disagree most (P(winner) by A -> by B):")
        for row in c["top_disagreements"][:5]:
            print(f"  {row['p_a']:.3f} -> {row['p_b']:.3f} at {row['source']}: {row['prompt'][:60]!r}")
    print()


def cmd_probe(args) -> int:
    if not args.response.strip():
        raise ValueError("--response is empty; give the answer to edit")
    spread_file = _spread_data(args)
    ensemble = is_ensemble(args.model)  # an ensemble's reward is its members' mean
    model = _load(args, args.model)
    spread_data = read_data(str(spread_file))
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

    if args.no_record:
        return False, []
    if ensemble or not (Path(args.model) / METADATA_FILE).is_file():
        what = "an ensemble (each member has its own card)" if ensemble else "not a model folder rmcore saved"
        return False, [f"not recorded: {args.model} is {what}"]
    return True, record_probes(args.model, report, args.prompt, args.response)


def _spread_data(args) -> Path:
    """The file whose reward spread is the unit: --spread-data, the model's held-out prompts, or the demo set."""

    if args.spread_data:
        return Path(args.spread_data)
    held_out = Path(args.model) / HELD_OUT_FILE
    return held_out if held_out.is_file() else demo_data_path()
