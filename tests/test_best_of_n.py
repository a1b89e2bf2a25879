"""The best-of-n curve: the exact order-statistics estimator, its KL, and `rmcore bon`."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from rmcore.cli import main
from rmcore.policy.best_of_n import (
    best_of_n_expectation,
    bon_curve,
    bon_figure,
    brute_force_best_of_n,
    kl_best_of_n,
    order_statistic_weights,
    powers_of_two,
    win_rate_bound,
)


@pytest.mark.parametrize("total", [1, 2, 5, 32])
def test_weights_are_a_distribution_over_the_ranks(total):
    for n in range(1, total + 1):
        weights = order_statistic_weights(total, n)
        assert weights.sum() == pytest.approx(1.0)
        assert (weights >= 0).all()
        assert weights[: n - 1].sum() == 0  # the max of n draws is at least the n-th smallest


def test_exact_for_one_and_for_all_samples():
    rewards = np.random.default_rng(0).normal(size=17)
    assert best_of_n_expectation(rewards, 1) == pytest.approx(rewards.mean())
    assert best_of_n_expectation(rewards, 17) == pytest.approx(rewards.max())


@pytest.mark.parametrize("n", [2, 3, 8])
def test_equals_brute_force_resampling_within_its_standard_error(n):
    rng = np.random.default_rng(n)
    proxy = rng.normal(size=20)
    gold = proxy + rng.normal(scale=2.0, size=20)  # an imperfect judge: the pick is judged by another measure
    for values in (None, gold):
        exact = best_of_n_expectation(proxy, n, values)
        mean, se = brute_force_best_of_n(proxy, n, 4000, rng, values)
        assert abs(exact - mean) < 4 * se, (exact, mean, se)


def test_brute_force_check_can_fail():
    """The comparison above has teeth: a wrong estimator (the plain mean) is many standard errors off."""
    rng = np.random.default_rng(1)
    proxy = rng.normal(size=20)
    mean, se = brute_force_best_of_n(proxy, 8, 4000, rng)
    assert abs(proxy.mean() - mean) > 10 * se


def test_kl_and_win_rate_formulas():
    assert kl_best_of_n(1) == 0.0
    assert kl_best_of_n(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_best_of_n(np.array([4, 32])) == pytest.approx([math.log(4) - 0.75, math.log(32) - 31 / 32])
    assert win_rate_bound(1) == 0.5 and win_rate_bound(3) == 0.75
    # KL of best-of-n from the exact distribution on N equally likely distinct outcomes tends to the formula
    total, n = 4000, 8
    p_pick = order_statistic_weights(total, n)
    p_pick = p_pick[p_pick > 0]
    kl = float((p_pick * np.log(p_pick * total)).sum())
    assert kl == pytest.approx(kl_best_of_n(n), abs=0.01)


def test_powers_of_two():
    assert powers_of_two(32) == [1, 2, 4, 8, 16, 32]
    assert powers_of_two(12) == [1, 2, 4, 8, 12]
    assert powers_of_two(1) == [1]


def test_curve_averages_prompts_and_uses_proxy_order_for_gold_and_length():
    proxy = [[0.0, 1.0, 2.0], [3.0, 1.0, 2.0]]
    gold = [[5.0, 4.0, 3.0], [0.0, 0.0, 9.0]]  # gold disagrees: the proxy's best is gold's worst in prompt 1
    lengths = [[10, 20, 30], [1, 2, 3]]
    curve = bon_curve(proxy, lengths, gold, ns=[1, 3])
    assert curve.proxy_mean == pytest.approx([(1.0 + 2.0) / 2, (2.0 + 3.0) / 2])
    assert curve.gold_mean == pytest.approx([(4.0 + 3.0) / 2, (3.0 + 0.0) / 2])
    assert curve.length_mean == pytest.approx([(20 + 2) / 2, (30 + 1) / 2])
    assert curve.kl == pytest.approx([0.0, math.log(3) - 2 / 3])
    figure = bon_figure(curve)
    assert len(figure.data) == 5  # proxy and gold against n and against KL, and the length


def test_curve_recomputes_in_under_a_second():
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=(64, 64)).tolist()
    started = time.perf_counter()
    bon_curve(proxy, rng.integers(1, 96, size=(64, 64)).tolist(), proxy)
    assert time.perf_counter() - started < 1.0


@pytest.fixture(scope="module")
def tiny_reward_models(tmp_path_factory):
    from rmcore.model.tiny import build_tiny_reward_model

    root = tmp_path_factory.mktemp("rms")
    return build_tiny_reward_model(root / "rm", seed=1), build_tiny_reward_model(root / "gold", seed=2)


def samples_file(tmp_path, n=8):
    path = tmp_path / "samples.jsonl"
    rows = [{"prompt": f"question {i}", "responses": [f"answer {j} " * (j + 1) for j in range(n)]} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bon_cli_prints_the_curve_as_json_and_writes_the_plot(tmp_path, tiny_reward_models, capsys):
    rm, gold = tiny_reward_models
    plot = tmp_path / "bon.html"
    code = main(["bon", str(samples_file(tmp_path)), "--model", str(rm), "--gold", str(gold), "--json",
                 "--plot", str(plot)])
    out, err = capsys.readouterr()
    assert code == 0, err
    curve = json.loads(out)
    assert [row["n"] for row in curve["rows"]] == [1, 2, 4, 8]
    assert curve["proxy_mean"] == sorted(curve["proxy_mean"])  # the proxy curve rises by construction
    assert curve["gold_mean"] is not None and curve["curve_s"] < 1.0
    assert "<html>" in plot.read_text() and "plotly" in plot.read_text()
    # the plot is never written over
    assert main(["bon", str(samples_file(tmp_path)), "--model", str(rm), "--plot", str(plot)]) == 2
    assert "exists" in capsys.readouterr().err


def test_bon_cli_refuses_a_model_that_is_not_a_reward_model(tmp_path, tiny_model_dir, capsys):
    code = main(["bon", str(samples_file(tmp_path)), "--model", str(tiny_model_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a reward model folder" in err[0]


def test_head_models_of_one_base_share_one_trunk_pass(tmp_path, tiny_model_dir, demo_path, private_cache,
                                                      tiny_reward_models):
    from rmcore.data import read_preferences
    from rmcore.model.reward_model import RewardModel
    from rmcore.policy.best_of_n import score_proxy_and_gold, score_samples
    from rmcore.training.train import TrainConfig, train

    groups = read_preferences(demo_path).groups[:16]
    folders = []
    for seed, lr in ((0, 5e-2), (1, 1e-1)):
        config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=2, lr=lr, seed=seed, max_length=128)
        train(config, groups, tmp_path / f"head{seed}")
        folders.append(tmp_path / f"head{seed}")
    proxy_model, gold_model = (RewardModel.load(folder, device="cpu") for folder in folders)
    other_base = RewardModel.load(tiny_reward_models[0], device="cpu")
    assert proxy_model.shares_trunk_with(gold_model) and not proxy_model.shares_trunk_with(other_base)
    records = [json.loads(line) for line in samples_file(tmp_path).read_text().splitlines()]
    proxy, gold = score_proxy_and_gold(records, proxy_model, gold_model)
    alone_proxy, alone_gold = score_samples(records, proxy_model), score_samples(records, gold_model)
    np.testing.assert_allclose(np.array(proxy), np.array(alone_proxy), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(gold), np.array(alone_gold), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.array(proxy), np.array(gold))  # each head gives its own rewards
    with pytest.raises(ValueError, match="same base model"):
        proxy_model.rewards_with_heads([], [other_base])


# ----------------------------------------------------------------------------- hostile samples files and models


GOOD = {"prompt": "q", "responses": ["a", "b b"], "num_tokens": [1, 2], "hit_limit": [False, False],
        "sampling": {"n": 2}}


@pytest.mark.parametrize(("change", "says"), [
    ({"responses": "a b"}, "'responses' must be a non-empty list of answers, found text"),
    ({"responses": None}, "'responses' must be a non-empty list of answers, found null"),
    ({"responses": []}, "'responses' must be a non-empty list of answers, found an empty list"),
    ({"responses": ["a", 7]}, "every response must be text"),
    ({"prompt": None}, "'prompt' is missing"),
    ({"prompt": 42}, "'prompt' must be text, found a number"),
    ({"prompt": [{"role": "user"}]}, "'prompt' must be text or a non-empty list of {role, content} messages"),
    ({"num_tokens": [1]}, "'num_tokens' has 1 entries for 2 responses"),
    ({"num_tokens": ["1", "2"]}, "'num_tokens' must be a list of whole numbers >= 0, one per response"),
    ({"num_tokens": [float("nan"), 2]}, "'num_tokens' must be a list of whole numbers >= 0, one per response"),
    ({"hit_limit": [1, 0]}, "'hit_limit' must be a list of true/false, one per response"),
])
def test_samples_records_that_cannot_be_scored_are_skipped_and_reported(change, says, tmp_path, tiny_reward_models,
                                                                        capsys):
    """KeyError, TypeError, IndexError and "could not convert string to float" (no file named) once came
    out of such records: each is skipped with FILE:LINE and the reason, a file of nothing else is refused."""
    rm, _ = tiny_reward_models
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, **change}) + "\n")
    assert main(["bon", str(samples), "--model", str(rm), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["prompts"] == 1
    assert f"skipped 1 of 2 records that cannot be scored (first: {samples}:2: {says})" in err, err
    samples.write_text(json.dumps({**GOOD, **change}) + "\n")
    assert main(["bon", str(samples), "--model", str(rm)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{samples}:1: {says}") and "Traceback" not in err, err


def test_bon_json_is_valid_json_and_a_nan_model_is_refused(tmp_path, tiny_reward_models, capsys):
    """NaN in the curve once made --json print NaN, which is not JSON; a reward model whose weights hold
    NaN is refused in one line naming it, before any scoring."""
    import shutil

    from safetensors.torch import load_file, save_file

    rm, _ = tiny_reward_models
    assert main(["bon", str(samples_file(tmp_path)), "--model", str(rm), "--json"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    broken = tmp_path / "nan-rm"
    shutil.copytree(rm, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["score.weight"].fill_(float("nan"))
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    assert main(["bon", str(samples_file(tmp_path)), "--model", str(broken), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "the weights hold NaN or infinite values (score.weight)" in err


def test_bon_plot_that_cannot_be_written_is_refused_before_scoring(tmp_path, tiny_reward_models, capsys):
    rm, _ = tiny_reward_models
    (tmp_path / "plots").mkdir()
    for plot, says in ((tmp_path / "plots", "is a folder; give a file name"),
                       (tmp_path / "missing" / "bon.html", "no such folder"),
                       ("/dev/null", "is not a regular file")):
        code = main(["bon", str(samples_file(tmp_path)), "--model", str(rm), "--plot", str(plot), "--overwrite"])
        err = capsys.readouterr().err
        assert code == 2 and says in err and "scored" not in err and err.count("\n") == 1, err
