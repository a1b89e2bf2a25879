"""Ensembles: members differ (seeds, bootstrap resamples), each is a plain model folder, and the
ensemble's reward is their mean; the conservative pick weighs the spread."""

from __future__ import annotations

import statistics

import pytest

from rmcore.data import read_preferences
from rmcore.ensemble import ENSEMBLE_FILE, Ensemble, EnsembleScore, bootstrap_sample, is_ensemble, train_ensemble


def test_a_bootstrap_sample_draws_whole_prompts_with_replacement(demo_path):
    groups = read_preferences(demo_path).groups
    sample = bootstrap_sample(groups, seed=1)
    assert len(sample) == len(groups) and all(g in groups for g in sample)
    assert len({id(g) for g in sample}) < len(groups), "some prompts twice, some left out"
    assert bootstrap_sample(groups, 1) == sample and bootstrap_sample(groups, 2) != sample


def test_the_conservative_pick_subtracts_k_spreads():
    score = EnsembleScore(mean=[1.0, 0.8], spread=[0.5, 0.0], members=[], probabilities=[], best=0,
                          conservative_best=1, k=1.0)
    assert score.mean[0] - score.k * score.spread[0] < score.mean[1]


@pytest.mark.slow
def test_members_differ_and_their_mean_is_the_ensembles_reward(tiny_model_dir, demo_path, tmp_path, monkeypatch):
    from rmcore.config import TrainConfig
    from rmcore.model import RewardModel

    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    groups = read_preferences(demo_path).groups
    config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=2, seed=5)
    info = train_ensemble(config, 3, groups[:24], tmp_path / "ens", eval_groups=groups[40:44])
    assert is_ensemble(tmp_path / "ens") and (tmp_path / "ens" / ENSEMBLE_FILE).is_file()
    assert [m["seed"] for m in info["members"]] == [5, 6, 7]
    prompt, candidates = "How do I boil an egg?", ["Simmer it for 9 minutes.", "idk", "Boil it, then cool it."]
    members = [RewardModel.load(tmp_path / "ens" / m["path"]) for m in info["members"]]
    alone = [m.rewards(prompt, candidates) for m in members]
    assert alone[0] != pytest.approx(alone[1], abs=1e-4), "members differ"
    ensemble = Ensemble.load(tmp_path / "ens")
    assert len(ensemble) == 3
    score = ensemble.score(prompt, candidates, k=1.0)
    for i in range(3):
        assert score.mean[i] == pytest.approx(statistics.fmean(r[i] for r in alone), abs=1e-4)
        centred = [r[i] - statistics.fmean(r) for r in alone]  # each member's offset is arbitrary
        assert score.spread[i] == pytest.approx(statistics.pstdev(centred), abs=1e-4)
    assert score.members == [pytest.approx(r, abs=1e-4) for r in alone]
    assert score.best == max(range(3), key=score.mean.__getitem__)
    assert score.conservative_best == max(range(3), key=lambda i: score.mean[i] - score.spread[i])
    assert abs(score.probabilities[0][1] + score.probabilities[1][0] - 1) < 1e-9

    # evaluation reads the mean of the members, batched, and says how accuracy falls with disagreement
    from rmcore.ensemble import evaluate_ensemble

    held_out = groups[40:46]
    result = evaluate_ensemble(ensemble, held_out)
    per_member = [m.rewards_for([m.encode(g.prompt, g.responses) for g in held_out]) for m in members]
    expected = [statistics.fmean(rs[g][k] for rs in per_member) for g in range(len(held_out))
                for k in range(len(held_out[g].responses))]
    assert [r["reward"] for r in result.responses] == pytest.approx(expected, abs=1e-4)
    summary = result.summary["ensemble"]
    assert summary["members"] == 3 and len(summary["member_accuracies"]) == 3
    assert sum(b["comparisons"] for b in summary["accuracy_by_disagreement"]) == result.summary["comparisons"]


@pytest.mark.slow
def test_cli_train_ensemble_writes_members_and_refuses_resume(tiny_model_dir, demo_path, tmp_path, monkeypatch):
    from rmcore.cli import main

    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ens"
    assert main(["train", str(demo_path), "--out", str(out), "--model", str(tiny_model_dir), "--ensemble", "2",
                 "--epochs", "1", "--limit", "12", "--quiet"]) == 0
    assert is_ensemble(out) and (out / "members" / "0" / "config.json").is_file()
    assert (out / "members" / "1" / "README.md").is_file(), "each member is a model folder with its card"
    assert main(["train", str(demo_path), "--out", str(tmp_path / "other"), "--model", str(tiny_model_dir),
                 "--ensemble", "2", "--resume"]) == 2
