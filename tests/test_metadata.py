"""One reader of a model folder's rmcore.json and one data fingerprint, used by rmcore and the app alike."""

from __future__ import annotations

import json

import pytest

from app import jobs, settings
from app.policy_jobs import list_policies
from app.state import LoadedData
from rmcore.core.errors import ModelError
from rmcore.core.folders import METADATA_FILE, POLICY_METADATA_FILE, read_metadata
from rmcore.data import RankedGroup, groups_fingerprint


def test_read_metadata_reads_the_file_and_names_a_damaged_one(tmp_path):
    assert read_metadata(tmp_path) == {}  # no rmcore.json: nothing saved about it
    (tmp_path / METADATA_FILE).write_text(json.dumps({"mode": "head", "config": {"lr": 1e-3}}))
    assert read_metadata(tmp_path)["config"] == {"lr": 1e-3}
    (tmp_path / POLICY_METADATA_FILE).write_text(json.dumps({"kind": "policy"}))
    assert read_metadata(tmp_path, POLICY_METADATA_FILE) == {"kind": "policy"}
    for damaged, what in (('{"mode": "he', "not valid JSON"), ("[1, 2]", "expected a JSON object")):
        (tmp_path / METADATA_FILE).write_text(damaged)
        with pytest.raises(ModelError, match=what) as caught:
            read_metadata(tmp_path)
        assert str(tmp_path / METADATA_FILE) in str(caught.value) and "\n" not in str(caught.value)


def _group(ranks) -> RankedGroup:
    return RankedGroup(prompt=[{"role": "user", "content": "Hi?"}], responses=["a", "b", "c"], ranks=list(ranks))


def test_the_data_fingerprint_follows_every_edit_and_the_app_uses_rmcores():
    groups = [_group([1, 2, 3]), _group([2, 1, 3])]
    same = [_group([1, 2, 3]), _group([2, 1, 3])]
    assert groups_fingerprint(groups) == groups_fingerprint(same)  # equal data, equal key
    assert groups_fingerprint(groups) != groups_fingerprint(groups[::-1])  # order matters (splits follow it)
    reranked = [_group([1, 2, 3]), _group([1, 2, 3])]
    assert groups_fingerprint(groups) != groups_fingerprint(reranked)
    data = LoadedData(name="x.jsonl", groups=groups, report={}, excluded={1})
    assert data.fingerprint() == groups_fingerprint([groups[0]])  # the active groups only


@pytest.fixture(scope="module")
def tiny_reward_model_dir(tmp_path_factory):
    from rmcore.model.tiny import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", seed=1)


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("RMCORE_MODELS_DIR", str(folder))
    return folder


def test_the_app_reads_model_and_policy_metadata_through_rmcore(models, tiny_reward_model_dir):
    import shutil

    good, damaged = models / "good", models / "damaged"
    for folder in (good, damaged):
        shutil.copytree(tiny_reward_model_dir, folder)
    (damaged / METADATA_FILE).write_text("{not json")
    listed = {entry.name: entry for entry in settings.list_models()}
    assert listed["good"].metadata == read_metadata(good) != {}
    assert listed["damaged"].metadata == {} and listed["damaged"].is_reward_model  # by its config alone

    (good / POLICY_METADATA_FILE).write_text(json.dumps({"kind": "policy", "method": "rs"}))
    (damaged / POLICY_METADATA_FILE).write_text("[]")
    assert list_policies(models) == [("good", {"kind": "policy", "method": "rs"})]


def test_resuming_without_saved_settings_says_so(models):
    folder = models / "run"
    (folder / "checkpoint").mkdir(parents=True)
    with pytest.raises(ModelError, match="no settings"):
        jobs.resume_request(folder)
