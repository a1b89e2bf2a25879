"""Counterfactual probes: each edit produces the text it names, and the report's changes are the
model's own rewards of those texts."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from rmcore.analysis.probes import FILLER, FLATTERY, HOPE, PROBES, edited_answers, run_probes

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
    from rmcore.analysis.probes import as_bullets, cut_in_half

    assert as_bullets("first\n* second\n\nthird") == "- first\n- second\n- third"
    assert cut_in_half("word") == "wo" and cut_in_half("one two three four") == "one two"


def test_the_report_changes_are_the_models_rewards_in_spreads(tiny_model_dir):
    from rmcore.model.reward_model import RewardModel

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


# ----------------------------------------------------------------------------- recorded in the model folder


def _report(delta_units: float, spread: float | None = 0.5):
    from rmcore.analysis.probes import ProbeReport

    rows = [{"name": p.name, "label": p.label, "kind": p.kind, "text": "edited", "reward": 1.0 + delta_units,
             "delta": delta_units * (spread or 1), "delta_units": delta_units} for p in PROBES]
    return ProbeReport(1.0, spread, "test data", rows)


def _model_folder(tmp_path, readme_is_ours: bool = True):
    folder = tmp_path / "rm"
    folder.mkdir()
    files = ["config.json", "rmcore.json"] + (["README.md"] if readme_is_ours else [])
    (folder / "rmcore.json").write_text(json.dumps({"base_model": "embedded", "mode": "head", "files": files}))
    (folder / "README.md").write_text("my own notes\n")
    return folder


def test_probes_are_recorded_in_rmcore_json_and_the_card_shows_their_mean(tmp_path):
    from rmcore.analysis.probes import MAX_RECORDED_RUNS, record_probes
    from rmcore.model.card import recorded_runs, render_card

    folder = _model_folder(tmp_path)
    notes = record_probes(folder, _report(0.5), "Q1", "A1")
    record_probes(folder, _report(-0.25), "Q2", "A2")
    assert "2 probed answers" in record_probes(folder, _report(1.5), "Q1", "A1")[0], "the same answer is replaced"
    assert "recorded in" in notes[0] and "model card" in notes[1]
    metadata = json.loads((folder / "rmcore.json").read_text())
    runs = recorded_runs(metadata)
    assert [(r["prompt"], r["response"]) for r in runs] == [("Q2", "A2"), ("Q1", "A1")]
    assert runs[1]["rows"][0]["delta_units"] == 1.5 and "text" not in runs[1]["rows"][0]
    assert metadata["files"] == ["config.json", "rmcore.json", "README.md"], "the rest of rmcore.json is kept"
    card = (folder / "README.md").read_text()
    assert card == render_card(metadata, "rm"), "the card is made from rmcore.json as it now is"
    assert '| append "I hope this helps!" | not rise | +0.62 | -0.25 to +1.50 | 2 | rewarded' in card
    for i in range(MAX_RECORDED_RUNS + 3):
        record_probes(folder, _report(0.1), f"q{i}", "a")
    runs = recorded_runs(json.loads((folder / "rmcore.json").read_text()))
    assert len(runs) == MAX_RECORDED_RUNS and runs[-1]["prompt"] == f"q{MAX_RECORDED_RUNS + 2}"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "no temporary file is left"


def test_a_readme_rmcore_did_not_write_is_left_alone_and_a_non_model_folder_refused(tmp_path):
    from rmcore.analysis.probes import record_probes
    from rmcore.core.errors import ModelError

    folder = _model_folder(tmp_path, readme_is_ours=False)
    notes = record_probes(folder, _report(0.5), "Q", "A")
    assert (folder / "README.md").read_text() == "my own notes\n" and "left as it is" in notes[1]
    assert json.loads((folder / "rmcore.json").read_text())["probes"][0]["prompt"] == "Q"
    with pytest.raises(ModelError, match="not a model rmcore saved"):
        record_probes(tmp_path, _report(0.5), "Q", "A")
    (folder / "README.md").unlink()  # no card at all: the one written now is listed as rmcore's
    record_probes(folder, _report(0.5), "Q", "A")
    assert "README.md" in json.loads((folder / "rmcore.json").read_text())["files"]
    assert (folder / "README.md").read_text().startswith("---\n")


@pytest.mark.slow
def test_cli_probe_records_into_a_trained_model_unless_told_not_to(tiny_model_dir, demo_path, tmp_path, monkeypatch):
    from rmcore.cli import main
    from rmcore.model.card import render_card

    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rm"
    assert main(["train", str(demo_path), "--out", str(out), "--model", str(tiny_model_dir), "--mode", "head",
                 "--epochs", "1", "--limit", "12", "--quiet"]) == 0
    args = ["probe", "--model", str(out), "--prompt", "Name a prime", "--response", "Seven is prime. So is eleven.",
            "--spread-data", str(demo_path), "--spread-limit", "4"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(args + ["--json"]) == 0
    report = json.loads(printed.getvalue())
    assert report["recorded"] is True
    metadata = json.loads((out / "rmcore.json").read_text())
    assert metadata["probes"][0]["rows"][0]["delta"] == pytest.approx(report["probes"][0]["delta"])
    assert (out / "README.md").read_text() == render_card(metadata, out.name)
    assert "## What it rewards (counterfactual probes)" in (out / "README.md").read_text()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args[:4] + ["Another question"] + args[5:] + ["--no-record"]) == 0
    assert len(json.loads((out / "rmcore.json").read_text())["probes"]) == 1, "--no-record writes nothing"
