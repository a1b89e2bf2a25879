"""Rejection-sampling fine-tuning of a policy toward a reward model, on tiny random models."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from rmcore.cli import main
from rmcore.core.errors import ModelError
from rmcore.core.folders import CHECKPOINT_DIR, POLICY_METADATA_FILE
from rmcore.policy.config import RLHFConfig
from rmcore.policy.rlhf import split_prompts, train_policy

TRAIN = ["Name a prime.", "Boil an egg?", "Say hello.", "What is 2 + 2?"]
HELD_OUT = ["Name a colour.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from rmcore.model.tiny import build_tiny_model, build_tiny_reward_model

    root = tmp_path_factory.mktemp("rlhf")
    return {"policy": build_tiny_model(root / "policy", seed=3), "rm": build_tiny_reward_model(root / "rm", seed=1),
            "gold": build_tiny_reward_model(root / "gold", seed=2)}


def config(models, **overrides) -> RLHFConfig:
    options = dict(reward_model=str(models["rm"]), policy=str(models["policy"]), gold_model=str(models["gold"]),
                   rounds=2, n=3, max_new_tokens=5, batch_size=2, sft_epochs=1, eval_samples=2, lr=5e-3)
    options.update(overrides)
    return RLHFConfig(**options)


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_sampling_phases_say_their_share_and_time_left(models, tmp_path, monkeypatch):
    """Rounds and held-out evaluations sample for minutes on the embedded policy: never silently."""
    from rmcore.policy import run

    monkeypatch.setattr(run, "SAMPLING_REPORT_S", 0.0)  # tiny models sample in milliseconds: say every report
    events = []
    train_policy(config(models), TRAIN, HELD_OUT, tmp_path / "policy", on_step=events.append)
    said = [e for e in events if e["event"] == "phase" and e.get("eta_s") is not None]
    rounds = [e["phase"] for e in said if e["phase"].startswith("round 1/2: sampling 3 answers")]
    evaluations = [e["phase"] for e in said if e["phase"].startswith("evaluating on 2 held-out prompts, sampling")]
    assert rounds and evaluations
    assert all(text.endswith("%") for text in rounds + evaluations)
    assert all(e["eta_s"] >= 0 for e in said)


def test_rejection_sampling_changes_the_policy_and_saves_a_loadable_folder(models, tmp_path):
    from transformers import AutoModelForCausalLM

    events = []
    out = tmp_path / "policy"
    result = train_policy(config(models), TRAIN, HELD_OUT, out, on_step=events.append)
    assert not result.stopped and result.steps == 4  # 2 rounds x 2 batches of the 4 picks
    assert not (out / CHECKPOINT_DIR).exists()
    start, trained = weights(models["policy"]), weights(out)
    changed = [name for name in start if not torch.equal(start[name], trained[name])]
    assert changed and not any("lora" in name for name in trained)  # merged into plain weights
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain HF causal LM
    assert model.config.model_type == "llama"
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 2, 4]
    for e in evals:
        assert {"reward_mean", "gold_mean", "kl", "length_mean", "progress", "total_steps"} <= set(e)
    assert evals[0]["kl"] == pytest.approx(0.0, abs=1e-5) and evals[-1]["kl"] != 0.0
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and all("eta_s" in e for e in steps)
    assert events[-1]["event"] == "done"
    meta = json.loads((out / POLICY_METADATA_FILE).read_text())
    assert meta["method"] == "rs" and meta["steps"] == 4 and "kl_handling" in meta
    assert len(meta["before_after"]) == len(HELD_OUT) == len(result.before_after)
    expected = {"before", "after", "reward_before", "reward_after", "gold_before", "gold_after"}
    assert expected <= set(meta["before_after"][0])


@pytest.mark.slow  # three short runs
def test_stop_saves_a_checkpoint_and_resume_finishes_like_an_uninterrupted_run(models, tmp_path):
    whole = tmp_path / "whole"
    train_policy(config(models, gold_model=None), TRAIN, HELD_OUT, whole)
    stop = threading.Event()

    def stop_after_first_step(event):
        if event["event"] == "step" and event["step"] == 1:
            stop.set()

    out = tmp_path / "stopped"
    result = train_policy(config(models, gold_model=None), TRAIN, HELD_OUT, out, on_step=stop_after_first_step,
                          stop_event=stop)
    assert result.stopped and result.steps == 1
    assert (out / CHECKPOINT_DIR / "state.json").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / POLICY_METADATA_FILE).read_text())["stopped"] is True
    with pytest.raises(ModelError, match="--resume"):
        train_policy(config(models, gold_model=None), TRAIN, HELD_OUT, out)
    with pytest.raises(Exception, match="another policy, reward model, prompts or options"):
        train_policy(config(models, gold_model=None, n=2), TRAIN, HELD_OUT, out, resume=True)
    events = []
    result = train_policy(config(models, gold_model=None), TRAIN, HELD_OUT, out, resume=True, on_step=events.append)
    assert not result.stopped and result.steps == 4
    assert [e["step"] for e in events if e["event"] == "step"] == [2, 3, 4]
    assert not (out / CHECKPOINT_DIR).exists()
    resumed, uninterrupted = weights(out), weights(whole)
    for name in uninterrupted:
        assert torch.allclose(resumed[name], uninterrupted[name], atol=1e-5), name


def test_output_folder_with_a_users_files_is_refused(models, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not empty"):
        train_policy(config(models), TRAIN, HELD_OUT, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_split_prompts_holds_some_out():
    train, held = split_prompts(list(range(10)), 0.3, seed=0)
    assert len(held) == 3 and sorted(train + held) == list(range(10))
    assert split_prompts([1, 2], 0.0) == ([1, 2], [])


def test_keep_fine_tunes_on_the_best_k_answers_of_each_prompt(models, tmp_path):
    pick_means, sample_means = {}, set()
    for keep in (1, 2, 3):
        events = []
        result = train_policy(config(models, rounds=1, keep=keep, kl_coef=0.0), TRAIN, [], tmp_path / f"k{keep}",
                              on_step=events.append)
        assert result.steps == len(TRAIN) * keep // 2  # one epoch over the picks, 2 answers a step
        picked = next(e for e in events if "pick_reward_mean" in e)
        assert picked["phase"].startswith(f"round 1: kept the best {keep} of 3" if keep > 1
                                          else "round 1: kept the best of 3")
        pick_means[keep] = picked["pick_reward_mean"]
        sample_means.add(round(picked["sample_reward_mean"], 6))
    assert len(sample_means) == 1, "the same seed samples the same answers"
    assert pick_means[1] > pick_means[2] > pick_means[3] == pytest.approx(sample_means.pop(), abs=1e-5)
    with pytest.raises(ValueError, match="keep"):
        train_policy(config(models, keep=4), TRAIN, [], tmp_path / "k4")


def test_cli_bad_input_gives_one_line_and_exit_2(models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TRAIN + HELD_OUT) + "\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    base = ["rlhf", "--reward-model", str(models["rm"]), "--policy", str(models["policy"]), "--out",
            str(tmp_path / "out")]
    assert main([*base, str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no prompts" in err[0]
    # a reward model folder that is not one: the policy itself
    bad = ["rlhf", str(prompts), "--reward-model", str(models["policy"]), "--out", str(tmp_path / "out2"),
           "--policy", str(models["policy"])]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a reward model folder" in err[0]
    with pytest.raises(SystemExit) as exc:
        main([*base, str(prompts), "--n", "0"])
    assert exc.value.code == 2 and "--n: must be at least 1" in capsys.readouterr().err


def test_cli_runs_rejection_sampling(models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TRAIN + HELD_OUT) + "\n")
    code = main(["rlhf", str(prompts), "--reward-model", str(models["rm"]), "--policy", str(models["policy"]),
                 "--out", str(tmp_path / "out"), "--rounds", "1", "--n", "2", "--max-new-tokens", "4",
                 "--eval-samples", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "held-out reward" in err and "KL to the start" in err
    assert (tmp_path / "out" / POLICY_METADATA_FILE).is_file()


def test_a_second_run_into_a_policy_folder_keeps_the_users_files(models, tmp_path):
    out = tmp_path / "policy"
    train_policy(config(models, rounds=1), TRAIN, HELD_OUT, out)
    (out / "notes.txt").write_text("mine")
    result = train_policy(config(models, rounds=1, seed=1), TRAIN, HELD_OUT, out)
    assert not result.stopped and (out / "notes.txt").read_text() == "mine"
    assert "notes.txt" not in json.loads((out / POLICY_METADATA_FILE).read_text())["files"]
    (out / "config.json").unlink()
    (out / "README.md").write_text("my notes")  # a name rmcore may write, not listed as rmcore's
    with pytest.raises(ModelError, match="README.md: not written by rmcore"):
        train_policy(config(models, rounds=1), TRAIN, HELD_OUT, out)


def test_no_held_out_prompts_is_a_finished_run_not_a_stop(models, tmp_path, capsys):
    """--eval-fraction 0 once ended every run "stopped early" with exit 130 and a checkpoint: an empty
    evaluation was read as a stop."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TRAIN) + "\n")
    out = tmp_path / "out"
    code = main(["rlhf", str(prompts), "--reward-model", str(models["rm"]), "--policy", str(models["policy"]),
                 "--out", str(out), "--rounds", "2", "--n", "2", "--max-new-tokens", "3", "--eval-fraction", "0"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "stopped early" not in err and "trained without evaluations" in err
    assert not (out / CHECKPOINT_DIR).exists()
    saved = json.loads((out / POLICY_METADATA_FILE).read_text())
    assert saved["stopped"] is False and saved["steps"] == saved["total_steps"] > 0


@pytest.mark.parametrize(("options", "says"), [
    (["--seed", str(2**70)], "--seed must be a whole number from 0 to 4,294,967,295"),
    (["--n", "5000"], "--n and --eval-samples must be at most 4096 answers per prompt"),
    (["--max-new-tokens", "100000"], "--max-new-tokens 100,000: the policy reads at most 2,048 tokens"),
])
def test_rlhf_options_that_cannot_be_met_are_one_line_naming_the_option(options, says, models, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TRAIN + HELD_OUT) + "\n")
    code = main(["rlhf", str(prompts), "--reward-model", str(models["rm"]), "--policy", str(models["policy"]),
                 "--out", str(tmp_path / "out"), "--quiet", *options])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / POLICY_METADATA_FILE).exists()
