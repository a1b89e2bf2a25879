"""Evaluation beyond accuracy: the length-only baseline, length-controlled accuracy, ranking metrics,
per-category accuracy, and comparing two models with a paired bootstrap interval."""

from __future__ import annotations

import json
import random

import pytest

from rmcore.analysis.evaluate import (
    binomial_se,
    compare,
    kendall_tau,
    length_logistic_accuracy,
    paired_bootstrap,
    result_from_rewards,
)
from rmcore.data import RankedGroup


def group(responses, ranks, source="f.jsonl:1"):
    return RankedGroup([{"role": "user", "content": "q"}], list(responses), list(ranks), source=source)


def length_groups(n=20):
    """Pairs where people always prefer the longer answer, but the lengths are close in every other one."""
    out = []
    for i in range(n):
        short = "x" * 50
        long = "x" * (53 if i % 2 else 200)  # 53 is within 10% of 50+3; 200 is not
        out.append(group([long, short], [1, 2], source=f"f.jsonl:{i + 1}"))
    return out


def test_a_reward_that_is_the_length_is_flagged_and_the_baseline_matches_it():
    groups = length_groups()
    rewards = [[len(g.responses[0]) / 100, len(g.responses[1]) / 100] for g in groups]
    s = result_from_rewards(groups, rewards).summary
    assert s["accuracy"] == 1.0 and s["length_baseline"]["accuracy"] == 1.0
    assert s["length_agreement"] == 1.0
    assert s["length_controlled"]["comparisons"] == 10  # only the 53-vs-50 pairs
    assert s["length_warning"] and "mostly tracks length" in s["length_warning"]
    assert "not significantly better than the 1.000" in s["length_warning"]


def test_a_reward_against_length_is_not_flagged_and_the_standard_error_is_binomial():
    groups = length_groups()
    rewards = [[0.0, 1.0] if i % 3 else [1.0, 0.0] for i in range(len(groups))]  # mostly the shorter
    s = result_from_rewards(groups, rewards).summary
    assert "mostly tracks length" not in s["length_warning"]
    assert "significantly worse than the 1.000" in s["length_warning"]  # below the baseline is worth saying too
    assert s["accuracy"] == pytest.approx(7 / 20)
    assert s["accuracy_se"] == pytest.approx(binomial_se(7 / 20, 20)) == pytest.approx((0.35 * 0.65 / 20) ** 0.5)


def test_a_model_that_beats_length_gets_no_warning():
    texts = (["short", "a much longer answer"], ["a much longer answer", "short"])
    groups = [group(texts[i % 2], [1, 2], source=f"f:{i}") for i in range(20)]
    s = result_from_rewards(groups, [[1.0, 0.0]] * 20).summary
    assert s["length_baseline"]["accuracy"] == 0.5 and s["accuracy"] == 1.0
    assert s["length_warning"] is None


def test_equal_lengths_count_half_for_the_length_baseline():
    groups = [group(["abc", "xyz"], [1, 2]), group(["abcd", "xy"], [1, 2])]
    s = result_from_rewards(groups, [[1.0, 0.0], [1.0, 0.0]]).summary
    assert s["length_baseline"]["accuracy"] == pytest.approx(0.75)


def test_the_logistic_length_model_learns_that_shorter_wins():
    groups = [group(["ok" * (i % 5 + 1), "ok" * (i % 5 + 30)], [1, 2], source=f"f:{i}") for i in range(30)]
    s = result_from_rewards(groups, [[0.0, 1.0]] * 30).summary
    assert s["length_baseline"]["accuracy"] == 0.0  # "the longer answer wins" is always wrong here
    assert length_logistic_accuracy(result_from_rewards(groups, [[0.0, 1.0]] * 30).pairs)["accuracy"] == 1.0


def test_kendall_tau_per_prompt_and_best_of_k():
    assert kendall_tau([1, 2, 3], [3.0, 2.0, 1.0]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [1.0, 2.0, 3.0]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3, 4], [4.0, 3.0, 1.0, 2.0]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 1, 2], [2.0, 1.0, 0.0]) == pytest.approx(2 / (3 * 2) ** 0.5)  # tau-b with a tie
    assert kendall_tau([1, 1], [1.0, 2.0]) is None
    groups = [group(["a", "b", "c"], [1, 2, 3]), group(["a", "b", "c"], [1, 2, 3]), group(["a", "b"], [1, 2])]
    rewards = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 0.0]]
    ranking = result_from_rewards(groups, rewards).summary["ranking"]
    assert ranking["prompts"] == 2  # the K = 2 prompt has no ranking beyond its pair
    assert ranking["kendall_tau"] == pytest.approx(0.0)
    assert ranking["best_of_k_accuracy"] == pytest.approx(0.5)


def test_accuracy_per_category_read_from_the_file(tmp_path):
    from rmcore.analysis.evaluate import categories_for
    from rmcore.data import read_preferences

    rows = [{"prompt": "q1", "chosen": "good", "rejected": "bad one", "subset": "chat"},
            {"prompt": "q2", "chosen": "right", "rejected": "wrong", "subset": "math"},
            {"prompt": "q3", "chosen": "yes", "rejected": "no", "subset": "math"}]
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    groups = read_preferences(path).groups
    categories = categories_for(path, groups)
    assert categories == ["chat", "math", "math"]
    s = result_from_rewards(groups, [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], categories=categories).summary
    assert s["by_category"]["chat"]["accuracy"] == 1.0
    assert s["by_category"]["math"]["accuracy"] == 0.5 and s["by_category"]["math"]["comparisons"] == 2
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    assert categories_for(plain, read_preferences(plain).groups) is None


def test_the_paired_bootstrap_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Simulate many data sets with a known difference of accuracies (0.72 - 0.62 = 0.10): prompts
    with 3 pairs each, and per-prompt difficulty shared by both models (so pairs and models are
    correlated, as in real data); the 95% interval should hold 0.10 in about 95% of them."""
    rng = random.Random(1)
    true_a, true_b, covered, trials = 0.62, 0.72, 0, 200
    for trial in range(trials):
        correct_a, correct_b, clusters = [], [], []
        for prompt in range(80):
            shift = rng.choice([-0.15, 0.0, 0.15])  # some prompts are easier for both models
            for _ in range(3):
                u = rng.random()  # one draw for both models: they tend to be right on the same pairs
                correct_a.append(float(u < true_a + shift))
                correct_b.append(float(u < true_b + shift))
                clusters.append(prompt)
        interval = paired_bootstrap(correct_a, correct_b, clusters, resamples=500, seed=trial)
        covered += interval["low"] <= true_b - true_a <= interval["high"]
    assert 0.88 <= covered / trials <= 0.995, covered / trials


def test_compare_reports_agreement_and_the_pairs_they_disagree_on_most():
    groups = [group(["a", "b"], [1, 2], source=f"f:{i}") for i in range(6)]
    a = result_from_rewards(groups, [[1.0, 0.0]] * 6, name="A")
    b = result_from_rewards(groups, [[1.0, 0.0]] * 4 + [[0.0, 0.2], [0.0, 3.0]], name="B")
    c = compare(a, b, resamples=200)
    assert (c["accuracy_a"], c["accuracy_b"]) == (1.0, pytest.approx(4 / 6))
    assert c["difference"] == pytest.approx(-2 / 6)
    assert c["difference_low"] <= c["difference"] <= c["difference_high"] <= 0
    assert c["agreement"] == pytest.approx(4 / 6) and c["disagreements"] == 2
    assert c["top_disagreements"][0]["source"] == "f:5"  # the larger gap in P(winner) first
    other = result_from_rewards(groups[:5], [[1.0, 0.0]] * 5)
    with pytest.raises(ValueError, match="same pairs"):
        compare(a, other)


def test_cli_eval_compares_two_models_and_prints_the_length_baseline(tiny_model_dir, tmp_path):
    from rmcore.cli import main

    rows = [{"prompt": f"q{i}", "chosen": "a fine answer " * (i % 3 + 1), "rejected": "no", "category": "c"}
            for i in range(6)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", str(path), "--model", str(tiny_model_dir), "--model", str(tiny_model_dir),
                     "--json"]) == 0
    report = json.loads(out.getvalue())
    assert len(report["models"]) == 2
    assert report["models"][0]["length_baseline"]["accuracy"] == 1.0
    assert report["models"][0]["by_category"]["c"]["comparisons"] == 6
    comparison = report["comparisons"][0]
    assert comparison["difference"] == 0 and comparison["agreement"] == 1.0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", str(path), "--model", str(tiny_model_dir)]) == 0
    assert '"the longer answer wins": 1.000' in out.getvalue()
