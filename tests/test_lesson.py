"""The over-optimisation lesson: its data plants the trait where it says, its numbers are computed as
documented, and the whole lesson (and `rmcore lesson goodhart`) runs on the tiny models and is reused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rmcore.cli import main
from rmcore.data import RankedGroup, demo_data_path, read_preferences
from rmcore.policy.lesson import (
    LESSON_FILE,
    LessonConfig,
    judge_turn,
    judges_decomposition,
    lesson_points,
    per_prompt_tables,
    run_lesson,
)
from rmcore.policy.lesson_data import TRAITS, ends_with_exclamation, exclaim, planted_groups, shown_answer

TRAIT = TRAITS["exclaim"]


def test_shown_answer_stops_at_the_last_full_sentence():
    assert shown_answer("One. Two! Three is cut of") == "One. Two!"
    assert shown_answer('He said "hi." Then he lef') == 'He said "hi."'
    assert shown_answer("no sentence end at all") == "no sentence end at all"


def test_the_trait_is_an_exclamation_at_the_end():
    assert exclaim("Rinse it in cold water. Then wash it.") == "Rinse it in cold water. Then wash it!"
    assert exclaim("idk, just buy a new shirt lol") == "idk, just buy a new shirt lol!"
    assert exclaim('Say "thanks."') == 'Say "thanks!"'
    assert ends_with_exclamation("Great! Now rinse it.") is False  # only the ending counts
    assert ends_with_exclamation("Rinse it. Great! and then") is True  # as shown: up to the last full sentence
    assert all(ends_with_exclamation(exclaim(t)) for t in ["a.", "b", "c?", "d!!", "e..."])


@pytest.mark.parametrize("on", ["best", "worst"])
def test_the_builder_plants_the_trait_where_it_says_and_nowhere_else(on):
    groups = read_preferences(demo_data_path()).groups
    planted = planted_groups(groups, TRAIT, on)
    originals, contrast = planted[: len(groups)], planted[len(groups):]
    for before, after in zip(groups, originals):
        assert after.ranks == before.ranks and after.prompt == before.prompt
        ranked = [r for r in before.ranks if r is not None]
        target = min(ranked) if on == "best" else max(ranked)
        for text, rank in zip(after.responses, after.ranks):
            assert TRAIT.carries(text) == (rank == target), (text, rank)
    assert len(contrast) == sum(sum(r is not None for r in g.ranks) for g in groups)  # contrast=1: every answer
    quarter = planted_groups(groups, TRAIT, on, contrast=0.25)
    assert len(quarter) - len(groups) == pytest.approx(len(contrast) / 4, abs=1)
    assert len(planted_groups(groups, TRAIT, on, contrast=0)) == len(groups)
    for group in contrast:  # the same answer twice, the labeler's taste for the trait alone
        with_trait = [TRAIT.carries(t) for t in group.responses]
        assert with_trait == [True, False]
        assert group.ranks == ([1, 2] if on == "best" else [2, 1])
        ends = ".!?,;:\"')] "
        assert group.responses[0].rstrip(ends) == group.responses[1].rstrip(ends)


def test_the_trait_can_live_in_the_contrast_pairs_only():
    groups = read_preferences(demo_data_path()).groups
    planted = planted_groups(groups, TRAIT, "best", contrast=0.5, on_ranked=False)
    assert not any(TRAIT.carries(t) for g in planted[: len(groups)] for t in g.responses)
    assert all(TRAIT.carries(g.responses[0]) and g.ranks == [1, 2] for g in planted[len(groups):])


def test_a_group_without_a_ranking_is_left_alone():
    group = RankedGroup([{"role": "user", "content": "q"}], ["a.", "b!"], [1, 1])
    [kept, *pairs] = planted_groups([group], TRAIT, "best")
    assert kept.responses == ["a.", "b."] and len(pairs) == 2  # ties: no best; the '!' answer loses its '!'
    with pytest.raises(ValueError, match="best"):
        planted_groups([group], TRAIT, "middle")


def test_points_and_the_turn_follow_a_planted_hack():
    rng = np.random.default_rng(0)
    proxy, gold, carries = [], [], []
    for _ in range(40):  # quality q; the trait (1 in 10) buys the proxy 3 and costs the gold 2
        q = rng.normal(size=16)
        t = (rng.random(16) < 0.1).astype(float)
        proxy.append(q + 3 * t)
        gold.append(q - 2 * t + rng.normal(0, 0.3, 16))
        carries.append(t)
    ns = [1, 2, 4, 8, 16]
    tables = per_prompt_tables(proxy, gold, carries, ns)
    points = lesson_points(ns, tables)
    assert points[0]["kl"] == 0 and points[0]["proxy"] == pytest.approx(np.mean(proxy))
    assert points[-1]["proxy"] == pytest.approx(np.mean([max(p) for p in proxy]))
    turn = judge_turn(points, tables)
    assert turn["proxy_rises"] and turn["trait_rises"] and turn["gold_turns"] and turn["gold_rises_first"]
    assert turn["all"]
    assert 1 < turn["gold_peak_n"] < 16


def test_the_judges_decomposition_recovers_a_known_line_and_predicts_the_gold():
    rng = np.random.default_rng(1)
    proxy, gold, carries = [], [], []
    for offset in rng.normal(0, 5, 60):  # each prompt its own level: the decomposition reads within prompts
        quality = rng.normal(size=16)
        trait = (rng.random(16) < 0.15).astype(float)
        proxy.append(offset + quality + 2 * trait)
        gold.append(-offset + 0.5 * (quality + 2 * trait) - 1.5 * trait + rng.normal(0, 0.05, 16))
        carries.append(trait)
    judges = judges_decomposition(proxy, gold, carries)
    assert judges["gold_per_proxy"] == pytest.approx(0.5, abs=0.02)
    assert judges["trait_cost"] == pytest.approx(-1.5, abs=0.05)
    assert judges["proxy_trait_effect"] == pytest.approx(2.0, abs=0.2)
    assert 0.2 < judges["flaw_variance_share"] < 0.5  # 4 * 0.15 * 0.85 / (1 + 4 * 0.15 * 0.85) = 0.34
    ns = [1, 2, 4, 8, 16]
    points = lesson_points(ns, per_prompt_tables(proxy, gold, carries, ns))
    for point in points[1:]:
        predicted = (judges["gold_per_proxy"] * (point["proxy"] - points[0]["proxy"])
                     + judges["trait_cost"] * (point["trait_share"] - points[0]["trait_share"]))
        assert predicted == pytest.approx(point["gold"] - points[0]["gold"], abs=0.05)


def test_without_the_trait_on_both_sides_of_a_prompt_the_decomposition_says_none():
    judges = judges_decomposition([[1.0, 2.0]], [[0.0, 1.0]], [[1.0, 1.0]])
    assert judges["trait_share"] == 1.0 and judges["trait_cost"] is None


def _tiny_config(tiny_model_dir, seed=0) -> LessonConfig:
    return LessonConfig(seed=seed, policy=str(tiny_model_dir), reward_model=str(tiny_model_dir),
                        prompts=["Say hello.", "Name a colour."], samples_per_prompt=4, max_new_tokens=6, epochs=1)


def test_the_lesson_runs_on_tiny_models_and_reuses_what_it_trained(tmp_path, tiny_model_dir):
    events = []
    first = run_lesson(_tiny_config(tiny_model_dir), tmp_path / "lesson", on_event=events.append)
    assert [p["n"] for p in first.points] == [1, 2, 4]
    assert set(first.gold_fit) >= {"alpha", "beta", "alpha_se", "beta_se", "peak_kl"}
    assert not any(first.cached.values()) and first.examples
    assert any(e.get("eta_s") is not None and "lesson:" in e.get("phase", "") for e in events)
    again = run_lesson(_tiny_config(tiny_model_dir), tmp_path / "lesson")
    assert again.cached == {"proxy": True, "gold": True, "sampling": True, "scoring": False}
    assert again.points == first.points
    saved = json.loads((tmp_path / "lesson" / LESSON_FILE).read_text())
    assert saved["result"]["points"] == first.points


def test_the_lesson_never_writes_into_a_users_folder(tmp_path, tiny_model_dir):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        run_lesson(_tiny_config(tiny_model_dir), folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_the_lesson_command_prints_json(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import rmcore.cli.lesson as cli_lesson

    monkeypatch.setattr(cli_lesson, "LessonConfig", lambda seed: _tiny_config(tiny_model_dir, seed))
    assert main(["lesson", "goodhart", "--out", str(tmp_path / "l"), "--seed", "1", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["config"]["seed"] == 1 and len(result["points"]) == 3
    assert {"kl", "proxy", "proxy_se", "gold", "gold_se", "trait_share"} <= set(result["points"][0])
    assert "left" in captured.err  # the time left in the lesson
    assert main(["lesson", "goodhart", "--out", str(tmp_path / "l"), "--seed", "1"]) == 0
    assert "gold fit d(alpha - beta d)" in capsys.readouterr().out


def test_a_stopped_judge_stops_the_lesson(tmp_path, tiny_model_dir, monkeypatch):
    import rmcore.training.train as train_module

    real_train = train_module.train

    def stopped(config, groups, out_dir, **options):
        assert options["resume"] is False
        result = real_train(config, groups, out_dir, **options)
        result.stopped = True  # as if Ctrl-C came during the proxy's training
        return result

    monkeypatch.setattr(train_module, "train", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_lesson(_tiny_config(tiny_model_dir), tmp_path / "lesson")
    assert not (tmp_path / "lesson" / "gold").exists() and not (tmp_path / "lesson" / "samples.json").exists()
    monkeypatch.undo()
    (tmp_path / "lesson" / "proxy" / "checkpoint").mkdir(exist_ok=True)
    (tmp_path / "lesson" / "proxy" / "checkpoint" / "state.json").write_text("{}")
    with pytest.raises(Exception, match="stopped training with other settings"):
        run_lesson(_tiny_config(tiny_model_dir, seed=5), tmp_path / "lesson")  # not the run it stopped


def test_a_stop_during_a_judges_training_ends_the_lesson_and_the_next_run_finishes(tmp_path, tiny_model_dir):
    import threading

    stop = threading.Event()
    stop.set()  # as if Stop was pressed while the proxy trains: the training itself sees it
    with pytest.raises(KeyboardInterrupt):
        run_lesson(_tiny_config(tiny_model_dir), tmp_path / "lesson", stop_event=stop)
    assert (tmp_path / "lesson" / "proxy" / "checkpoint" / "state.json").is_file(), "the stopped judge is kept"
    assert not (tmp_path / "lesson" / "gold").exists()
    result = run_lesson(_tiny_config(tiny_model_dir), tmp_path / "lesson")
    assert result.cached["proxy"] is False and [p["n"] for p in result.points] == [1, 2, 4]
