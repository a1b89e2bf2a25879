"""The benchmark still runs end to end: a tiny model, one step per workload, every part (seconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402
import run as bench  # noqa: E402  (bench/ holds scripts, not a package)
import trials  # noqa: E402


def test_smoke_benchmark_runs_every_part_and_writes_comparable_results(shared_data, tmp_path, capsys):
    has_trl = importlib.util.find_spec("trl") is not None
    code = bench.main(["--model", "tiny", "--preset", "smoke", "--in-process", "--score-repeats", "1",
                       "--head-epochs", "2", "--out", str(tmp_path)])
    assert code == 0
    [result_file] = tmp_path.glob("*.json")
    summary = json.loads(result_file.read_text())
    assert (tmp_path / result_file.name.replace(".json", ".md")).is_file()
    assert [block["workload"] for block in summary["training"]] == ["oasst", "hh"]
    for block in summary["training"]:
        impls = block["implementations"]
        assert set(impls) == ({"rmcore", "trl"} if has_trl else {"rmcore"})
        for row in impls.values():
            assert row["comparisons_per_s"] > 0 and row["tokens_per_s"] > 0 and row["peak_memory_bytes"] > 0
            assert 0 <= row["eval_accuracy"] <= 1 and row["flop_utilisation"] > 0
        if has_trl:
            # the same comparisons, in the same number of optimizer steps
            assert impls["rmcore"]["comparisons"] == impls["trl"]["comparisons"]
            assert impls["rmcore"]["steps"] == impls["trl"]["steps"]
            assert block["ratios"]["rmcore/trl comparisons_per_s"] > 0
    scoring = summary["scoring"]
    assert scoring["max_abs_reward_difference"] < 1e-4  # rmcore and the pipeline read the same reward
    assert set(scoring["latency_s"]) == {"rmcore", "rmcore_same_prompt", "pipeline", "pipeline_batched",
                                         "rmcore_bf16", "pipeline_bf16", "pipeline_bf16_batched"}
    bf16 = scoring["bf16_reward_error"]
    assert 0 < bf16["max_abs"] < 10 * bf16["reward_std"] and bf16["pairs"] > 0  # rounded, not broken
    assert scoring["prompt_cache_hit_tokens"] > 0  # the seen instruction came from rmcore's prompt cache
    for block in summary["training"]:
        assert 0 <= block["untrained"]["eval_accuracy"] <= 1 and block["untrained"]["eval_comparisons"] > 0
    assert len(summary["head"]["epoch_s"]) == 2
    assert "| target | value | wanted | met |" in capsys.readouterr().out


def test_oasst_groups_become_all_their_pairs_for_trl(shared_data):
    train, held_out = trials.load_workload("oasst", 6, 3)
    assert len(train) == 6 and len(held_out) == 3
    assert not {id(g) for g in train} & {id(g) for g in held_out}
    assert all(len(g.pairs()) == len(g.responses) * (len(g.responses) - 1) // 2 for g in train
               if len(set(g.ranks)) == len(g.ranks))


def test_trl_gets_exactly_rmcores_number_of_optimizer_steps():
    import math

    for pairs, steps in [(197, 12), (128, 16), (29, 3), (24, 3), (7, 1)]:
        micro, accumulate = trials.trl_batching(pairs, steps, 4)
        assert 1 <= micro <= 4
        assert math.ceil(math.ceil(pairs / micro) / accumulate) == steps
    assert trials.trl_batching(128, 16, 4) == (4, 2)  # the largest forward that fits is preferred


def test_trl_can_read_the_pairs_in_rmcores_batch_order_over_several_seeds(shared_data, tmp_path):
    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed (bench/requirements.txt)")
    # 3 steps at a high learning rate, so that a different order would give a different model (by ~2e-2)
    code = bench.main(["--model", "tiny", "--preset", "smoke", "--in-process", "--workloads", "hh", "--trl-order",
                       "rmcore", "--seed", "0,1", "--steps", "3", "--batch-size", "2", "--eval-groups", "8",
                       "--lr", "1e-3", "--skip", "scoring,head", "--out", str(tmp_path)])
    assert code == 0
    [result_file] = tmp_path.glob("*.json")
    block = json.loads(result_file.read_text())["training"][0]
    impls = block["implementations"]
    assert impls["trl"]["order"] == "rmcore" and impls["trl"]["steps"] == impls["rmcore"]["steps"]
    for row in [*impls.values(), block["untrained"]]:
        assert list(row["accuracy_by_seed"]) == ["0", "1"]
        assert row["eval_accuracy"] == pytest.approx(sum(row["accuracy_by_seed"].values()) / 2)
    assert block["accuracy_difference"]["seeds"] == 2
    # the same batches in the same order: TRL's RewardTrainer and rmcore train the same model
    same = block["same_order"]
    assert same["pairs"] == 8 and same["max_abs_margin_difference"] < 1e-3


def test_seed_lists_are_checked():
    assert bench._seeds("0,1,2") == [0, 1, 2]
    for bad in ("", "0,0", "a"):
        with pytest.raises(Exception, match="integers"):
            bench._seeds(bad)


def test_a_trial_spec_travels_to_the_worker_as_json():
    spec = trials.TrialSpec(kind="trl", model_path="/m", workload="hh", batch_size=2, n_train=4, n_eval=2,
                            seed=3, trl_order="rmcore", label="trl, seed 3")
    again = trials.TrialSpec.from_json(spec.to_json())
    assert again == spec and again.same_order and again.name == "trl, seed 3"
    assert trials.TrialSpec(kind="head", model_path="/m").name == "head"
    with pytest.raises(TypeError):
        trials.TrialSpec.from_json(json.dumps({"kind": "rmcore", "model_path": "/m", "stesp": 3}))  # a typo fails


@pytest.mark.slow  # a fresh Python process that imports torch and transformers
def test_a_trial_runs_in_a_worker_process_of_its_own(shared_data, tmp_path):
    model = trials.resolve_model("tiny", tmp_path)
    spec = trials.TrialSpec(kind="untrained", model_path=model, max_length=64, workload="hh", n_train=2, n_eval=3)
    result = bench.run_trial(spec, in_process=False)
    assert 0 <= result["eval_accuracy"] <= 1 and result["eval_comparisons"] == 3
    assert result["rmcore_file"].endswith("__init__.py")


def test_the_report_pairs_ratios_by_repeat_and_checks_the_targets():
    def trial(comparisons_per_s: float, seed: int = 0) -> dict:
        return {"comparisons": 10, "time_s": 10 / comparisons_per_s, "real_tokens": 100, "padded_tokens": 120,
                "params": 1000, "matmul_flops": 1e9, "peak_memory_bytes": 2**30, "steps": 2,
                "eval_accuracy": 0.5, "seed": seed}

    block = report.summarize_training("oasst", {"rmcore": [trial(4.0), trial(9.0)], "trl": [trial(1.0), trial(3.0)]})
    assert block["ratios"]["rmcore/trl comparisons_per_s"] == pytest.approx(3.5)  # median of 4 and 3, paired
    assert block["implementations"]["rmcore"]["comparisons_per_s"] == pytest.approx(6.5)
    assert block["ratios"]["trl/rmcore padded tokens"] == pytest.approx(1.0)
    checks = report.check_targets({"training": [block]})
    assert checks["oasst: comparisons/s vs TRL"]["met"] and checks["oasst: held-out accuracy vs TRL"]["met"]
    assert not checks["oasst: FLOP utilisation"]["met"]
    assert "| target | value | wanted | met |" in "\n".join(report._target_table(checks, "embedded"))


def test_the_benchmark_uses_only_rmcores_public_names():
    import ast

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    for name in ("run.py", "trials.py", "report.py"):
        for node in ast.walk(ast.parse((bench_dir / name).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rmcore"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"bench/{name} imports {private} from {node.module}"


@pytest.mark.slow  # two fresh Python processes, each training a tiny model for a few seconds
def test_the_throughput_bench_trains_each_setting_in_its_own_process_and_gives_ratios(tiny_model_dir, demo_path,
                                                                                      tmp_path, capsys):
    import throughput

    code = throughput.main(["--model", str(tiny_model_dir), "--data", str(demo_path), "--budget", "20s",
                            "--rounds", "1", "--settings", "filed,default", "--results", str(tmp_path),
                            "--filed-at", "HEAD"])
    assert code == 0
    record = json.loads(next(tmp_path.glob("*_throughput.json")).read_text())
    runs = {run["setting"]: run for run in record["runs"]}
    assert set(runs) == {"filed", "default"} and not any("failed" in run for run in runs.values())
    assert runs["filed"]["trained_at"] == "no" and runs["filed"]["max_turns_used"] == "all"
    assert all(run["comparisons"] > 0 and 0 < run["wall_s"] <= 20 * 1.1 + 15 for run in runs.values())
    assert record["summary"]["filed"]["ratio_to_filed"] == 1.0 and set(record["summary"]) == {"filed", "default"}
    assert "| default |" in capsys.readouterr().out
    root = Path(__file__).resolve().parents[1]
    assert Path(runs["default"]["rmcore_file"]).is_relative_to(root)
    assert not Path(runs["filed"]["rmcore_file"]).is_relative_to(root), "filed ran the worktree's rmcore"
    assert record["header"]["filed_at"] == "HEAD"
