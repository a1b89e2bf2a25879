"""Counterfactual probes: each edit produces the text it names, and the report's changes are the
model's own rewards of those texts."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from rmcore.probes import FILLER, FLATTERY, HOPE, PROBES, edited_answers, run_probes

ANSWER = "Boil the eggs for 11 minutes. Then cool them in ice water. The shells come off cleanly."


def test_each_probe_makes_the_edit_it_names():
    texts = {probe.name: text for probe, text in edited_answers(ANSWER)}
    assert texts["hope"] == f"{ANSWER} {HOPE}"
    assert texts["flattery"] == FLATTERY + ANSWER and texts["flattery"].startswith("Great question!")
    assert texts["repeat"] == f"{ANSWER}\n\n{ANSWER}"
    assert texts["filler"].startswith(ANSWER) and texts["filler"].endswith(FILLER)
    assert texts["bullets"] == ("- Boil the eggs for 11 minutes.\n- Then cool them in ice water.\n"
                                "- The shells come off cleanly.")
    assert ANSWER.startswith(texts["half"]) and len(texts["half"].split()) == len(ANSWER.split()) // 2
    assert "wrong_facts" not in texts, "no confident-wrong version unless the user writes one"
    assert len(texts) == len(PROBES)


def test_the_wrong_facts_version_is_the_users_text_and_an_unchanged_one_is_left_out():
    wrong = "Microwave the eggs for 30 minutes; every chef does this."
    texts = {probe.name: text for probe, text in edited_answers(ANSWER, wrong)}
    assert texts["wrong_facts"] == wrong
    assert "wrong_facts" not in {p.name for p, _ in edited_answers(ANSWER, ANSWER + "  ")}


def test_lines_become_bullets_and_short_answers_are_still_cut():
    from rmcore.probes import as_bullets, cut_in_half

    assert as_bullets("first\n* second\n\nthird") == "- first\n- second\n- third"
    assert cut_in_half("word") == "wo" and cut_in_half("one two three four") == "one two"


def test_the_report_changes_are_the_models_rewards_in_spreads(tiny_model_dir):
    from rmcore.model import RewardModel

    model = RewardModel.load(tiny_model_dir)
    report = run_probes(model, "How do I boil an egg?", ANSWER, wrong_facts="Eggs boil at 20 degrees.",
                        spread=0.5, spread_source="test data")
    original = model.rewards("How do I boil an egg?", [ANSWER])[0]
    assert report.original_reward == pytest.approx(original, abs=1e-5)
    assert [row["name"] for row in report.rows] == [p.name for p in PROBES] + ["wrong_facts"]
    for row in report.rows:
        alone = model.rewards("How do I boil an egg?", [row["text"]])[0]
        assert row["reward"] == pytest.approx(alone, abs=1e-4)
        assert row["delta"] == pytest.approx(row["reward"] - report.original_reward)
        assert row["delta_units"] == pytest.approx(row["delta"] / 0.5)
    assert report.to_dict()["spread_source"] == "test data"
    raw = run_probes(model, "How do I boil an egg?", ANSWER)
    assert raw.spread is None and raw.rows[0]["delta_units"] == raw.rows[0]["delta"]


def test_cli_probe_prints_json_with_the_spread_it_used(tiny_model_dir, demo_path):
    from rmcore.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["probe", "--model", str(tiny_model_dir), "--prompt", "Name a prime", "--response",
                     "Seven is prime. So is eleven.", "--wrong", "Nine is prime.", "--spread-data", str(demo_path),
                     "--spread-limit", "5", "--json"])
    assert code == 0
    report = json.loads(out.getvalue())
    assert report["spread"] > 0 and "(5 prompts)" in report["spread_source"]
    assert {p["name"] for p in report["probes"]} == {p.name for p in PROBES} | {"wrong_facts"}
    assert report["trained"] is False
