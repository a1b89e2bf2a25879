"""The model card in every saved model: Hugging Face metadata, and the numbers of rmcore.json."""

from __future__ import annotations

import json

import pytest
import yaml

from rmcore.model.card import CARD_FILE, held_out_metrics, render_card

METADATA = {
    "rmcore_version": "0.1.0", "base_model": "SmolLM2-135M-Instruct", "mode": "head",
    "config": {"epochs": 20, "lr": None, "batch_size": 8, "max_length": 512, "seed": 3},
    "data": {"file": "data/prefs.jsonl", "format": "ranked", "skipped_rows": 4, "train_prompts": 52,
             "eval_prompts": 6, "train_comparisons": 344, "truncated_prompts": 2, "truncated_responses": 5,
             "eval_length_baseline": 0.6125},
    "metrics": {"eval": {"eval_loss": 0.3726, "eval_accuracy": 0.8249, "eval_margin": 1.25, "eval_comparisons": 40}},
    "probes": [  # two answers probed with `rmcore probe` (rmcore.analysis.probes.record_probes)
        {"prompt": "How do I boil an egg?", "response": "Simmer it | then cool it.", "original_reward": 1.25,
         "spread": 1.2, "spread_source": "demo", "measured_at": "2026-11-30T11:00:00+0000",
         "rows": [{"name": "hope", "label": 'append "I hope this helps!"', "kind": "no better", "reward": 0.77,
                   "delta": -0.48, "delta_units": -0.41},
                  {"name": "half", "label": "cut it in half", "kind": "worse", "reward": 0.0, "delta": -1.2,
                   "delta_units": -1.0}]},
        {"prompt": [{"role": "user", "content": "Name a prime"}], "response": "Seven.", "original_reward": 0.5,
         "spread": 0.5, "spread_source": "demo", "measured_at": "2026-11-30T11:05:00+0000",
         "rows": [{"name": "hope", "label": 'append "I hope this helps!"', "kind": "no better", "reward": 0.9,
                   "delta": 0.4, "delta_units": 0.8},
                  {"name": "half", "label": "cut it in half", "kind": "worse", "reward": 0.45, "delta": -0.05,
                   "delta_units": -0.1}]},
    ],
    "steps": 140, "total_steps": 140, "stopped": False, "saved_at": "2026-11-30T10:55:52+0000",
}


def front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_has_hub_metadata_and_every_number_of_the_metadata():
    card = render_card(METADATA, "my-rm")
    meta = front(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "reward-model" in meta["tags"]
    for text in ("| pairwise accuracy | 0.825 ± 0.060", "| 0.613 |", "| 40 (6) |", "0.373", "1.250",
                 "52 instructions and 344 comparisons", "6 instructions held out", "4 rows", "512 tokens",
                 "2 prompts and 5 answers were cut", "seed 3", "140 of 140 steps",
                 '| append "I hope this helps!" | not rise | +0.20 | -0.41 to +0.80 | 2 | not rewarded |',
                 "| cut it in half | drop | -0.55 | -1.00 to -0.10 | 2 | dropped, as it should |",
                 "on 2 answers, in spreads", r"Simmer it \| then cool it.", "Name a prime -> Seven.",
                 "Trained on only 52 instructions",
                 'model="my-rm"', 'RewardModel.load("my-rm")'):
        assert text in card, text


def test_a_local_base_model_is_named_but_not_given_as_a_hub_id():
    card = render_card({**METADATA, "base_model": "/home/me/models/base"})
    assert "base_model" not in front(card) and "/home/me/models/base" in card


def test_without_recorded_probes_the_card_says_how_to_add_them():
    card = render_card({**METADATA, "probes": None}, "my-rm")
    assert "No probe was recorded yet" in card and "rmcore probe --model my-rm" in card
    raw = {**METADATA, "probes": [{**run, "spread": None} for run in METADATA["probes"]]}
    assert "mean change (reward)" in render_card(raw), "without a measured spread the unit is the raw reward"


def test_a_model_without_held_out_data_says_so():
    card = render_card({**METADATA, "metrics": {"eval": None}})
    assert "No held-out evaluation was recorded" in card


@pytest.mark.slow
def test_every_saved_model_has_a_card_whose_numbers_are_rmcore_json(tiny_model_dir, demo_path, tmp_path, monkeypatch):
    from rmcore.cli import main

    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rm"
    assert main(["train", str(demo_path), "--out", str(out), "--model", str(tiny_model_dir), "--mode", "head",
                 "--epochs", "1", "--quiet"]) == 0
    saved = json.loads((out / "rmcore.json").read_text())
    card = (out / CARD_FILE).read_text()
    assert card == render_card(saved, out.name)
    numbers = held_out_metrics(saved)
    assert numbers["accuracy"] == saved["metrics"]["eval"]["eval_accuracy"]
    assert f"| pairwise accuracy | {numbers['accuracy']:.3f}" in card
    assert f"({saved['data']['eval_prompts']})" in card
    data = saved["data"]
    assert f"{data['train_prompts']} instructions and {data['train_comparisons']:,} comparisons" in card
