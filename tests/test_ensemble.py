"""Ensembles: members differ (seeds, bootstrap resamples), each is a plain model folder, and the
ensemble's reward is their mean; the conservative pick weighs the spread."""

from __future__ import annotations

import json
import statistics

import pytest

from rmcore.data import read_preferences
from rmcore.training.ensemble import (
    ENSEMBLE_FILE,
    Ensemble,
    EnsembleScore,
    bootstrap_sample,
    is_ensemble,
    train_ensemble,
)


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
    from rmcore.model.reward_model import RewardModel
    from rmcore.training.config import TrainConfig

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
    from rmcore.training.ensemble import evaluate_ensemble

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


# ----------------------------------------------------------------------------- head mode: one trunk for every member


def test_a_fresh_head_is_the_head_a_fresh_load_with_that_seed_gives(tiny_model_dir):
    import torch

    from rmcore.model.reward_model import load_sequence_classifier
    from rmcore.training.ensemble import fresh_head

    alone, _, _ = load_sequence_classifier(str(tiny_model_dir), seed=3)
    reused, _, _ = load_sequence_classifier(str(tiny_model_dir), seed=0)
    assert not torch.equal(alone.score.weight, reused.score.weight)
    fresh_head(reused, 3)
    assert torch.equal(alone.score.weight, reused.score.weight)


@pytest.mark.slow
def test_head_members_share_one_load_and_equal_members_trained_alone(tiny_model_dir, demo_path, tmp_path,
                                                                      monkeypatch):
    """The shared trunk changes the cost, not the models: each member is bit for bit what train() alone makes
    of its seed and resample, and a standard folder whose trunk shard is the first member's bytes."""
    import os
    from dataclasses import replace

    from transformers import AutoModelForSequenceClassification

    import rmcore.training.ensemble
    from rmcore.model.shared_trunk import HEAD_SHARD, TRUNK_SHARD, read_weights
    from rmcore.training.config import TrainConfig
    from rmcore.training.ensemble import HELD_OUT_FILE
    from rmcore.training.train import train

    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    groups = read_preferences(demo_path).groups
    config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=2, seed=5)
    loads = []
    real_load = rmcore.training.ensemble.load_sequence_classifier
    monkeypatch.setattr(rmcore.training.ensemble, "load_sequence_classifier",
                        lambda *a, **k: loads.append(1) or real_load(*a, **k))
    info = train_ensemble(config, 3, groups[:24], tmp_path / "ens", eval_groups=groups[40:44])
    assert len(loads) == 1 and info["shared_trunk"] is True, "the base model is loaded once for all members"
    monkeypatch.setattr(rmcore.training.ensemble, "load_sequence_classifier", real_load)
    members = [tmp_path / "ens" / m["path"] for m in info["members"]]
    for seed, folder in zip((5, 7), (members[0], members[2])):
        alone = tmp_path / f"alone-{seed}"
        train(replace(config, seed=seed), bootstrap_sample(groups[:24], seed), alone, eval_groups=groups[40:44])
        assert read_weights(folder)["score.weight"].equal(read_weights(alone)["score.weight"])
        saved, expected = (json.loads((f / "rmcore.json").read_text()) for f in (folder, alone))
        assert saved["metrics"]["eval"] == expected["metrics"]["eval"] and saved["files"] == expected["files"]
        assert saved["metrics"]["train"]["loss"] == expected["metrics"]["train"]["loss"]
    first, last = members[0], members[2]
    assert sorted(p.name for p in last.iterdir()) == sorted(p.name for p in first.iterdir())
    assert os.stat(last / TRUNK_SHARD).st_ino == os.stat(first / TRUNK_SHARD).st_ino, "one trunk on disk"
    assert (last / HEAD_SHARD).read_bytes() != (first / HEAD_SHARD).read_bytes()
    plain = AutoModelForSequenceClassification.from_pretrained(last)  # plain transformers reads a member
    assert plain.score.weight.detach().equal(read_weights(last)["score.weight"])
    assert (last / "README.md").read_text().startswith("---\n") and "last" not in info
    held = read_preferences(tmp_path / "ens" / HELD_OUT_FILE).groups
    assert [g.prompt for g in held] == [g.prompt for g in groups[40:44]], "the held-out prompts are kept"


@pytest.mark.slow
def test_an_ensemble_is_read_as_a_reward_model_with_the_members_mean(tiny_model_dir, demo_path, tmp_path,
                                                                     monkeypatch):
    """What takes a RewardModel (probes, scoring a file) takes an ensemble, and reads the members' mean."""
    from rmcore.analysis.probes import run_probes
    from rmcore.analysis.scoring import scored_records
    from rmcore.training.config import TrainConfig

    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    groups = read_preferences(demo_path).groups
    train_ensemble(TrainConfig(model=str(tiny_model_dir), mode="head", epochs=1, seed=1), 2, groups[:12],
                   tmp_path / "ens")
    ensemble = Ensemble.load(tmp_path / "ens")
    prompt, answer = "How do I boil an egg?", "Simmer it for 9 minutes. Then cool it."
    score = ensemble.score(prompt, [answer, "idk"])
    assert ensemble.rewards(prompt, [answer, "idk"]) == pytest.approx(score.mean, abs=1e-5) == score.rewards
    report = run_probes(ensemble, prompt, answer)
    assert report.original_reward == pytest.approx(ensemble.rewards(prompt, [answer])[0], abs=1e-5)
    records = list(scored_records(ensemble, groups[:3]))
    expected = [ensemble.rewards(g.prompt, g.responses) for g in groups[:3]]
    assert [r["rewards"] for r in records] == [pytest.approx(e, abs=1e-5) for e in expected]
    assert score.trained and ensemble.max_length == ensemble.members[0].max_length


def test_what_an_ensembles_spread_says():
    from rmcore.training.ensemble import reading

    settled = EnsembleScore(mean=[2.0, 0.5, 0.0], spread=[0.1, 0.4, 0.2], members=[], probabilities=[], best=0,
                            conservative_best=0, k=1.0)
    said = reading(settled)
    assert said["most_disputed"] == 1 and said["largest_spread"] == 0.4 and said["top_gap"] == 1.5
    assert not said["top_two_close"] and not said["picks_differ"]
    close = EnsembleScore(mean=[1.0, 0.9], spread=[0.5, 0.05], members=[], probabilities=[], best=0,
                          conservative_best=1, k=1.0)
    said = reading(close)
    assert said["top_two_close"] and said["picks_differ"] and said["top_gap"] == pytest.approx(0.1)
    assert close.pick(0.0) == 0 and close.pick(1.0) == 1, "k = 0 is the plain mean; caution prefers the agreed one"


def test_ensembles_are_listed_newest_first_and_a_damaged_file_is_named(tmp_path):
    import os

    from rmcore.core.errors import ModelError
    from rmcore.training.ensemble import ensemble_folders, member_folders, read_info

    for age, name in enumerate(["new", "old"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / ENSEMBLE_FILE).write_text(json.dumps({"members": [{"path": "members/0"}]}))
        os.utime(tmp_path / name / ENSEMBLE_FILE, (1e9 - age, 1e9 - age))
    (tmp_path / "single").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / ENSEMBLE_FILE).write_text("{}")
    assert [f.name for f in ensemble_folders(tmp_path)] == ["new", "old"]
    assert member_folders(tmp_path / "new") == [tmp_path / "new" / "members" / "0"]
    (tmp_path / "old" / ENSEMBLE_FILE).write_text(json.dumps({"members": "all of them"}))
    with pytest.raises(ModelError, match="ensemble.json: no list of members"):
        read_info(tmp_path / "old")
    (tmp_path / "old" / ENSEMBLE_FILE).write_text(json.dumps({"members": [{"path": "../new"}]}))
    with pytest.raises(ModelError, match="outside the ensemble's folder"):
        read_info(tmp_path / "old")
    assert ensemble_folders(tmp_path / "missing") == []
