"""The app with ensembles (issue 17): the Probe page draws the members' spread as error bars and says
what it means, the Evaluate page shows accuracy against the members' disagreement, and probe results
go onto a model's card. AppTest on a tiny random model, as tests/test_app.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the app is a folder of the project, not an installed package
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import jobs  # noqa: E402
from rmcore.data import demo_data_path, read_preferences  # noqa: E402

APP = str(ROOT / "app" / "main.py")
TIMEOUT = 60


@pytest.fixture()
def models(tiny_model_dir, tmp_path, monkeypatch):
    """The app on the tiny model, with a tiny head-mode ensemble (held-out prompts saved) in its models folder."""
    from rmcore.training.config import TrainConfig
    from rmcore.training.ensemble import train_ensemble

    folder = tmp_path / "models"
    monkeypatch.setenv("RMCORE_APP_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_APP_GENERATOR", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_MODELS_DIR", str(folder))
    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RMCORE_DEVICE", "cpu")
    monkeypatch.setattr(jobs, "_MANAGER", jobs.JobManager())
    groups = read_preferences(demo_data_path()).groups
    train_ensemble(TrainConfig(model=str(tiny_model_dir), mode="head", epochs=2, seed=1), 3, groups[:30],
                   folder / "tiny-ens", eval_groups=groups[30:40])
    return folder


def open_probe(model_key: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("views/probe.py").run()
    at.selectbox(key="probe_model").set_value(model_key).run()
    return at


def chart(at: AppTest, key: str) -> dict:
    specs = [json.loads(e.proto.spec) for e in at.get("plotly_chart") if e.proto.id.endswith(f"-{key}")]
    assert specs, f"no chart {key!r}"
    return specs[0]


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def test_probe_shows_an_ensembles_spread_as_error_bars_and_says_what_it_means(models):
    from rmcore.training.ensemble import Ensemble

    at = open_probe("ensemble:tiny-ens")
    assert "ensemble of 3 head models" in at.selectbox(key="probe_model").format_func("ensemble:tiny-ens")
    at.button(key="probe_score").click().run()
    no_exception(at)
    candidates = [t.value for t in at.text_area if t.key.startswith("cand_")]
    score = Ensemble.load(models / "tiny-ens").score(at.text_area(key="probe_prompt").value, candidates)
    bars = chart(at, "reward_bars")["data"][0]
    order = sorted(range(len(candidates)), key=score.mean.__getitem__)
    assert bars["x"] == pytest.approx([score.mean[i] for i in order], abs=1e-5)
    assert bars["error_x"]["array"] == pytest.approx([score.spread[i] for i in order], abs=1e-5)
    assert any("Do the members agree?" in m.value for m in at.markdown)
    assert any("disagree most about candidate" in m.value for m in at.markdown)
    assert any("where they disagree, the reward is a guess" in m.value for m in at.markdown)
    at.slider(key="probe_k").set_value(3.0).run()
    no_exception(at)
    careful = score.pick(3.0)
    said = [c.value for c in at.caption] + [i.value for i in at.info]
    assert any(f"conservative pick is {'the same answer, ' if careful == score.best else 'candidate '}#{careful + 1}"
               in text for text in said)
    # the counterfactual edits run on the ensemble's mean reward, with the spread on its held-out prompts
    at.button(key="run_probes").click().run()
    no_exception(at)
    assert len(at.dataframe[0].value) == 6
    assert any("10 held-out instructions saved with tiny-ens" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "record_probes"], "an ensemble's members each have their own card"


def test_evaluate_shows_accuracy_against_the_members_disagreement(models):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.switch_page("views/evaluate.py").run()
    at.selectbox(key="eval_model").set_value("ensemble:tiny-ens").run()
    assert at.radio(key="eval_source").value == "held-out prompts saved with this model"
    at.button(key="run_eval").click().run()
    no_exception(at)
    assert any(s.value == "Accuracy against ensemble disagreement" for s in at.subheader)
    bins = chart(at, "by_disagreement")["data"][0]
    comparisons = int(next(m.value for m in at.metric if m.label == "Comparisons"))
    assert sum(bins["customdata"]) == comparisons and len(bins["x"]) == 4
    assert all(0 <= y <= 1 for y in bins["y"])
    assert any("each alone:" in m.value for m in at.markdown)
    at.toggle(key="eval_compare").set_value(True).run()  # an ensemble compared with itself, as model B
    at.selectbox(key="eval_model_b").set_value("ensemble:tiny-ens").run()
    at.button(key="run_eval").click().run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["B − A"] == "+0.000" and metrics["Pick the same answer"] == "100%"


def test_probe_results_of_a_trained_model_go_onto_its_card(models, tiny_model_dir, demo_path):
    from rmcore.cli import main
    from rmcore.model.card import render_card

    rm = models / "tiny-rm"
    assert main(["train", str(demo_path), "--out", str(rm), "--model", str(tiny_model_dir), "--mode", "head",
                 "--epochs", "1", "--limit", "12", "--quiet"]) == 0
    at = open_probe("trained:tiny-rm")
    at.button(key="probe_score").click().run()
    at.button(key="run_probes").click().run()
    at.button(key="record_probes").click().run()
    no_exception(at)
    assert at.success[-1].value.startswith("Recorded in") and "README.md shows them" in at.success[-1].value
    metadata = json.loads((rm / "rmcore.json").read_text())
    assert metadata["probes"][0]["prompt"] == at.text_area(key="probe_prompt").value
    assert (rm / "README.md").read_text() == render_card(metadata, rm.name)
