"""The `rmcore` command line as a user runs it: real files, broken files, JSON contracts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def rmcore(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "rmcore", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_validate_real_files_as_json(shared_data):
    for path, fmt in [(shared_data / "oasst" / "en_100_tree.jsonl", "oasst"),
                      (shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "implicit_pairs")]:
        proc = rmcore("validate", path, "--json", "--no-tokenize")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["format"] == fmt
        assert {"format", "prompts", "comparisons", "k_max", "skipped", "ties", "unranked"} <= set(report)
        assert report["comparisons"] > 200


def test_validate_counts_truncation_with_the_model_tokenizer(demo_path, tiny_model_dir):
    proc = rmcore("validate", demo_path, "--model", tiny_model_dir, "--max-length", "48")
    assert proc.returncode == 0, proc.stderr
    assert "truncated:" in proc.stdout
    report = json.loads(rmcore("validate", demo_path, "--model", tiny_model_dir, "--max-length", "48",
                               "--json").stdout)
    assert report["truncated_prompts"] > 0 and report["truncated_responses"] > 0


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "x.jsonl: the file is empty"), (b"{not json}\n", "x.jsonl:1: not valid JSON"),
     (b'{"a": 1}\n', "x.jsonl:1: cannot tell the format")],
)
def test_broken_file_exits_2_with_one_line(tmp_path, content, expected):
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    proc = rmcore("validate", path, "--no-tokenize")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(path)) and expected.split(": ", 1)[1] in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_file_and_missing_model_exit_2(tmp_path, demo_path):
    proc = rmcore("validate", tmp_path / "nope.jsonl")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = rmcore("score", "--model", tmp_path / "nomodel", "--prompt", "q", "--response", "a")
    assert proc.returncode == 2 and "no such model folder" in proc.stderr and "Traceback" not in proc.stderr


def test_train_score_eval_round_trip(tiny_model_dir, demo_path, tmp_path):
    out = tmp_path / "rm"
    proc = rmcore("train", demo_path, "--out", out, "--model", tiny_model_dir, "--mode", "full", "--epochs", "1",
                  "--lr", "2e-3", "--quiet", env={"RMCORE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "held-out accuracy" in proc.stderr
    proc = rmcore("score", "--model", out, "--prompt", "Name a fruit", "--response", "Apple", "--response", "Car",
                  "--response", "Pear", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) >= {"rewards", "probabilities", "best"}
    assert len(result["probabilities"]) == 3 and all(len(row) == 3 for row in result["probabilities"])
    assert result["best"] == max(range(3), key=lambda i: result["rewards"][i])
    proc = rmcore("eval", demo_path, "--model", out, "--json", "--limit", "20")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert {"accuracy", "comparisons", "prompts", "by_rank_gap", "calibration", "length_correlation"} <= set(metrics)
    assert metrics["prompts"] == 20 and 0 <= metrics["accuracy"] <= 1
    proc = rmcore("eval", demo_path, "--model", out, "--limit", "5")
    assert proc.returncode == 0 and "accuracy:" in proc.stdout
    proc = rmcore("score", "--model", out, "--prompt", "Name a fruit", "--response", "Apple", "--response", "Car",
                  "--response", "Pear", "--json", "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    half = json.loads(proc.stdout)["rewards"]
    assert half == pytest.approx(result["rewards"], abs=0.1 * max(map(abs, result["rewards"])))


def test_score_with_a_base_model_says_the_head_is_untrained(tiny_model_dir):
    proc = rmcore("score", "--model", tiny_model_dir, "--prompt", "q", "--response", "a", "--response", "b")
    assert proc.returncode == 0, proc.stderr
    assert "untrained" in proc.stdout and "P[i][j]" in proc.stdout


def test_version():
    from rmcore import __version__

    proc = rmcore("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"rmcore {__version__}"


def test_bad_option_values_exit_2(demo_path, tmp_path):
    proc = rmcore("train", demo_path, "--out", tmp_path / "x", "--epochs", "0")
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr
    proc = rmcore("score", "--prompt", "q", "--response", "a", "--dtype", "float16")
    assert proc.returncode == 2 and "--dtype" in proc.stderr and "bfloat16" in proc.stderr


def test_score_a_file_gives_the_same_rewards_as_one_prompt_at_a_time(tiny_model_dir, tmp_path, demo_path):
    data = tmp_path / "samples.jsonl"
    rows = [{"prompt": "Name a fruit", "responses": ["Apple", "Car", "Pear"]},
            {"prompt": [{"role": "user", "content": "Say hi"}], "responses": ["Hello there, friend."]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "scored.jsonl"
    proc = rmcore("score", "--model", tiny_model_dir, "--data", data, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "scored 4 responses of 2 prompts" in proc.stderr and not (tmp_path / "scored.jsonl.partial").exists()
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["responses"] for line in lines] == [r["responses"] for r in rows]
    assert [line["source"] for line in lines] == [f"{data}:1", f"{data}:2"] and "ranks" not in lines[0]
    single = json.loads(rmcore("score", "--model", tiny_model_dir, "--prompt", "Name a fruit", "--response", "Apple",
                               "--response", "Car", "--response", "Pear", "--json").stdout)
    assert lines[0]["rewards"] == pytest.approx(single["rewards"], abs=1e-4)
    assert lines[0]["best"] == single["best"]
    ranked = rmcore("score", "--model", tiny_model_dir, "--data", demo_path, "--limit", "3")
    assert ranked.returncode == 0, ranked.stderr
    records = [json.loads(line) for line in ranked.stdout.splitlines()]
    assert len(records) == 3 and all(len(r["ranks"]) == len(r["rewards"]) == len(r["responses"]) for r in records)


def test_score_file_misuse_exits_2_and_keeps_the_input(tiny_model_dir, tmp_path):
    data = tmp_path / "samples.jsonl"
    data.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"]}) + "\n", encoding="utf-8")
    before = data.read_bytes()
    for args, message in [(["--data", data, "--prompt", "q"], "not both"), ([], "give --prompt"),
                          (["--data", data, "--out", data], "is the input file"),
                          (["--data", data, "--out", tmp_path / "nope" / "x.jsonl"], "no such folder"),
                          (["--prompt", "q", "--response", "a", "--out", tmp_path / "x.jsonl"],
                           "--out goes with --data")]:
        proc = rmcore("score", "--model", tiny_model_dir, *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert data.read_bytes() == before
