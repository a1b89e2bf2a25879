"""The model card in every saved model: Hugging Face metadata, and the numbers of rmcore.json."""

from __future__ import annotations

import json

import pytest
import yaml

from rmcore.model_card import CARD_FILE, held_out_metrics, render_card

METADATA = {
    "rmcore_version": "0.1.0", "base_model": "SmolLM2-135M-Instruct", "mode": "head",
    "config": {"epochs": 20, "lr": None, "batch_size": 8, "max_length": 512, "seed": 3},
    "data": {"file": "data/prefs.jsonl", "format": "ranked", "skipped_rows": 4, "train_prompts": 52,
             "eval_prompts": 6, "train_comparisons": 344, "truncated_prompts": 2, "truncated_responses": 5,
             "eval_length_baseline": 0.6125},
    "metrics": {"eval": {"eval_loss": 0.3726, "eval_accuracy": 0.8249, "eval_margin": 1.25, "eval_comparisons": 40}},
    "probes": [{"name": "hope", "label": 'append "I hope this helps!"', "delta": -0.48, "delta_units": -0.41}],
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
                 '| append "I hope this helps!" | -0.480 | -0.41 |', "Trained on only 52 instructions",
                 'model="my-rm"', 'RewardModel.load("my-rm")'):
        assert text in card, text


def test_a_local_base_model_is_named_but_not_given_as_a_hub_id():
    card = render_card({**METADATA, "base_model": "/home/me/models/base"})
    assert "base_model" not in front(card) and "/home/me/models/base" in card


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
