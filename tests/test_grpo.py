"""GRPO through TRL with rmcore's reward model: the reward function, TRL interop, a run, stop and resume."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rmcore.core.errors import ModelError, TrainingError
from rmcore.core.folders import POLICY_METADATA_FILE
from rmcore.model.reward_model import RewardModel
from rmcore.policy.config import RLHFConfig
from rmcore.policy.reward_function import RewardFunction
from rmcore.policy.rlhf import train_policy

PROMPTS = ["How do I boil an egg?", "Name a prime number", "Why is the sky blue?", "Say hi"]
HELD_OUT = ["What is 2 + 2?"]
CONTRACT_KEYS = {"step", "total_steps", "reward_mean", "gold_mean", "kl", "length_mean", "progress", "eta_s"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny random policy, a reward model and a gold judge, each saved as rmcore saves them."""
    from rmcore.model.tiny import build_tiny_model, build_tiny_reward_model

    root = tmp_path_factory.mktemp("grpo")
    return {"policy": build_tiny_model(root / "policy", seed=3), "reward": build_tiny_reward_model(root / "rm"),
            "gold": build_tiny_reward_model(root / "gold", seed=1)}


@pytest.fixture(scope="module")
def reward_model(models):
    return RewardModel.load(models["reward"], device="cpu")


def grpo_config(models, **overrides) -> RLHFConfig:
    options = dict(reward_model=str(models["reward"]), policy=str(models["policy"]), method="grpo",
                   gold_model=str(models["gold"]), rounds=1, n=2, max_new_tokens=6, lr=5e-3, batch_size=1,
                   eval_samples=2)
    return RLHFConfig(**{**options, **overrides})


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum((a[k].float() - b[k].float()).norm().item() ** 2 for k in a) ** 0.5


# ----------------------------------------------------------------------------- the reward function


def test_reward_function_equals_score_and_scores_each_prompt_once(reward_model, monkeypatch):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"}]
    prompts = [PROMPTS[0], chat, PROMPTS[0], chat, PROMPTS[1], PROMPTS[0]]  # interleaved, as TRL may pass them
    completions = ["Simmer it.", [{"role": "assistant", "content": "Red."}], "  Boil it 9 minutes.",
                   [{"role": "assistant", "content": "\n\nBlue"}], "7", ""]
    seen = []
    rewards_for = reward_model.rewards_for
    monkeypatch.setattr(reward_model, "rewards_for", lambda encoded, **kw: seen.append(encoded) or rewards_for(
        encoded, **kw))
    reward = RewardFunction(reward_model)
    got = reward(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None)
    assert reward.__name__ == "rmcore_reward"
    assert len(seen) == 1 and [len(g.response_ids) for g in seen[0]] == [3, 2, 1]  # one packed group per prompt
    expected = [0.0] * len(prompts)
    for prompt in (PROMPTS[0], chat, PROMPTS[1]):
        indexes = [i for i, p in enumerate(prompts) if p == prompt]
        texts = [c if isinstance(c, str) else c[0]["content"] for c in (completions[i] for i in indexes)]
        for i, r in zip(indexes, reward_model.score(prompt, texts).rewards):
            expected[i] = r
    assert got == pytest.approx(expected, abs=1e-5)
    assert len(set(round(r, 6) for r in got)) == len(got)  # distinct rewards: a mix-up would show


def test_reward_function_refuses_what_it_cannot_score(reward_model):
    reward = RewardFunction(reward_model)
    with pytest.raises(ValueError, match="one assistant message"):
        reward(prompts=["q"], completions=[[{"role": "user", "content": "a"}]])
    with pytest.raises(ValueError, match="one prompt per completion"):
        reward(prompts=["q", "q"], completions=["a"])


# ----------------------------------------------------------------------------- TRL interop


def trl_trainer(models, reward_funcs, tmp_path, **args):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, num_generations=4,
                        max_completion_length=8, max_steps=1, learning_rate=1e-3, logging_steps=1, report_to="none",
                        gradient_checkpointing=False, bf16=False, use_cpu=True, save_strategy="no",
                        disable_tqdm=True, seed=0, **args)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS])
    return GRPOTrainer(model=str(models["policy"]), reward_funcs=reward_funcs, args=config, train_dataset=dataset)


@pytest.mark.slow  # seconds on a quiet 2-core machine, minutes on a busy one
def test_trl_reward_model_by_path_gives_rmcore_rewards(models, reward_model, tmp_path):
    """One real GRPO step with two reward functions: the rmcore folder BY PATH (TRL renders prompt +
    completion with the chat template and reads its own way) and RewardFunction; both equal `rmcore score`."""
    ours = RewardFunction(reward_model)
    trainer = trl_trainer(models, [str(models["reward"]), ours], tmp_path, reward_weights=[0.0, 1.0])
    trainer.train()
    by_path, ours_name = trainer.reward_func_names
    logged = trainer._logs  # what TRL recorded for the step: prompts, completions, each function's rewards
    prompts, completions = list(logged["prompt"]), list(logged["completion"])
    trl_rewards, our_rewards = list(logged["rewards"][by_path]), list(logged["rewards"][ours_name])
    assert len(trl_rewards) == 4 and ours.calls == 1
    assert trl_rewards == pytest.approx(our_rewards, abs=1e-5)
    # the same completions through the command line
    data = tmp_path / "completions.jsonl"
    kept = [i for i, c in enumerate(completions) if c[0]["content"].strip()]  # the reader drops empty answers
    assert len(kept) >= 2
    data.write_text("".join(json.dumps({"prompt": prompts[i][0]["content"], "response": completions[i][0]["content"]})
                            + "\n" for i in kept))
    out = tmp_path / "scored.jsonl"
    proc = subprocess.run([sys.executable, "-m", "rmcore", "score", "--model", str(models["reward"]), "--data",
                           str(data), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cli = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        for response, reward in zip(record["responses"], record["rewards"]):
            cli[(json.dumps(record["prompt"]), response)] = reward
    from_cli = [cli[(json.dumps(prompts[i][0]["content"]), completions[i][0]["content"])] for i in kept]
    assert [trl_rewards[i] for i in kept] == pytest.approx(from_cli, abs=1e-5)


def by_path_rewards(trainer, prompt, texts: list[str]) -> list[float]:
    """TRL's own reward-model path (GRPOTrainer._calculate_rewards) on chosen completions."""
    prompts = [[{"role": "user", "content": prompt}]] * len(texts)
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    inputs = [{"prompt": p} for p in prompts]
    return trainer._calculate_rewards(inputs, prompts, completions, [[0]] * len(texts))[:, 0].tolist()


# completions whose first characters the tokenizer may merge with the end of the assistant header
AWKWARD = ["Simmer it.", "  two spaces", "\n\nDouble newline", "\t tab", " one space", "trailing\n\n", "", "7"]


def test_trl_path_equals_rmcore_on_awkward_completions_tiny(models, reward_model, tmp_path):
    trainer = trl_trainer(models, [str(models["reward"])], tmp_path)
    assert by_path_rewards(trainer, PROMPTS[0], AWKWARD) == pytest.approx(
        reward_model.score(PROMPTS[0], AWKWARD).rewards, abs=1e-5)


@pytest.mark.slow
def test_trl_path_equals_rmcore_on_awkward_completions_embedded(models, tmp_path):
    """SmolLM2's tokenizer merges "\\n" + "  " across the prompt/answer boundary: rmcore tokenizes each
    whole text and splits where the texts stop sharing tokens, so TRL, pipelines and rmcore agree."""
    RewardModel.load("embedded", device="cpu").save(tmp_path / "embedded-rm")
    reward_model = RewardModel.load(tmp_path / "embedded-rm", device="cpu")
    trainer = trl_trainer(models, [str(tmp_path / "embedded-rm")], tmp_path)
    assert by_path_rewards(trainer, PROMPTS[0], AWKWARD) == pytest.approx(
        reward_model.score(PROMPTS[0], AWKWARD).rewards, abs=1e-4)


# ----------------------------------------------------------------------------- a GRPO run


@pytest.mark.slow  # seconds on a quiet 2-core machine, minutes on a busy one
def test_grpo_run_changes_the_policy_and_saves_a_loadable_folder(models, tmp_path):
    from transformers import AutoModelForCausalLM

    events = []
    out = tmp_path / "policy"
    result = train_policy(grpo_config(models, rounds=2, batch_size=2), PROMPTS, HELD_OUT, out, on_step=events.append)
    assert result.steps == 4 and not result.stopped
    steps = [e for e in events if e["event"] == "step"]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4] and all(CONTRACT_KEYS <= set(e) for e in steps)
    assert [e["step"] for e in evals] == [0, 2, 4] and all(CONTRACT_KEYS <= set(e) for e in evals)
    assert evals[0]["kl"] == 0 and evals[-1]["kl"] != 0  # the starting policy, then a moved one
    assert events[-1]["event"] == "done" and events[-1]["progress"] == 1
    before, after = weights(models["policy"]), weights(out)
    assert set(before) == set(after)  # merged: a plain causal LM, no adapter weights
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len([k for k in before if "proj" in k])  # every LoRA-adapted matrix moved
    policy = AutoModelForCausalLM.from_pretrained(out)
    assert policy.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False).shape == (1, 5)
    meta = json.loads((out / POLICY_METADATA_FILE).read_text())
    assert meta["method"] == "grpo" and meta["trl"]["num_generations"] == 2 and meta["steps"] == 4
    assert len(meta["before_after"]) == len(HELD_OUT) and {"before", "after", "gold_before"} <= set(
        meta["before_after"][0])
    assert not (out / "checkpoint").exists()


@pytest.mark.slow  # seconds on a quiet 2-core machine, minutes on a busy one
def test_grpo_stop_keeps_a_checkpoint_and_resume_continues_from_it(models, tmp_path):
    config = grpo_config(models, batch_size=1)  # 4 steps
    out = tmp_path / "policy"
    stop = threading.Event()

    def stop_after_step_2(event):
        if event["event"] == "step" and event["step"] == 2:
            stop.set()

    first = train_policy(config, PROMPTS, HELD_OUT, out, on_step=stop_after_step_2, stop_event=stop)
    assert first.stopped and first.steps == 3  # ends at the next step boundary
    assert (out / "checkpoint" / "state.json").is_file() and (out / POLICY_METADATA_FILE).is_file()
    at_stop = weights(out)
    with pytest.raises(ModelError, match="--resume"):
        train_policy(config, PROMPTS, HELD_OUT, out)
    events = []
    second = train_policy(config, PROMPTS, HELD_OUT, out, on_step=events.append, resume=True)
    assert not second.stopped and second.steps == 4
    assert [e["step"] for e in events if e["event"] == "step"] == [4]  # only the step that was left
    assert [e["step"] for e in second.history if e["event"] == "step"] == [1, 2, 3, 4]  # the history carried over
    final, base = weights(out), weights(models["policy"])
    # one more step from the checkpoint's adapters, not four from the start
    assert 0 < distance(final, at_stop) < distance(final, base)
    assert not (out / "checkpoint").exists()


def test_grpo_refuses_a_group_of_one(models, tmp_path):
    with pytest.raises(TrainingError, match="n must be at least 2"):
        train_policy(grpo_config(models, n=1), PROMPTS, HELD_OUT, tmp_path / "policy")


@pytest.mark.slow  # seconds on a quiet 2-core machine, minutes on a busy one
def test_rlhf_benchmark_runs_end_to_end_on_the_tiny_model(tmp_path):
    """bench/rlhf.py still runs (its numbers mean nothing on a tiny model): both measures, the same rewards."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import rlhf as bench_rlhf

    code = bench_rlhf.main(["--model", "tiny", "--prompts", "2", "--group-size", "2", "--max-new-tokens", "4",
                            "--repeats", "1", "--sample-repeats", "1", "--out", str(tmp_path)])
    assert code == 0
    [result] = tmp_path.glob("*_rlhf_tiny.json")
    summary = json.loads(result.read_text())
    assert summary["scoring"]["max_abs_reward_difference"] < 1e-4
    assert summary["scoring"]["token_ratio"] > 1  # the prompt is computed once instead of G times
    assert summary["sampling"]["tokens_per_s"]["rmcore"] > 0 and summary["sampling"]["speedup"] > 0
    assert result.with_suffix(".md").is_file()
