"""Sampling answers from a policy and the resumable samples file of `rmcore sample`."""

from __future__ import annotations

import json

import pytest
import torch

from rmcore.cli import main
from rmcore.core.errors import DataError
from rmcore.data import read_preferences
from rmcore.data.prompts import read_prompts
from rmcore.policy.models import load_policy
from rmcore.policy.sampling import end_token_ids, sample

PROMPTS = ["Name a prime number.", "How do I boil an egg?", "Say hello.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(str(tiny_model_dir))[:2]


def eager_stopper(policy, end_logit: float = 6.0):
    """The tiny policy made to end its turn about half the time at each token (a real EOS to find)."""
    model, tokenizer = policy
    import copy

    model = copy.deepcopy(model)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    head = torch.nn.Linear(hidden, vocab, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[tokenizer.eos_token_id] = end_logit
    model.lm_head = head
    return model, tokenizer


def test_n_answers_per_prompt_reproducible_for_a_seed(policy):
    model, tokenizer = policy
    first = sample(model, tokenizer, PROMPTS, 3, max_new_tokens=6, seed=1)
    again = sample(model, tokenizer, PROMPTS, 3, max_new_tokens=6, seed=1)
    other = sample(model, tokenizer, PROMPTS, 3, max_new_tokens=6, seed=2)
    assert [len(g) for g in first] == [3] * len(PROMPTS)
    texts = [[s.text for s in g] for g in first]
    assert texts == [[s.text for s in g] for g in again]
    assert texts != [[s.text for s in g] for g in other]


def test_answers_end_at_the_end_of_turn_token_or_are_marked(policy):
    model, tokenizer = eager_stopper(policy)
    ends = end_token_ids(tokenizer, model)
    groups = sample(model, tokenizer, PROMPTS, 8, max_new_tokens=4, seed=0)
    samples = [s for g in groups for s in g]
    for s in samples:
        if s.hit_limit:
            assert s.num_tokens == 4 and not any(t in ends for t in s.tokens)
        else:
            assert s.tokens[-1] in ends and not any(t in ends for t in s.tokens[:-1])
    assert any(s.hit_limit for s in samples) and not all(s.hit_limit for s in samples)


def test_bad_settings_are_refused(policy):
    model, tokenizer = policy
    with pytest.raises(ValueError, match="n must be at least 1"):
        sample(model, tokenizer, PROMPTS, 0)
    with pytest.raises(ValueError, match="temperature"):
        sample(model, tokenizer, PROMPTS, 2, temperature=0.0)


def test_read_prompts_from_text_and_data_files(tmp_path, demo_path):
    text = tmp_path / "prompts.txt"
    text.write_text("First question\n\n  Second question  \n")
    assert read_prompts(text) == ["First question", "Second question"]
    from_data = read_prompts(demo_path)
    assert len(from_data) == len({json.dumps(p) for p in from_data}) > 10
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(DataError, match="no prompts"):
        read_prompts(empty)


def sample_cli(prompts, out, *extra):
    return main(["sample", str(prompts), "--out", str(out), "--n", "2", "--max-new-tokens", "5", *map(str, extra)])


def test_sample_cli_writes_candidates_and_resumes(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "samples.jsonl"
    assert sample_cli(prompts, out, "--model", tiny_model_dir, "--limit", 2) == 0
    first_two = out.read_text()
    assert len(first_two.splitlines()) == 2
    # a rerun with more prompts keeps what is there and appends the rest
    assert sample_cli(prompts, out, "--model", tiny_model_dir) == 0
    assert out.read_text().startswith(first_two)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == PROMPTS
    assert all(len(r["responses"]) == 2 and len(r["hit_limit"]) == 2 for r in records)
    # a write cut off half-way is dropped and redone
    with out.open("a") as handle:
        handle.write('{"prompt": "Say hel')
    records_before = out.read_text().splitlines()[:-1]
    out.write_text("\n".join(records_before[:-1]) + "\n" + '{"prompt": "What is')
    assert sample_cli(prompts, out, "--model", tiny_model_dir) == 0
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == PROMPTS
    # and nothing to do the next time
    assert sample_cli(prompts, out, "--model", tiny_model_dir) == 0
    assert "nothing to do" in capsys.readouterr().err
    # rmcore reads it as candidates to score
    data = read_preferences(out, for_scoring=True)
    assert data.report.format == "candidates" and data.report.responses == 8


def test_a_samples_file_whose_last_record_lacks_its_newline_is_continued_whole(tmp_path, tiny_model_dir):
    """A whole last record without a final newline (a file edited or copied by hand) is kept: only a
    record cut off half-way is dropped and sampled again."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "samples.jsonl"
    assert sample_cli(prompts, out, "--model", tiny_model_dir, "--limit", 2) == 0
    kept = out.read_text().rstrip("\n")
    out.write_text(kept)  # no final newline
    assert sample_cli(prompts, out, "--model", tiny_model_dir) == 0
    lines = out.read_text().splitlines()
    assert "\n".join(lines[:2]) == kept
    assert [json.loads(line)["prompt"] for line in lines] == PROMPTS


def test_samples_with_line_separators_inside_answers_read_back(tmp_path):
    """U+2028 and U+0085 inside a JSON string are not line ends: the file reads back whole."""
    from rmcore.policy.sampling import read_samples_file

    record = {"prompt": "q", "responses": ["one\u2028two", "three\u0085four"], "sampling": {}}
    out = tmp_path / "samples.jsonl"
    out.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_samples_file(out) == [record]


def test_sample_cli_never_writes_over_a_users_file(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    for content in ("my notes\n", "", '{"prompt": "q", "responses": ["a"]}\n'):
        mine = tmp_path / "mine.jsonl"
        mine.write_text(content)
        assert sample_cli(prompts, mine, "--model", tiny_model_dir) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(str(mine)), err
        assert mine.read_text() == content
    out = tmp_path / "samples.jsonl"
    assert sample_cli(prompts, out, "--model", tiny_model_dir, "--limit", 1) == 0
    before = out.read_text()
    assert sample_cli(prompts, out, "--model", tiny_model_dir, "--temperature", 0.5) == 2
    assert "other settings (temperature differs)" in capsys.readouterr().err
    assert out.read_text() == before
    assert sample_cli(prompts, prompts, "--model", tiny_model_dir) == 2


def test_sample_cli_bad_input_exits_2_with_one_line(tmp_path, tiny_model_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert sample_cli(empty, tmp_path / "s.jsonl", "--model", tiny_model_dir) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    with pytest.raises(SystemExit) as exc:
        main(["sample", str(empty), "--out", str(tmp_path / "s.jsonl"), "--n", "0"])
    assert exc.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    assert sample_cli(prompts, tmp_path / "s.jsonl", "--model", tmp_path / "nowhere") == 2
    assert "no such model folder" in capsys.readouterr().err
