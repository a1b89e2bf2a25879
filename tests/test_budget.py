"""A time budget is kept on a machine that slows down, and a stop works in every phase.

The runs here happen on a simulated machine (tests/conftest.py: SimulatedMachine): its clock moves
only when the trunk works, at a set cost per token, tripled part-way through. So the budget's
arithmetic is tested, not the speed of the machine the tests run on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from rmcore.core.errors import TrainingError
from rmcore.data import read_preferences, split_groups
from rmcore.model.reward_model import RewardModel, load_tokenizer
from rmcore.training.train import TrainConfig, train


@pytest.fixture()
def demo_split(demo_path):
    return split_groups(read_preferences(demo_path).groups, 0.2, seed=0)


def tokens_of(groups, model_dir, max_length=512) -> int:
    from rmcore.data.encoding import encode_groups

    return sum(g.num_tokens for g in encode_groups(load_tokenizer(str(model_dir)), groups, max_length))


def phases(events) -> list[str]:
    return [e["phase"] for e in events if e["event"] == "phase"]


def test_head_mode_features_shrink_when_the_machine_slows_down(tiny_model_dir, demo_split, tmp_path,
                                                               simulated_machine, private_cache):
    train_groups, eval_groups = demo_split
    budget = 60.0
    every_feature = tokens_of(train_groups + eval_groups, tiny_model_dir)
    machine = simulated_machine(cost=2 * budget / every_feature, slow_after=0.3 * budget)  # all: 2 budgets
    events: list[dict] = []
    result = train(TrainConfig(model=str(tiny_model_dir), mode="head", time_budget_s=budget), train_groups,
                   tmp_path / "rm", eval_groups=eval_groups, on_step=events.append, started_at=machine())
    meta = json.loads((tmp_path / "rm" / "rmcore.json").read_text())
    planned, kept = meta["plan"]["train_prompts"], meta["data"]["train_prompts"]
    assert 0 < kept < planned < len(train_groups), (kept, planned)
    assert any("the plan shrank to end on time" in p for p in phases(events))
    assert machine.now - machine.start <= budget, "the budget is kept (the save is instant here)"
    assert not result.stopped and result.final["eval"]["eval_comparisons"] > 0
    assert meta["phase_seconds"]["features"] > 0 and "plan: head mode" in phases(events)[2]
    assert RewardModel.load(tmp_path / "rm", device="cpu").trained


def test_full_mode_keeps_its_budget_when_every_token_costs_three_times_more(tiny_model_dir, demo_split, tmp_path,
                                                                            simulated_machine, private_cache):
    train_groups, eval_groups = demo_split
    budget = 120.0
    machine = simulated_machine(cost=0.0005, slow_after=0.4 * budget)
    events: list[dict] = []
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=20, batch_size=4, time_budget_s=budget)
    result = train(config, train_groups, tmp_path / "rm", eval_groups=eval_groups, on_step=events.append,
                   started_at=machine())
    meta = json.loads((tmp_path / "rm" / "rmcore.json").read_text())
    assert machine.now - machine.start <= budget
    assert not result.stopped and 1 <= result.steps < meta["plan"]["steps"], "the slow-down cut the planned steps"
    evals = [e for e in events if e["event"] == "eval"]
    assert evals[-1]["step"] == result.steps and "eval_accuracy_se" in evals[-1]
    assert RewardModel.load(tmp_path / "rm", device="cpu").trained


def test_steps_added_at_the_last_step_train_at_a_rate_above_zero(tiny_model_dir, demo_split, tmp_path,
                                                                 simulated_machine, private_cache, monkeypatch):
    """The budget refits the last step after every step. When it moves it later at the planned last step
    (the machine got faster), the first added step must train at the new schedule's rate, not at the old
    schedule's final rate of zero, which would waste it."""
    from rmcore.training.budget import StepBudget

    def grows_at_step_6(self, step, max_steps, *args, **kwargs):
        return 6 if step < 6 else 9

    monkeypatch.setattr(StepBudget, "steps_that_fit", grows_at_step_6)
    machine = simulated_machine(cost=0.0001)
    train_groups, eval_groups = demo_split
    events: list[dict] = []
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=20, batch_size=2, lr=1e-3,
                         warmup_ratio=0.0, time_budget_s=600.0)
    result = train(config, train_groups, tmp_path / "rm", eval_groups=eval_groups, on_step=events.append,
                   started_at=machine())
    rates = [e["lr"] for e in events if e["event"] == "step"]
    assert result.steps == 9 and len(rates) == 9
    assert rates[:6] == pytest.approx([1e-3 * (6 - k) / 6 for k in range(6)])  # the decay planned for 6 steps
    assert rates[6:] == pytest.approx([1e-3 * (9 - k) / 9 for k in range(6, 9)])  # then the one for 9


def test_an_evaluation_that_runs_out_of_time_is_kept_partial_and_the_sample_shrinks(
        tiny_model_dir, demo_path, tmp_path, simulated_machine, private_cache):
    groups = read_preferences(demo_path).groups
    train_groups, eval_groups = groups[:20], groups[20:]  # a large held-out set: its evaluation is the cost
    budget = 200.0
    machine = simulated_machine(cost=0.0004, slow_after=0.0, slowdown=1.0)
    events: list[dict] = []
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=3, batch_size=4, time_budget_s=budget)
    original = machine.work

    def slow_evaluations(tokens, training):  # forwards without gradients, after the probe, run 4x slower
        original(tokens * (4 if not training and machine.forwards > 3 else 1), training)

    machine.work = slow_evaluations
    train(config, train_groups, tmp_path / "rm", eval_groups=eval_groups, on_step=events.append,
          started_at=machine())
    evals = [e for e in events if e["event"] == "eval"]
    first = evals[0]
    assert first["eval_partial"] and 0 < first["eval_prompts_scored"] < first["eval_prompts_planned"]
    assert first["eval_comparisons_left_out"] > 0
    assert any("later evaluations score" in p for p in phases(events))
    assert machine.now - machine.start <= budget


def test_a_budget_that_fits_nothing_useful_says_so_at_once(tiny_model_dir, demo_split, tmp_path, simulated_machine,
                                                           private_cache):
    train_groups, eval_groups = demo_split
    machine = simulated_machine(cost=0.05)  # a step of 8 prompts takes minutes
    config = TrainConfig(model=str(tiny_model_dir), mode="full", time_budget_s=30)
    with pytest.raises(TrainingError, match=r"too few to train on.*all of them need about"):
        train(config, train_groups, tmp_path / "rm", eval_groups=eval_groups, started_at=machine())
    assert machine.forwards <= 3, "refused after the probe, before any training"
    assert not (tmp_path / "rm" / "rmcore.json").exists()


def test_the_command_line_prints_the_plan_first_and_the_phase_times_last(tiny_model_dir, demo_path, tmp_path,
                                                                        private_cache, capsys):
    from rmcore.cli import main

    code = main(["train", str(demo_path), "--out", str(tmp_path / "rm"), "--model", str(tiny_model_dir),
                 "--time-budget", "2m", "--limit", "20"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("[rmcore]")]
    assert any(line.startswith("[rmcore] plan: head mode") for line in lines[:4]), lines
    assert err.strip().splitlines()[-1].startswith("[rmcore] phases: ")
    meta = json.loads((tmp_path / "rm" / "rmcore.json").read_text())
    assert meta["plan"]["budget_s"] == 120 and "loading" in meta["phase_seconds"]


STOP_IN_EVALUATION = textwrap.dedent("""
    import sys, time
    import rmcore.training.held_out as held_out
    from rmcore.data import read_preferences
    from rmcore.training.train import TrainConfig, train

    real = held_out._rewards
    def slow(*args, **kwargs):  # a long evaluation: a batch a second
        print("EVAL BATCH", flush=True)
        time.sleep(1.0)
        return real(*args, **kwargs)
    held_out._rewards = slow
    groups = read_preferences(sys.argv[1]).groups
    result = train(TrainConfig(model=sys.argv[2], mode="full", epochs=2, batch_size=2, lr=1e-3), groups[:8],
                   sys.argv[3], eval_groups=groups[8:40])
    print("STOPPED" if result.stopped else "FINISHED", result.steps, flush=True)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_in_the_middle_of_an_evaluation_ends_it_and_saves(signum, tiny_model_dir, demo_path, tmp_path):
    out = tmp_path / "rm"
    env = {**os.environ, "RMCORE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-c", STOP_IN_EVALUATION, str(demo_path), str(tiny_model_dir), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    batches = 0
    for line in proc.stdout:
        batches += line.startswith("EVAL BATCH")
        if batches == 2:  # two batches into the untrained baseline's evaluation of 16
            proc.send_signal(signum)
            break
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert rest.count("EVAL BATCH") <= 2, "the evaluation ended at the next batch"
    assert "STOPPED" in rest
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(h for h in history if h["event"] == "eval")
    assert first["eval_partial"] and first["eval_prompts_scored"] < first["eval_prompts_planned"]
    assert (out / "checkpoint" / "state.json").is_file() and json.loads((out / "rmcore.json").read_text())["stopped"]


# ----------------------------------------------------------------------------- precision, decided per chip

WITH_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n"
WITHOUT_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


def test_cpu_bfloat16_is_decided_from_the_chips_instructions():
    from rmcore.model.device import cpu_has_fast_bf16

    assert cpu_has_fast_bf16(WITH_BF16) and not cpu_has_fast_bf16(WITHOUT_BF16)
    assert not cpu_has_fast_bf16("")  # no flags line (not Linux): float32


@pytest.mark.parametrize(("flags", "mode", "precision", "expected"), [
    (WITH_BF16, "full", "auto", "bf16"), (WITHOUT_BF16, "full", "auto", "no"), (WITH_BF16, "lora", "auto", "bf16"),
    (WITH_BF16, "head", "auto", "no"),  # head mode: the features scoring computes and reuses (float32)
    (WITH_BF16, "full", "float32", "no"), (WITHOUT_BF16, "full", "bfloat16", "bf16"),
    (WITH_BF16, "head", "bfloat16", "bf16"),
])
def test_training_precision_per_chip_and_forced(flags, mode, precision, expected, monkeypatch):
    import rmcore.model.device as device

    real = device.cpu_has_fast_bf16
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda cpuinfo=None: real(flags))
    assert TrainConfig(mode=mode, precision=precision).mixed_precision("cpu") == expected


def test_precision_float32_trains_in_float32_and_the_model_says_so(tiny_model_dir, demo_split, tmp_path,
                                                                   private_cache, monkeypatch):
    import rmcore.model.device as device

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda cpuinfo=None: True)
    train_groups, _ = demo_split
    for precision, expected in (("float32", "no"), ("auto", "bf16")):
        out = tmp_path / precision
        train(TrainConfig(model=str(tiny_model_dir), mode="full", epochs=1, batch_size=8, precision=precision),
              train_groups[:16], out)
        meta = json.loads((out / "rmcore.json").read_text())
        assert meta["precision"] == expected and meta["config"]["precision"] == precision
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16"):
        TrainConfig(precision="fp8").check()



# ----------------------------------------------------------------------------- long dialogues cut to their last turns

def dialogues(count: int = 30) -> list:
    """Groups whose prompts are five messages, most of their tokens in the first four (as in HH-RLHF)."""
    from rmcore.data import RankedGroup

    story = "the weather in the mountains was cold and the road was long and wet " * 6
    groups = []
    for i in range(count):
        prompt = [{"role": "user", "content": f"{i} {story}"}, {"role": "assistant", "content": story},
                  {"role": "user", "content": f"tell me more about {i}"}, {"role": "assistant", "content": story},
                  {"role": "user", "content": f"so is {i} odd?"}]
        groups.append(RankedGroup(prompt, ["yes it is" if i % 2 else "no", "I like bread"], [1, 2]))
    return groups


def cut(groups, n) -> list:
    from dataclasses import replace

    from rmcore.data.encoding import last_turns

    return [replace(g, prompt=last_turns(g.prompt, n)) for g in groups]


def cached_keys(model_dir) -> set[int]:
    from rmcore.model.feature_cache import FeatureCache

    return FeatureCache.for_model(str(model_dir), "no").cached_keys()


def keys_of(groups, model_dir) -> set[int]:
    from rmcore.data.encoding import encode_groups
    from rmcore.model.feature_cache import group_key

    return {group_key(g) for g in encode_groups(load_tokenizer(str(model_dir)), groups, 2048)}


def run_dialogues(model_dir, out, machine, budget: float, **options) -> tuple[dict, str]:
    """Head mode on `dialogues()` under `budget`: the saved rmcore.json and the plan line."""
    groups = dialogues()
    events: list[dict] = []
    config = TrainConfig(model=str(model_dir), mode="head", max_length=2048, time_budget_s=budget, **options)
    train(config, groups[:24], out, eval_groups=groups[24:], on_step=events.append, started_at=machine())
    assert machine.now - machine.start <= budget
    return json.loads((out / "rmcore.json").read_text()), next(p for p in phases(events) if p.startswith("plan:"))


def test_last_turns_keeps_the_end_of_the_dialogue_from_a_user_message():
    from rmcore.data.encoding import last_turns

    talk = [{"role": "system", "content": "be kind"}] + [
        {"role": "user" if i % 2 == 0 else "assistant", "content": str(i)} for i in range(5)]
    assert [m["content"] for m in last_turns(talk, 3)] == ["be kind", "2", "3", "4"]
    assert [m["content"] for m in last_turns(talk, 1)] == ["be kind", "4"]
    assert [m["content"] for m in last_turns(talk, 2)] == ["be kind", "4"], "never starts with the assistant"
    assert last_turns(talk, 5) is talk and last_turns(talk, None) is talk, "nothing cut: the same list"
    assert [m["content"] for m in last_turns(talk[1:], 4)] == ["2", "3", "4"]


def test_a_budget_too_short_for_whole_dialogues_trains_on_their_last_turns(tiny_model_dir, tmp_path,
                                                                            simulated_machine, private_cache):
    groups = dialogues()
    whole, last3 = tokens_of(groups, tiny_model_dir, 2048), tokens_of(cut(groups, 3), tiny_model_dir, 2048)
    assert whole > 1.8 * last3, (whole, last3)
    budget = 60.0
    machine = simulated_machine(cost=0.6 * budget / last3)  # the last 3 turns fit, the whole dialogues do not
    meta, plan_line = run_dialogues(tiny_model_dir, tmp_path / "rm", machine, budget)
    assert "dialogues cut to their last 3 turns (" in plan_line and "% of the tokens)" in plan_line, plan_line
    assert meta["max_turns"] == 3 and meta["plan"]["max_turns"] == 3 and meta["config"]["max_turns"] == "auto"
    assert meta["data"]["train_prompts"] == 24, "every comparison fits once cut (and 3 turns fit: not 1)"
    keys = cached_keys(tiny_model_dir)
    assert keys_of(cut(groups[:24], 3), tiny_model_dir) <= keys, "trained on the features of the cut prompts"
    assert not keys_of(groups, tiny_model_dir) & keys, "the whole dialogues were never run"


def test_dialogues_that_fit_whole_are_not_cut(tiny_model_dir, tmp_path, simulated_machine, private_cache,
                                              monkeypatch):
    import rmcore.data.encoding as encoding

    budget = 60.0
    machine = simulated_machine(cost=0.2 * budget / tokens_of(dialogues(), tiny_model_dir, 2048))
    encoded: list = []
    real = encoding.encode_group
    monkeypatch.setattr(encoding, "encode_group", lambda *args: encoded.append(1) or real(*args))
    meta, plan_line = run_dialogues(tiny_model_dir, tmp_path / "rm", machine, budget)
    assert "dialogues cut" not in plan_line and meta["max_turns"] == "all" and meta["plan"]["max_turns"] == "all"
    assert len(encoded) == 30, "each dialogue tokenized once: no cut was even tried"
    assert keys_of(dialogues()[:24], tiny_model_dir) <= cached_keys(tiny_model_dir)


def test_max_turns_all_never_cuts_even_when_a_cut_would_fit_more(tiny_model_dir, tmp_path, simulated_machine,
                                                                 private_cache):
    budget = 60.0
    machine = simulated_machine(cost=0.6 * budget / tokens_of(cut(dialogues(), 3), tiny_model_dir, 2048))
    meta, plan_line = run_dialogues(tiny_model_dir, tmp_path / "rm", machine, budget, max_turns="all")
    assert "dialogues cut" not in plan_line and meta["max_turns"] == "all"
    assert 0 < meta["data"]["train_prompts"] < 24, "the whole dialogues: fewer of them fit"
    assert not keys_of(cut(dialogues(), 3), tiny_model_dir) & cached_keys(tiny_model_dir)


def test_max_turns_on_the_command_line():
    from rmcore.cli.parser import build_parser

    def parsed(*extra):
        return build_parser().parse_args(["train", "d.jsonl", "--out", "m", *extra]).max_turns

    assert (parsed(), parsed("--max-turns", "all"), parsed("--max-turns", "3")) == ("auto", "all", 3)
    with pytest.raises(SystemExit):
        parsed("--max-turns", "0")
    assert TrainConfig(max_turns="auto").turns_to_try() == (None,), "without a budget, auto never cuts"
    assert TrainConfig(max_turns="auto", time_budget_s=60).turns_to_try() == (None, 3, 1)
    with pytest.raises(ValueError, match="max_turns"):
        TrainConfig(max_turns=0).check()
