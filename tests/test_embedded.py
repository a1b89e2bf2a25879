"""The embedded SmolLM2-135M-Instruct: conversion, a real head-mode run, agreement with transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rmcore.data import read_preferences, split_groups
from rmcore.model.reward_model import RewardModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    return RewardModel.load("embedded", device="cpu")


def test_embedded_model_converts_to_a_plain_folder(embedded):
    from rmcore.model.embedded import embedded_model_dir

    folder = embedded_model_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer_config.json").is_file()
    tok = embedded.tokenizer
    assert tok.chat_template and "<|im_start|>" in embedded.render("Hi", "Hello")
    assert tok.pad_token_id != tok.eos_token_id  # we moved padding off <|im_end|>
    assert not embedded.trained


def test_head_mode_on_the_demo_set_learns_a_clear_preference(demo_path, tmp_path):
    groups = read_preferences(demo_path).groups
    train_groups, held_out = split_groups(groups, 0.25, seed=0)
    from rmcore.training.train import TrainConfig, train

    result = train(TrainConfig(mode="head", epochs=20, max_length=384), train_groups, tmp_path / "rm",
                   eval_groups=held_out)
    accuracy = result.final["eval"]["eval_accuracy"]
    assert accuracy >= 0.75, f"held-out accuracy {accuracy:.3f}"
    # the saved model agrees with the transformers pipeline, through the CLI's --json
    prompt, candidates = held_out[0].prompt_text, held_out[0].responses
    args = ["score", "--model", str(tmp_path / "rm"), "--prompt", prompt, "--json"]
    for c in candidates:
        args += ["--response", c]
    proc = subprocess.run([sys.executable, "-m", "rmcore", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)["rewards"]
    from transformers import pipeline

    model = RewardModel.load(tmp_path / "rm", device="cpu")
    pipe = pipeline("text-classification", model=str(tmp_path / "rm"), function_to_apply="none", device="cpu")
    piped = [pipe(model.render(prompt, c))[0]["score"] for c in candidates]
    assert cli == pytest.approx(piped, abs=1e-3)


@pytest.mark.parametrize("name", ["oasst/en_100_tree.jsonl", "hh-rlhf/helpful-base-test.jsonl.gz"])
def test_short_run_on_real_data(shared_data, name, tmp_path):
    out = tmp_path / "rm"
    cmd = [sys.executable, "-m", "rmcore", "train", str(shared_data / name), "--out", str(out), "--mode", "head",
           "--epochs", "2", "--limit", "16", "--max-length", "192", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "rmcore.json").read_text())
    assert meta["data"]["train_prompts"] + meta["data"]["eval_prompts"] == 16
    assert meta["steps"] == meta["total_steps"] > 0
