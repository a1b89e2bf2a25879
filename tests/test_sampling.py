"""Sampling answers from a policy and the resumable samples file of `rmcore sample`."""

from __future__ import annotations

import json
import os

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


# ----------------------------------------------------------------------------- hostile prompts, options, folders


def bounded(call, seconds: float = 120):
    """call() in a thread that must end within `seconds` (a hang fails the test instead of blocking it)."""
    import threading

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_more_answers_than_one_call_holds_take_several_calls_reproducibly(policy):
    """--n above --sequences-per-call: a prompt's answers come from several generate calls (the input is
    never expanded to n rows at once: --n 100000000 once asked for 26 GB)."""
    model, tokenizer = policy
    first = sample(model, tokenizer, PROMPTS[:2], 5, max_new_tokens=3, seed=4, sequences_per_call=2)
    again = sample(model, tokenizer, PROMPTS[:2], 5, max_new_tokens=3, seed=4, sequences_per_call=2)
    assert [len(g) for g in first] == [5, 5]
    assert [[s.tokens for s in g] for g in first] == [[s.tokens for s in g] for g in again]
    assert len({tuple(s.tokens) for s in first[0]}) > 1  # the calls draw different answers


@pytest.mark.parametrize(("options", "says"), [
    (["--n", "100000000"], "--n must be at most 4096 answers per prompt"),
    (["--seed", str(2**70)], "--seed must be a whole number from 0 to 4,294,967,295, got 1180591620717411303424"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4,294,967,295, got -1"),
    (["--sequences-per-call", "100000000"], "--sequences-per-call must be from 1 to 4096"),
    (["--max-new-tokens", "100000"], "--max-new-tokens 100,000: the policy reads at most 2,048 tokens"),
])
def test_sample_options_that_cannot_be_met_are_one_line_naming_the_option(options, says, tmp_path, tiny_model_dir,
                                                                          capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    out = tmp_path / "s.jsonl"
    code = main(["sample", str(prompts), "--out", str(out), "--model", str(tiny_model_dir), *options])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("[rmcore]")]
    assert code == 2 and len(lines) == 1 and says in lines[0], err
    assert "Traceback" not in err and not out.exists()
    if "--max-new-tokens" not in options:  # refused before the policy loads
        assert "[rmcore] loading" not in err


def test_a_five_megabyte_prompt_is_cut_from_the_left_and_reported(tmp_path, tiny_model_dir, capsys):
    from rmcore.policy.sampling import MAX_PROMPT_TOKENS, prompt_token_ids

    huge = "Tell me about eggs and bread. " * 175_000  # 5.2 MB on one line
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(huge + "\nSay hello.\n")
    out = tmp_path / "s.jsonl"
    code = bounded(lambda: sample_cli(prompts, out, "--model", tiny_model_dir))
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"1 of 2 prompts are longer than {MAX_PROMPT_TOKENS:,} tokens" in err and "cut from the left" in err
    records = [json.loads(line) for line in out.read_text().split("\n") if line]
    assert [len(r["responses"]) for r in records] == [2, 2] and records[0]["prompt"] == huge.strip()
    _, tokenizer = load_policy(str(tiny_model_dir))[:2]
    ids = prompt_token_ids(tokenizer, huge)
    assert len(ids) == MAX_PROMPT_TOKENS
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")  # the end of the prompt is what stays


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_prompt_files_that_are_not_text_are_refused_in_one_line(tmp_path, tiny_model_dir, capsys):
    """Binary and UTF-16 .txt files were sampled as garbage, a named pipe hung, a link to /dev/zero filled
    the memory: each is one line naming the file, exit 2, before the policy loads."""
    cases = {}
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("First question\nSecond question\n".encode("utf-16"))
    cases[utf16] = "UTF-16 (or UTF-32) text; save the file as UTF-8"
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 8)
    cases[binary] = "binary data, not a text file"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    cases[latin1] = "not UTF-8 text (byte 0xe9); save the file as UTF-8"
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    cases[fifo] = "is not a regular file (a named pipe, device or socket); give a prompts file"
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    cases[zero] = "is not a regular file (a named pipe, device or socket); give a prompts file"
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    cases[folder] = "is a folder, not a prompts file"
    for path, says in cases.items():
        code = bounded(lambda path=path: sample_cli(path, tmp_path / "s.jsonl", "--model", tiny_model_dir))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith(str(path)) and says in err, err
        assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_an_out_that_cannot_be_a_samples_file_is_refused_before_any_work(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    (tmp_path / "a_file").write_text("mine")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    cases = {tmp_path / "a_file" / "s.jsonl": "is a file, not a folder",
             "/proc/rmcore-samples.jsonl": "cannot write in /proc",
             fifo: "is not a regular file (a named pipe, device or socket); give a samples file",
             "/dev/null": "is not a regular file"}
    for out, says in cases.items():
        code = bounded(lambda out=out: sample_cli(prompts, out, "--model", tiny_model_dir))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and says in err and "Traceback" not in err, err
    assert (tmp_path / "a_file").read_text() == "mine"


def test_samples_lines_escape_the_line_separators_other_readers_split_on(tmp_path):
    """U+2028, U+2029 and U+0085 are written escaped: str.splitlines (and editors) see one line per record,
    and bon reads the file as samples (num_tokens kept), not as generic data with word counts."""
    from rmcore.cli.policy import read_sample_records
    from rmcore.policy.sampling import json_line, read_samples_file

    record = {"prompt": "q\u2029", "responses": ["one\u2028two", "three\u0085four"], "num_tokens": [3, 9],
              "hit_limit": [False, True], "sampling": {"n": 2}}
    line = json_line(record)
    assert not any(c in line for c in "\u2028\u2029\u0085") and line.count("\n") == 1
    out = tmp_path / "samples.jsonl"
    out.write_text(line * 2, encoding="utf-8")
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    assert read_samples_file(out) == [record, record]
    assert read_sample_records(str(out))[0]["num_tokens"] == [3, 9]


def test_a_policy_folders_generation_config_never_changes_sampling(tmp_path, tiny_model_dir, caplog):
    """num_beams: 1000 in generation_config.json once turned sampling into a beam search (no answer in
    120 s, 3.5 GB). Sampling takes its settings from rmcore's options; the folder's are said and ignored."""
    import logging
    import shutil

    folder = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    settings.update(num_beams=1000, num_return_sequences=500, max_length=10**9, repetition_penalty=3.0,
                    return_dict_in_generate=True, output_scores=True, top_k=1)
    (folder / "generation_config.json").write_text(json.dumps(settings))
    with caplog.at_level(logging.INFO, logger="rmcore"):
        model, tokenizer, _ = load_policy(str(folder))
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "generation_config.json: ignored" in said and "num_beams=1000" in said and "--temperature" in said
    clean_model, clean_tokenizer, _ = load_policy(str(tiny_model_dir))
    got = bounded(lambda: sample(model, tokenizer, PROMPTS[:2], 3, max_new_tokens=4, seed=5), 60)
    want = sample(clean_model, clean_tokenizer, PROMPTS[:2], 3, max_new_tokens=4, seed=5)
    assert [[s.tokens for s in g] for g in got] == [[s.tokens for s in g] for g in want]
