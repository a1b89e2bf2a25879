"""Bad input and faults: a corpus of malformed files, Ctrl-C, a kill while saving, OOM, wrong resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rmcore.cli import main
from rmcore.core.errors import ModelError, TrainingError
from rmcore.data import read_preferences
from rmcore.training.train import TrainConfig, train

MALFORMED = Path(__file__).parent / "data" / "malformed"
EXPECTED = json.loads((MALFORMED / "EXPECTED.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_corpus(name, capsys):
    exit_code, message = EXPECTED[name]
    path = MALFORMED / name
    code = main(["validate", str(path), "--json", "--no-tokenize"])
    out, err = capsys.readouterr()
    assert code == exit_code, err
    if exit_code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(str(path)), err
        assert message in lines[0]
    else:
        report = json.loads(out)
        reasons = [s["reason"] for s in report["skipped"]] + report["warnings"]
        if message:
            assert any(message in r for r in reasons), reasons
            assert all(s["where"].startswith(str(path)) for s in report["skipped"])
        assert report["comparisons"] > 0


def test_every_skipped_row_is_counted(tmp_path):
    report = read_preferences(MALFORMED / "bad_ranks.jsonl").report
    assert report.rows == 4 and report.prompts == 1 and len(report.skipped) == 3


CTRL_C_SCRIPT = textwrap.dedent("""
    import sys, time
    from rmcore.data import read_preferences
    from rmcore.training.train import TrainConfig, train

    def slow_steps(event):
        if event["event"] == "step":
            print("STEP", event["step"], flush=True)
            time.sleep(0.5)

    groups = read_preferences(sys.argv[1]).groups
    result = train(TrainConfig(model=sys.argv[2], mode="full", epochs=5, lr=1e-3), groups, sys.argv[3],
                   on_step=slow_steps)
    print("STOPPED" if result.stopped else "FINISHED", result.steps, flush=True)
""")


def test_ctrl_c_saves_a_checkpoint_and_the_model_so_far(tiny_model_dir, demo_path, tmp_path):
    out = tmp_path / "rm"
    env = {**os.environ, "RMCORE_CACHE": str(tmp_path / "cache")}
    # A launcher that ignores SIGINT (`nohup make test &`) passes that on to its children: restore the
    # default, so Python installs its Ctrl-C handler and this tests rmcore rather than the launcher.
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, str(demo_path), str(tiny_model_dir), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if line.startswith("STEP 2"):
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "STOPPED" in rest
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert 2 <= state["step"] < 30
    assert json.loads((out / "rmcore.json").read_text())["stopped"] is True


KILL_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    from rmcore.model.reward_model import RewardModel
    model = RewardModel.load(sys.argv[1], device="cpu")
    torch_save = type(model.tokenizer).save_pretrained
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    type(model.tokenizer).save_pretrained = die
    model.save(sys.argv[2], {"version": 2})
""")


def test_a_process_killed_while_saving_leaves_the_previous_model(tiny_model_dir, tmp_path):
    from rmcore.model.reward_model import RewardModel

    out = RewardModel.load(tiny_model_dir, device="cpu").save(tmp_path / "rm", {"version": 1})
    before = (out / "model.safetensors").read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_SAVING, str(tiny_model_dir), str(out)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((out / "rmcore.json").read_text())["version"] == 1
    assert (out / "model.safetensors").read_bytes() == before
    assert RewardModel.load(out, device="cpu").trained


def test_out_of_memory_names_a_smaller_setting(tiny_model_dir, demo_path, tmp_path, monkeypatch):
    train_module = sys.modules["rmcore.training.train"]

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "pack_groups", oom)
    groups = read_preferences(demo_path).groups
    with pytest.raises(TrainingError, match=r"out of memory at batch size 8 .*--batch-size 4 or --max-length 256"):
        train(TrainConfig(model=str(tiny_model_dir), mode="full", max_length=512), groups, tmp_path / "rm")


def test_resume_with_other_data_is_refused(tiny_model_dir, demo_path, tmp_path, private_cache):
    import threading

    groups = read_preferences(demo_path).groups
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=1e-3)
    stop = threading.Event()
    stop.set()  # stop after the first step
    train(config, groups, tmp_path / "rm", stop_event=stop)
    assert (tmp_path / "rm" / "checkpoint").is_dir()
    with pytest.raises(TrainingError, match="another model, data or options"):
        train(config, groups[:-3], tmp_path / "rm", resume=True)


def test_a_damaged_or_hostile_checkpoint_state_is_refused_in_one_line(tiny_model_dir, demo_path, tmp_path,
                                                                       private_cache):
    """The checkpoint's state.json goes through the bounded reader: not JSON, or a named pipe, is one line."""
    import os
    import threading

    from rmcore.core.errors import ModelError

    groups = read_preferences(demo_path).groups
    config = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=1e-3)
    stop = threading.Event()
    stop.set()
    train(config, groups, tmp_path / "rm", stop_event=stop)
    state = tmp_path / "rm" / "checkpoint" / "state.json"
    state.write_text('{"run_key": ')
    with pytest.raises(ModelError, match=r"state\.json: not valid JSON .*damaged"):
        train(config, groups, tmp_path / "rm", resume=True)
    state.unlink()
    os.mkfifo(state)  # a named pipe would block a plain read for ever: it is no checkpoint
    with pytest.raises(ModelError, match="no checkpoint to resume"):
        train(config, groups, tmp_path / "rm", resume=True)


def test_cli_train_on_unusable_data_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rmcore", "train", str(MALFORMED / "all_tied.jsonl"), "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "every ranked response is tied" in proc.stderr
    assert not (tmp_path / "x").exists()  # nothing written for a run that could not start


def test_output_folders_where_saving_would_lose_something_are_refused(tiny_model_dir, demo_path, tmp_path,
                                                                      private_cache):
    import threading

    groups = read_preferences(demo_path).groups[:12]
    config = TrainConfig(model=str(tiny_model_dir), mode="head", epochs=2)
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ModelError, match="not empty and holds no rmcore model"):
        train(config, groups, mine)
    assert (mine / "notes.txt").read_text() == "precious"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        train(config, groups, a_file)
    assert a_file.read_text() == "x"
    with pytest.raises(ModelError, match="no checkpoint to resume"):
        train(config, groups, tmp_path / "new", resume=True)
    # a stopped run keeps its checkpoint until --resume continues it
    stop = threading.Event()
    stop.set()
    full = TrainConfig(model=str(tiny_model_dir), mode="full", epochs=2, lr=1e-3)
    train(full, groups, tmp_path / "stopped", stop_event=stop)
    with pytest.raises(ModelError, match="add --resume"):
        train(full, groups, tmp_path / "stopped")
    assert (tmp_path / "stopped" / "checkpoint" / "state.json").is_file()
    # a finished model is replaced, and says so; nothing is left beside it
    phases = []
    train(config, groups, tmp_path / "done")
    train(config, groups, tmp_path / "done", on_step=lambda e: phases.append(e.get("phase")))
    assert any(p and "it is replaced" in p for p in phases)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rmcore", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_cli_refuses_outputs_and_options_that_would_lose_work_or_mean_nothing(tiny_model_dir, demo_path, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(demo_path.read_bytes())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    cases = [
        (["train", data, "--out", mine, "--model", tiny_model_dir], "holds no rmcore model"),
        (["eval", data, "--model", tiny_model_dir, "--pairs-csv", data], "input file"),
        (["eval", data, "--model", tiny_model_dir, "--pairs-csv", tmp_path / "no" / "p.csv"], "no such folder"),
        (["score", "--model", "models/not-there", "--prompt", "q", "--response", "a"], "no such model folder"),
        (["score", "--model", "not-a-model", "--prompt", "q", "--response", "a"], "never from a hub"),
        (["score", "--model", tiny_model_dir, "--prompt", "q", "--response", "", "--response", "b"], "[0] is empty"),
        (["score", "--model", tiny_model_dir, "--prompt", "q", "--response", "a", "--max-length", "3"], "at least 16"),
        (["train", data, "--out", tmp_path / "x", "--center-coefficient", "-1"], "must be a number >= 0"),
        (["train", data, "--out", tmp_path / "x", "--eval-every", "-1"], "must be 0 (each epoch)"),
    ]
    for args, message in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "huggingface.co" not in proc.stderr and "internet" not in proc.stderr, proc.stderr
    assert data.read_bytes() == demo_path.read_bytes()
    assert (mine / "notes.txt").read_text() == "precious" and not (tmp_path / "x").exists()


def test_cli_output_cut_short_by_a_closed_pipe_is_not_an_error(tmp_path):
    proc = subprocess.run(f"{sys.executable} -m rmcore validate {MALFORMED / 'bom.jsonl'} --no-tokenize | head -1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


# ----------------------------------------------------------------------------- bounded time and memory


def test_gzip_is_inflated_as_a_stream_with_a_cap(tmp_path, monkeypatch):
    import gzip
    import tracemalloc

    from rmcore.core.errors import DataError

    monkeypatch.setenv("RMCORE_MAX_DATA_MB", "2")
    line = json.dumps({"prompt": "q", "chosen": "a" * 200, "rejected": "b"}) + "\n"
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(line.encode() * 100_000, 9))  # 23 MB of text in ~100 KB
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb.jsonl.gz: over 2 MB once decompressed.*RMCORE_MAX_DATA_MB"):
            read_preferences(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20  # the cap and a chunk, not the whole inflated file


def test_parquet_is_checked_against_its_decoded_size_before_rows_are_built(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rmcore.core.errors import DataError

    monkeypatch.setenv("RMCORE_MAX_DATA_MB", "8")
    long_text = "x" * 100_000
    table = pa.table({"prompt": ["q"] * 2000, "chosen": [long_text] * 2000, "rejected": ["b"] * 2000})
    path = tmp_path / "dict.parquet"
    pq.write_table(table, path, use_dictionary=True, compression="zstd")
    assert path.stat().st_size < 200_000  # 200 MB of text once decoded
    pool = pa.default_memory_pool()
    before = pool.max_memory()
    with pytest.raises(DataError, match=r"dict.parquet: holds 191 MB of data once decoded.*RMCORE_MAX_DATA_MB"):
        read_preferences(path)
    assert pool.max_memory() - before < 50 * 2**20
    many = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["q"] * 40_000, "chosen": ["a"] * 40_000, "rejected": ["b"] * 40_000}), many)
    with pytest.raises(DataError, match="holds more than 16,384 records"):
        read_preferences(many)


def test_a_file_of_many_tiny_records_is_refused_by_count(tmp_path, monkeypatch):
    import time

    from rmcore.core.errors import DataError

    monkeypatch.setenv("RMCORE_MAX_DATA_MB", "2")
    numbers = tmp_path / "ints.json"
    numbers.write_text(json.dumps(list(range(100_000))))  # 0.7 MB: under the size cap, over the record cap
    start = time.perf_counter()
    with pytest.raises(DataError, match="ints.json: holds more than 4,096 records"):
        read_preferences(numbers)
    lines = tmp_path / "tiny.jsonl"
    lines.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n' * 10_000)
    with pytest.raises(DataError, match="tiny.jsonl: holds more than 4,096 records"):
        read_preferences(lines)
    assert time.perf_counter() - start < 5


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipes_and_devices_are_refused_at_once(tmp_path):
    pipe = tmp_path / "pipe.jsonl"
    os.mkfifo(pipe)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    for path in (pipe, zero):
        proc = subprocess.run([sys.executable, "-m", "rmcore", "validate", str(path), "--no-tokenize"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "is not a regular file" in proc.stderr, proc.stderr


def test_long_texts_are_cut_by_characters_before_tokenizing(tiny_model_dir):
    from rmcore.data import RankedGroup
    from rmcore.data.encoding import encode_group, max_chars
    from rmcore.model.reward_model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    words = " ".join(f"word{i % 97}" for i in range(40_000))  # ~300k characters
    group = RankedGroup([{"role": "system", "content": "be brief"}, {"role": "user", "content": words}],
                        [words, "short"], [1, 2])
    seen = []
    calls = type(tokenizer).__call__

    def spy(self, text, *args, **kwargs):
        seen.extend([text] if isinstance(text, str) else text)
        return calls(self, text, *args, **kwargs)

    whole = encode_group(tokenizer, group, 128)
    type(tokenizer).__call__ = spy
    try:
        cut = encode_group(tokenizer, group, 128)
    finally:
        type(tokenizer).__call__ = calls
    assert max(len(text) for text in seen) < 3 * max_chars(tokenizer, 128) < len(words)
    assert (cut.prompt_ids, cut.response_ids, cut.prompt_truncated, cut.truncated) == (
        whole.prompt_ids, whole.response_ids, whole.prompt_truncated, whole.truncated)
    assert whole.prompt_truncated and whole.truncated == (0,)


def test_a_fifty_megabyte_line_is_scored_in_bounded_time(tiny_model_dir):
    import time

    from rmcore.model.reward_model import RewardModel

    model = RewardModel.load(tiny_model_dir, device="cpu", max_length=64)
    start = time.perf_counter()
    result = model.score("x" * 50_000_000, ["y" * 50_000_000, "short"])
    assert time.perf_counter() - start < 10
    assert result.truncated_prompt and result.truncated_responses == [0]


def test_lone_surrogates_reach_no_tokenizer(tiny_model_dir, tmp_path, capsys):
    from rmcore.model.reward_model import RewardModel

    model = RewardModel.load(tiny_model_dir, device="cpu")
    assert len(model.score("bad \ud800 text", ["a \udfff", "b"]).rewards) == 2
    code = main(["validate", str(MALFORMED / "lone_surrogate.jsonl"), "--model", str(tiny_model_dir), "--json"])
    assert code == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------- model folders


def _broken_copy(tiny_model_dir, tmp_path, name):
    import shutil

    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    return folder


def _set_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_damaged_model_folders_get_one_line_naming_folder_and_file(tiny_model_dir, tmp_path, capsys):
    truncated = _broken_copy(tiny_model_dir, tmp_path, "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    empty = _broken_copy(tiny_model_dir, tmp_path, "empty")
    (empty / "model.safetensors").write_bytes(b"")
    five = _broken_copy(tiny_model_dir, tmp_path, "five")
    _set_config(five, architectures=["LlamaForSequenceClassification"],
                id2label={str(i): f"L{i}" for i in range(5)}, label2id={f"L{i}": i for i in range(5)})
    huge = _broken_copy(tiny_model_dir, tmp_path, "huge")
    _set_config(huge, hidden_size=2**20, intermediate_size=2**22, num_hidden_layers=4096)
    meta = _broken_copy(tiny_model_dir, tmp_path, "meta")
    (meta / "rmcore.json").write_text('{"config": {"max_length": ')
    meta_type = _broken_copy(tiny_model_dir, tmp_path, "meta_type")
    (meta_type / "rmcore.json").write_text('{"config": {"max_length": "long"}}')
    bad_config = _broken_copy(tiny_model_dir, tmp_path, "bad_config")
    (bad_config / "config.json").write_text("[1, 2")
    cases = [(truncated, "model.safetensors", "cut short"), (empty, "model.safetensors", "empty or cut short"),
             (five, "config.json", "a classifier with 5 labels, not a reward model"),
             (huge, "config.json", "does not belong to these weights"), (meta, "rmcore.json", "not valid JSON"),
             (meta_type, "rmcore.json", "config.max_length is 'long'"), (bad_config, "config.json", "not valid JSON")]
    for folder, file, message in cases:
        code = main(["score", "--model", str(folder), "--prompt", "q", "--response", "a", "--response", "b"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (folder, err)
        assert len(err.splitlines()) == 1 and err.startswith(str(folder / file)) and message in err, err


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    from rmcore.model.tiny import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("trained") / "rm", seed=1)


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


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_pipes_devices_and_dangling_links_in_a_model_folder_are_refused_before_loading(trained_rm, tiny_model_dir,
                                                                                      tmp_path, capsys):
    """A FIFO named *.safetensors once hung sample, bon and serve; a link to /dev/zero would fill the memory."""
    fifo = _broken_copy(trained_rm, tmp_path, "fifo")
    os.mkfifo(fifo / "extra.safetensors")
    zero = _broken_copy(trained_rm, tmp_path, "zero")
    (zero / "tokenizer.json").unlink()
    (zero / "tokenizer.json").symlink_to("/dev/zero")
    dangling = _broken_copy(trained_rm, tmp_path, "dangling")
    (dangling / "model-00009.safetensors").symlink_to(tmp_path / "nowhere")
    policy = _broken_copy(tiny_model_dir, tmp_path, "policy")
    os.mkfifo(policy / "model-2.safetensors")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"]}) + "\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\n")
    commands = [(fifo / "extra.safetensors", ["bon", str(samples), "--model", str(fifo)]),
                (fifo / "extra.safetensors", ["serve", "--model", str(fifo), "--port", "0"]),
                (zero / "tokenizer.json", ["score", "--model", str(zero), "--prompt", "q", "--response", "a"]),
                (dangling / "model-00009.safetensors", ["bon", str(samples), "--model", str(dangling)]),
                (policy / "model-2.safetensors", ["sample", str(prompts), "--out", str(tmp_path / "s.jsonl"),
                                                  "--model", str(policy)])]
    for file, argv in commands:
        code = bounded(lambda argv=argv: main(argv))
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[rmcore]")]
        assert code == 2 and len(err) == 1 and err[0].startswith(str(file)), err
        assert "is not a regular file" in err[0] or "a link to nothing" in err[0]


@pytest.mark.parametrize(("template", "says"), [
    ("{% for m in messages %}{{ m['content'] }", "its chat template has a syntax error (line 1: unexpected '}')"),
    ("{{ raise_exception('Conversation roles must alternate') }}",
     "its chat template refused the conversation: Conversation roles must alternate"),
    ("{{ cycler.__init__.__globals__.os.system('touch ESCAPED') }}",
     "its chat template tried to do something jinja2's sandbox forbids"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "the sandbox stopped it and no code ran"),
    ("{{ messages[0]['content'].foo.bar }}", "its chat template failed (UndefinedError"),
])
def test_chat_templates_that_raise_are_one_line_naming_the_folder(template, says, trained_rm, tmp_path, capsys,
                                                                  monkeypatch):
    """jinja2 tracebacks once came out of broken or hostile templates. They run in jinja2's sandbox (no code
    ran: the escape would have created ESCAPED); the model is refused when it loads, in one line."""
    folder = _broken_copy(trained_rm, tmp_path, "template")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    code = main(["score", "--model", str(folder), "--prompt", "q", "--response", "a"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"{folder}: ") and says in err, err
    assert "Traceback" not in err and not (tmp_path / "ESCAPED").exists()


def test_a_chat_template_that_loops_for_ever_is_refused_in_bounded_time(trained_rm, tmp_path, capsys, monkeypatch):
    """The sandbox runs no code but lets loops run: nested range(100000) loops would spin for hours. The
    trial render at load has a time limit (here 0.3 s; the loop below ends by itself after a few seconds,
    so the test leaves no thread spinning)."""
    import time

    from rmcore.data import encoding

    folder = _broken_copy(trained_rm, tmp_path, "looping")
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["chat_template"] = ("{% for i in range(7000) %}{% for j in range(7000) %}{% endfor %}{% endfor %}"
                                 "{{ messages[0]['content'] }}")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    monkeypatch.setattr(encoding, "TEMPLATE_CHECK_SECONDS", 0.3)
    started = time.perf_counter()
    code = main(["score", "--model", str(folder), "--prompt", "q", "--response", "a"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"{folder}: ") and "did not finish" in err, err
    assert time.perf_counter() - started < 30


def test_a_trained_models_tokenizer_must_match_its_embeddings(trained_rm, tiny_model_dir, tmp_path, capsys):
    """200k added tokens once made rmcore grow a trained model's embeddings with random rows (90 s, 2.5 GB):
    a mismatch is refused at once, naming tokenizer.json. A base model is still resized, as before."""
    import time

    from rmcore.model.reward_model import RewardModel

    grown = _broken_copy(trained_rm, tmp_path, "grown")
    tokenizer = json.loads((grown / "tokenizer.json").read_text())
    first = max(tokenizer["model"]["vocab"].values()) + 1
    tokenizer["added_tokens"] += [{"id": first + i, "content": f"<extra_{i}>", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": False} for i in range(50_000)]
    (grown / "tokenizer.json").write_text(json.dumps(tokenizer))
    started = time.perf_counter()
    code = main(["score", "--model", str(grown), "--prompt", "q", "--response", "a"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"{grown / 'tokenizer.json'}: the tokenizer has ")
    added = len(tokenizer["added_tokens"])
    assert f"has {first + 50_000:,} token ids, {added:,} of them added tokens, but the model's embedding matrix has " \
           f"{first:,} rows" in err and "never changes a trained model" in err
    assert time.perf_counter() - started < 30  # refused before the tokenizer loads (which takes seconds)
    base = _broken_copy(tiny_model_dir, tmp_path, "base")
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    tokenizer["added_tokens"] += [{"id": first + i, "content": f"<extra_{i}>", "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": False} for i in range(3)]
    (base / "tokenizer.json").write_text(json.dumps(tokenizer))
    model = RewardModel.load(base)
    assert model.model.get_input_embeddings().weight.shape[0] == len(model.tokenizer) and not model.trained


def test_weights_holding_nan_are_refused_in_one_line(trained_rm, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = _broken_copy(trained_rm, tmp_path, "nan")
    tensors = load_file(str(broken / "model.safetensors"))
    name = next(n for n in tensors if "layers.0" in n)
    tensors[name].view(-1)[0] = float("inf")
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    code = main(["score", "--model", str(broken), "--prompt", "q", "--response", "a"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{broken}: the weights hold NaN or infinite values (" in err and "the model is damaged" in err


def test_a_folder_named_like_a_data_file_is_one_line_in_every_command(tiny_model_dir, trained_rm, tmp_path, capsys):
    """A folder named x.jsonl given as data once gave an IsADirectoryError traceback."""
    folder = tmp_path / "x.jsonl"
    folder.mkdir()
    commands = [["validate", str(folder), "--no-tokenize"],
                ["train", str(folder), "--out", str(tmp_path / "m"), "--model", str(tiny_model_dir)],
                ["eval", str(folder), "--model", str(trained_rm)],
                ["score", "--model", str(trained_rm), "--data", str(folder)],
                ["sample", str(folder), "--out", str(tmp_path / "s.jsonl"), "--model", str(tiny_model_dir)],
                ["bon", str(folder), "--model", str(trained_rm)],
                ["rlhf", str(folder), "--reward-model", str(trained_rm), "--out", str(tmp_path / "p"),
                 "--policy", str(tiny_model_dir)]]
    for argv in commands:
        code = main(argv)
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[rmcore]")]
        assert code == 2 and len(err) == 1 and err[0].startswith(f"{folder}: is a folder, not a "), (argv, err)


def test_a_prompt_with_twenty_thousand_responses_is_skipped_counted_not_built(tmp_path, capsys):
    """One record with K = 20,000 (0.4 MB) once took 5.4 GB in validate: the 2 x 10^8 pairs were built to be
    counted. Pairs are counted; a prompt with more than 64 responses is skipped with the reason."""
    import resource
    import time

    from rmcore.data.formats import MAX_RESPONSES

    k = 20_000
    big = {"prompt": "p", "responses": [f"answer {i}" for i in range(k)], "ranks": list(range(1, k + 1))}
    ok = {"prompt": "q", "responses": [f"r{i}" for i in range(12)], "ranks": [1, 2, 2, *range(3, 12)]}
    jsonl = tmp_path / "k.jsonl"
    jsonl.write_text(json.dumps(big) + "\n" + json.dumps(ok) + "\n")
    tidy = tmp_path / "k.csv"
    tidy.write_text("prompt,response,rank\n" + "".join(f"p,answer {i},{i + 1}\n" for i in range(k)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    assert main(["validate", str(jsonl), "--json", "--no-tokenize"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["prompts"] == 1 and report["comparisons"] == 12 * 11 // 2 - 1 and report["ties"] == 1
    [skipped] = report["skipped"]
    assert skipped["where"] == f"{jsonl}:1" and skipped["reason"].startswith(
        f"20,000 responses to one prompt; rmcore compares at most {MAX_RESPONSES} per prompt")
    assert any("more than 9 responses (up to K = 12)" in w for w in report["warnings"])
    assert main(["validate", str(tidy), "--no-tokenize"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "20,000 responses to one prompt" in err and err.startswith(f"{tidy}:")
    assert time.perf_counter() - started < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB: far from gigabytes


# ----------------------------------------------------------------------------- what the user sees


def test_control_characters_from_a_file_are_escaped_in_every_message(capsys, tmp_path):
    path = tmp_path / "esc.jsonl"
    path.write_text(json.dumps({"prompt": "q", "responses": ["a", "b"], "ranks": [1, 2]}) + "\n"
                    + json.dumps({"prompt": "q", "responses": ["a", "b"], "ranks": [1, "\x1b[2J\rfake\nline"]}) + "\n"
                    + json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "\x1b]0;title\x07": 1}) + "\n")
    assert main(["validate", str(path), "--no-tokenize"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert main(["validate", str(MALFORMED / "escape_sequences.jsonl"), "--no-tokenize"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2j" in err and len(err.strip().splitlines()) == 1


def test_csv_cells_that_spreadsheets_would_run_are_neutralised(tiny_model_dir, tmp_path, capsys):
    import pandas as pd

    from rmcore.core.csv_safe import safe_table

    table = safe_table(pd.DataFrame({"text": ["=1+1", "+x", "-y", "@z", "\tt", "\rr", "ok", None], "n": range(8)}))
    assert table["text"].tolist()[:7] == ["'=1+1", "'+x", "'-y", "'@z", "'\tt", "'\rr", "ok"]
    assert table["n"].tolist() == list(range(8))
    data = tmp_path / "inject.jsonl"
    data.write_text(json.dumps({"prompt": "=HYPERLINK(\"http://x\")", "responses": ["=cmd|' /C calc'!A0", "@SUM(1)"],
                                "ranks": [1, 2]}) + "\n"
                    + json.dumps({"prompt": "q", "responses": ["a"], "ranks": [1]}) + "\n")
    out = tmp_path / "pairs.csv"
    assert main(["eval", str(data), "--model", str(tiny_model_dir), "--pairs-csv", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 2 rows" in err and "only one response" in err  # eval says what it skipped
    cells = [cell for row in pd.read_csv(out, dtype=str, keep_default_na=False).itertuples(index=False)
             for cell in row]
    assert not any(cell.startswith(("=", "+", "@", "\t", "\r")) for cell in cells)
    assert "'=cmd|' /C calc'!A0" in cells


def test_any_failure_on_a_page_is_one_readable_message():
    from streamlit.testing.v1 import AppTest

    def page():
        from app.ui import user_errors

        with user_errors("Reading failed"):
            raise RuntimeError("deep inside /srv/secret/site-packages/x.py")

    at = AppTest.from_function(page).run()
    assert not at.exception
    shown = at.error[0].value.replace("\\", "")  # the page escapes markdown
    assert shown.startswith("Reading failed: unexpected error (RuntimeError") and "server log" in shown


def test_the_data_page_shows_any_upload_failure_as_one_message(tiny_model_dir, tmp_path, monkeypatch):
    import gzip

    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("RMCORE_APP_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RMCORE_MAX_DATA_MB", "1")
    at = AppTest.from_file(str(root / "app" / "main.py"), default_timeout=60).run()
    bomb = gzip.compress(b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n' * 100_000)  # 4.8 MB inflated
    at.get("file_uploader")[0].set_value(("bomb.jsonl.gz", bomb, "application/gzip"))
    at.run()
    assert not at.exception
    assert "bomb.jsonl.gz: over 1 MB once decompressed" in at.error[0].value.replace("\\", "")

    def broken_reader(raw, name):
        raise KeyError("/srv/site-packages/somewhere")

    monkeypatch.setattr("rmcore.data.formats.read_bytes", broken_reader)
    at.get("file_uploader")[0].set_value(("odd.jsonl", b'{"prompt": "q"}\n', "application/json"))
    at.run()
    assert not at.exception and len(at.error) == 1
    shown = at.error[0].value.replace("\\", "")
    assert shown.startswith("odd.jsonl: unexpected error (KeyError") and "Traceback" not in shown
