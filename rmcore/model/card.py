"""The model card: a README.md with Hugging Face model-card metadata in every saved reward model.

Whoever picks up a model folder (a colleague, a hub page, a later you) should learn from the folder
alone what the model is, what it learned from, how good it is next to the simplest rival (the
longer answer wins), what it should not be used for, and how to load it. Every number comes from
rmcore.json, the metadata saved beside the weights, so the card never disagrees with it.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

from rmcore.model.embedded import EMBEDDED_NAME

CARD_FILE = "README.md"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the embedded GGUF was converted from
FEW_PROMPTS = 200  # fewer training instructions than this: the card says the model is a sketch


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "not recorded"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _base_model_id(base: str | None) -> str | None:
    """A hub id for the YAML `base_model` field, or None for a local folder (the field wants an id)."""
    if base == EMBEDDED_NAME:
        return EMBEDDED_HUB_ID
    if base and base.count("/") == 1 and not base.startswith((".", "/", "~")):
        return base
    return None


def front_matter(metadata: dict[str, Any]) -> str:
    """The YAML block the hub reads: library, pipeline, base model, tags."""
    lines = ["---", "library_name: transformers", "pipeline_tag: text-classification"]
    base = _base_model_id(metadata.get("base_model"))
    if base:
        lines.append(f"base_model: {json.dumps(base)}")
    lines += ["tags:", "- reward-model", "- rmcore", f"- {metadata.get('mode', 'head')}-tuned", "---"]
    return "\n".join(lines)


def held_out_metrics(metadata: dict[str, Any]) -> dict[str, Any]:
    """The held-out numbers the card shows, straight from rmcore.json (tests compare the two)."""
    final = (metadata.get("metrics") or {}).get("eval") or {}
    data = metadata.get("data") or {}
    baseline = final.get("eval_length_baseline", data.get("eval_length_baseline"))
    return {"accuracy": final.get("eval_accuracy"), "comparisons": final.get("eval_comparisons"),
            "loss": final.get("eval_loss"), "margin": final.get("eval_margin"), "length_baseline": baseline,
            "prompts": data.get("eval_prompts")}


def _accuracy_line(metrics: dict[str, Any]) -> list[str]:
    accuracy, n = metrics["accuracy"], metrics["comparisons"]
    if accuracy is None:
        return ["No held-out evaluation was recorded (trained with no held-out share). Evaluate it with "
                "`rmcore eval DATA --model THIS_FOLDER`, which also prints the length-only baseline."]
    se = (accuracy * (1 - accuracy) / n) ** 0.5 if isinstance(n, int) and n > 0 else None
    rows = ["| measure | value |", "|---|---|",
            f"| pairwise accuracy | {_number(accuracy)}" + (f" ± {se:.3f} (one standard error)" if se else "") + " |",
            f"| \"the longer answer wins\" (length-only baseline) | {_number(metrics['length_baseline'])} |",
            f"| comparisons (held-out prompts) | {_number(n)} ({_number(metrics['prompts'])}) |",
            f"| Bradley-Terry loss (0.693 = chance) | {_number(metrics['loss'])} |",
            f"| mean margin r_w - r_l | {_number(metrics['margin'])} |"]
    return rows


# ----------------------------------------------------------------------------- probes recorded in rmcore.json


def verdict(row: dict[str, Any]) -> str:
    """A short reading of one probe: is this a change a policy could exploit?"""
    moved = row["delta_units"]
    if row["kind"] == "no better":
        if moved >= 0.25:
            return "rewarded: a policy could learn this"
        return "not rewarded" if moved > -0.25 else "penalised"
    return "dropped, as it should" if moved <= -0.25 else "barely dropped: the model misses it"

def recorded_runs(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The probe runs of an rmcore.json (those with a list of rows; anything else is ignored)."""
    runs = metadata.get("probes")
    if not isinstance(runs, list):
        return []
    return [run for run in runs if isinstance(run, dict) and isinstance(run.get("rows"), list)]

def summarize_runs(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Each edit's change over the recorded answers: mean, lowest and highest, and the answers it was
    measured on, in spreads (only the runs that measured a spread count, when any did), and the unit."""
    with_spread = [run for run in runs if run.get("spread")]
    used, unit = (with_spread, "spreads") if with_spread else (runs, "reward")
    by_name: dict[str, dict[str, Any]] = {}
    for run in used:
        for row in run["rows"]:
            entry = by_name.setdefault(row.get("name"), {"name": row.get("name"), "label": row.get("label"),
                                                          "kind": row.get("kind"), "changes": []})
            entry["changes"].append(row.get("delta_units") if unit == "spreads" else row.get("delta"))
    summary = []
    for entry in by_name.values():
        changes = [c for c in entry.pop("changes") if isinstance(c, (int, float))]
        if changes:
            summary.append({**entry, "mean": statistics.fmean(changes), "low": min(changes), "high": max(changes),
                            "answers": len(changes)})
    return summary, unit


def probe_section(metadata: dict[str, Any], folder_name: str = "THIS_FOLDER") -> list[str]:
    """The counterfactual-probe table: what `rmcore probe` recorded in rmcore.json, summed up per edit."""
    runs = recorded_runs(metadata)
    if not runs:
        return ["## What it rewards (counterfactual probes)", "",
                f"No probe was recorded yet. `rmcore probe --model {folder_name} --prompt ... --response ...` measures "
                "how the reward moves when an answer gets a pleasantry, flattery, repetition, filler or bullet points "
                "(no better) or is cut in half (worse), and adds the results here.", ""]
    rows, unit = summarize_runs(runs)
    lines = ["## What it rewards (counterfactual probes)", "",
             f"The reward change when an answer is edited in ways that make it no better (or worse), measured with "
             f"`rmcore probe` on {len(runs)} answer{'s' if len(runs) != 1 else ''}, in {unit}"
             + (" (one spread is the standard deviation of the model's rewards over a data set's answers)"
                if unit == "spreads" else "") + ". A rise for an edit that makes the answer no better is something a "
             "policy trained on this reward would learn to exploit.", "",
             f"| edit | should | mean change ({unit}) | lowest to highest | answers | reading |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        should = "not rise" if row["kind"] == "no better" else "drop"
        reading = verdict({"kind": row["kind"], "delta_units": row["mean"]})
        lines.append(f"| {_cell(row['label'] or row['name'])} | {should} | {row['mean']:+.2f} | "
                     f"{row['low']:+.2f} to {row['high']:+.2f} | {row['answers']} | {reading} |")
    lines += ["", "Answers probed:", ""]
    for run in runs:
        prompt = run.get("prompt")
        text = prompt if isinstance(prompt, str) else " / ".join(
            str(m.get("content", "")) for m in prompt or [] if isinstance(m, dict))
        lines.append(f"- {_cell(_short(text))} -> {_cell(_short(str(run.get('response', ''))))} "
                     f"(reward {_number(run.get('original_reward'))}, {run.get('measured_at', 'date not recorded')})")
    return lines + [""]


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell(text: str) -> str:
    """User text made safe inside a markdown table cell (no column breaks, no HTML)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_card(metadata: dict[str, Any], folder_name: str = "THIS_FOLDER") -> str:
    """The README.md text for a saved reward model with this rmcore.json."""
    base = metadata.get("base_model", "?")
    lines = [
        front_matter(metadata),
        "",
        f"# {folder_name}: a reward model",
        "",
        f"A reward model made with rmcore: the pre-trained LLM **{base}** with its language-model head replaced by "
        "one output neuron, trained with the Bradley-Terry loss `-log sigma(r_w - r_l)` on ranked human "
        "preferences. For an (instruction, answer) pair it returns one number, read at the answer's last token; "
        "higher means people would prefer the answer.",
        "",
        *training_section(metadata),
        "## Held-out results",
        "",
        *_accuracy_line(held_out_metrics(metadata)),
        "",
        *probe_section(metadata, folder_name),
        *limits_section(metadata),
        *loading_section(metadata, folder_name),
    ]
    return "\n".join(lines)


def training_section(metadata: dict[str, Any]) -> list[str]:
    """How it was trained: mode, steps, settings, the data and what truncation cut."""
    config = metadata.get("config") or {}
    data = metadata.get("data") or {}
    return [
        "## Training",
        "",
        f"- mode: **{metadata.get('mode', '?')}** ({_number(metadata.get('steps'))} of "
        f"{_number(metadata.get('total_steps'))} steps"
        + (", stopped early" if metadata.get("stopped") else "") + f"), {_number(config.get('epochs'))} epochs, "
        f"learning rate {_number(config.get('lr'), 6) if config.get('lr') else 'the mode default'}, "
        f"batch size {_number(config.get('batch_size'))}, "
        f"seed {_number(config.get('seed'))}",
        f"- data: `{data.get('file', 'not recorded')}` ({data.get('format', '?')} format): "
        f"{_number(data.get('train_prompts'))} instructions and {_number(data.get('train_comparisons'))} comparisons "
        f"for training, {_number(data.get('eval_prompts'))} instructions held out; "
        f"{_number(data.get('skipped_rows'))} rows of the file were skipped as unusable",
        f"- truncation: prompt + answer cut to {_number(config.get('max_length'))} tokens (the prompt loses its "
        f"start first); {_number(data.get('truncated_prompts'))} prompts and "
        f"{_number(data.get('truncated_responses'))} answers were cut",
        "",
    ]


def limits_section(metadata: dict[str, Any]) -> list[str]:
    """What the model is for, what it is not, and a warning when it saw few instructions."""
    lines = [
        "## Intended use and limits",
        "",
        "- For ranking candidate answers to instructions like those it was trained on: best-of-n selection, "
        "labelling samples, a reward in RLHF experiments. Compare rewards of answers to the same instruction; "
        "the absolute value means nothing by itself.",
        "- Not a judge of truth or safety: it learned what the labellers of its data preferred, including their "
        "habits (longer answers often win), and it can reward confident wrong answers.",
        "- A policy optimised hard against it will find answers it over-rewards; check with `rmcore probe`.",
    ]
    prompts = (metadata.get("data") or {}).get("train_prompts")
    if isinstance(prompts, int) and prompts < FEW_PROMPTS:
        lines.append(f"- Trained on only {prompts} instructions: a sketch for learning and testing, not a model "
                     "to rely on.")
    return lines


def loading_section(metadata: dict[str, Any], folder_name: str) -> list[str]:
    """The lines that load it with plain transformers, and where the numbers come from."""
    return [
        "",
        "## Load it",
        "",
        "```python",
        "from transformers import pipeline",
        "from rmcore import RewardModel",
        "",
        f'pipe = pipeline("text-classification", model="{folder_name}", function_to_apply="none")',
        f'pipe(RewardModel.load("{folder_name}").render("How do I boil an egg?", "Simmer it for 9 minutes."))',
        "```",
        "",
        "The text must be the instruction and answer rendered with the model's chat template exactly as in "
        "training, which `RewardModel.render` does; `function_to_apply=\"none\"` returns the raw reward.",
        "",
        "Made with rmcore " + str(metadata.get("rmcore_version", "")) + "; every number above is in `rmcore.json`"
        + (f", saved {metadata['saved_at']}." if metadata.get("saved_at") else "."),
        "",
    ]
