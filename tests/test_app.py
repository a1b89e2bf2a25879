"""The Streamlit app through streamlit.testing's AppTest, on a tiny random model (no download, seconds each).

Every page renders without an exception and shows its key widgets; the main flow (demo data, a
short head-mode training, probe, evaluate, export) works; upload errors are messages, not
tracebacks; sessions are isolated; one training job runs per server; the model picker stays in the
models folder. The app's pure pieces (charts, settings) and the two rmcore modules it added
(estimate, generate) are tested directly.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the app is a folder of the project, not an installed package
    sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402

from app import charts, jobs, settings  # noqa: E402
from rmcore.data import demo_data_path, read_preferences  # noqa: E402

APP = str(ROOT / "app" / "main.py")
PAGES = [
    "views/data.py",
    "views/train.py",
    "views/probe.py",
    "views/evaluate.py",
    "views/learn.py",
    "views/export.py",
]
TIMEOUT = 60  # seconds per script run: generous for a loaded 2-core CI machine; runs take well under 1 s


@pytest.fixture()
def app_env(tiny_model_dir, tmp_path, monkeypatch):
    """Point the app at the tiny model and private folders; give each test a fresh job manager."""
    models = tmp_path / "models"
    monkeypatch.setenv("RMCORE_APP_BASE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_APP_GENERATOR", str(tiny_model_dir))
    monkeypatch.setenv("RMCORE_MODELS_DIR", str(models))
    monkeypatch.setenv("RMCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RMCORE_DEVICE", "cpu")
    manager = jobs.JobManager()
    monkeypatch.setattr(jobs, "_MANAGER", manager)
    yield models
    job = manager.current()
    if job is not None:  # never leave a training thread running into the next test
        job.stop()
        job.wait(60)


def new_session() -> AppTest:
    return AppTest.from_file(APP, default_timeout=TIMEOUT).run()


def open_page(at: AppTest, page: str) -> AppTest:
    return at.switch_page(page).run()


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.message for e in at.exception]


def plotly_specs(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page, by their element key suffix, as parsed JSON."""
    out = {}
    for element in at.get("plotly_chart"):
        out[element.proto.id] = json.loads(element.proto.spec)
    return out


def by_key(specs: dict[str, dict], key: str) -> dict:
    matches = [spec for element_id, spec in specs.items() if element_id.endswith(f"-{key}")]
    assert matches, f"no chart {key!r} in {list(specs)}"
    return matches[0]


def load_demo(at: AppTest) -> AppTest:
    open_page(at, "views/data.py")
    at.button(key="load_demo").click().run()
    no_exception(at)
    return at


def train_head(at: AppTest, name: str = "demo-head", epochs: int = 3) -> None:
    open_page(at, "views/train.py")
    at.radio(key="train_mode").set_value("head")
    at.number_input(key="train_epochs").set_value(epochs)
    at.text_input(key="train_name").input(name)
    train_to_the_end(at)
    at.run()


def train_to_the_end(at: AppTest, timeout_s: float = 120) -> None:
    """Start training with the Train form as it is filled in, and wait until the job is done."""
    at.run()
    at.button(key="start_training").click().run()
    no_exception(at)
    job = jobs.manager().current()
    assert job is not None and job.wait(timeout_s), "training did not finish"
    snap = job.snapshot()
    assert snap.status == "done", snap.error


# ----------------------------------------------------------------------------- every page


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_without_data(app_env, page):
    at = open_page(new_session(), page)
    no_exception(at)
    assert at.title, "every page has a title"


def test_pages_show_their_key_widgets_without_data(app_env):
    at = new_session()
    assert at.get("file_uploader") and at.button(key="load_demo")
    assert any("Upload a file" in i.value for i in at.info)
    open_page(at, "views/train.py")
    assert at.button(key="train_demo"), "Train offers the demo set when no data is loaded"
    open_page(at, "views/probe.py")
    no_exception(at)
    assert at.text_area(key="probe_prompt").value
    assert len([t for t in at.text_area if t.key and t.key.startswith("cand_")]) == 3
    assert at.selectbox(key="probe_model").value.startswith("untrained:")
    assert not at.get("plotly_chart"), "nothing is scored before the user asks"
    at.button(key="probe_score").click().run()
    assert any("untrained" in w.value for w in at.warning)
    assert len(at.get("plotly_chart")) == 3  # rewards, heatmap, token trace
    open_page(at, "views/evaluate.py")
    assert at.radio(key="eval_source").options == ["a file I upload"]
    open_page(at, "views/learn.py")
    assert at.slider(key="learn_r1") and at.slider(key="learn_r2")
    assert at.metric[1].value == "0.731"  # sigma(1.5 - 0.5)
    open_page(at, "views/export.py")
    assert any("No trained model yet" in i.value for i in at.info)


# ----------------------------------------------------------------------------- Data


def test_demo_data_report_preview_and_download(app_env):
    at = load_demo(new_session())
    metrics = {m.label: m.value for m in at.metric}
    report = read_preferences(demo_data_path()).report
    assert metrics["Instructions"] == str(report.prompts) and metrics["Comparisons"] == str(
        report.comparisons
    )
    assert metrics["Skipped rows"] == "0"
    assert at.dataframe[0].value.shape[0] == report.prompts  # the preview (no skipped-rows table here)
    assert at.get("download_button"), "the edited set can be downloaded"
    assert "58 instructions" in at.sidebar.caption[-1].value


def test_rerank_exclude_and_add_a_better_response(app_env):
    at = load_demo(new_session())
    from app import state

    def data():
        return at.session_state[state.DATA_KEY]

    group = data().groups[0]
    uid = data().uid  # widget keys carry the data set's id, so a new file never inherits old edits
    k = len(group.responses)
    # re-rank: swap the best and the worst of instruction 1
    best, worst = group.ranks.index(1), group.ranks.index(max(r for r in group.ranks if r is not None))
    at.number_input(key=f"rank_{uid}_0_0_{best}").set_value(group.ranks[worst])
    at.number_input(key=f"rank_{uid}_0_0_{worst}").set_value(1)
    at.run()
    no_exception(at)
    new = data().groups[0]
    assert new.ranks[worst] == 1 and 0 in data().edited
    # a better response becomes rank 1; every ranked one moves down
    before = list(new.ranks)
    at.text_area(key=f"better_{uid}_0_0_None").input(
        "Blot it, rinse it cold from the back, then wash with detergent."
    )
    at.run()
    at.button(key=f"add_best_{uid}_0").click().run()
    no_exception(at)
    edited = data().groups[0]
    assert len(edited.responses) == k + 1 and edited.ranks[0] == 1
    assert edited.ranks[1:] == [None if r is None else r + 1 for r in before]
    # too hard to rank: excluded from training and from the download
    at.checkbox(key=f"too_hard_{uid}_0").check().run()
    no_exception(at)
    assert 0 in data().excluded and len(data().active()) == 57
    assert any("1 marked too hard to rank" in m.value for m in at.markdown)


def test_a_rank_can_be_cleared_to_unranked_and_a_new_best_renumbers_densely(app_env):
    at = load_demo(new_session())
    data = at.session_state["rm_data"]
    ranks = list(data.groups[0].ranks)
    worst = ranks.index(max(r for r in ranks if r is not None))
    at.number_input(key=f"rank_{data.uid}_0_0_{worst}").set_value(None).run()
    no_exception(at)
    assert at.session_state["rm_data"].groups[0].ranks[worst] is None
    at.text_area(key=f"better_{data.uid}_0_0_None").input("A better answer than all of these.")
    at.run()
    at.button(key=f"add_best_{data.uid}_0").click().run()
    edited = at.session_state["rm_data"].groups[0].ranks
    assert edited[0] == 1 and edited[worst + 1] is None
    ranked = sorted({r for r in edited if r is not None})
    assert ranked == list(range(1, len(ranked) + 1)), f"ranks with gaps: {edited}"


def test_a_new_file_does_not_inherit_the_edits_made_to_the_last_one(app_env):
    at = load_demo(new_session())
    old = at.session_state["rm_data"]
    at.number_input(key=f"rank_{old.uid}_0_0_0").set_value(9).run()
    assert at.session_state["rm_data"].groups[0].ranks[0] == 9
    at.button(key="load_demo").click().run()  # the same file again is a new data set with its own widgets
    no_exception(at)
    fresh = at.session_state["rm_data"]
    assert (
        fresh.uid != old.uid and fresh.groups[0].ranks == read_preferences(demo_data_path()).groups[0].ranks
    )
    assert not fresh.edited


def test_upload_errors_are_messages_not_tracebacks(app_env):
    at = new_session()
    at.get("file_uploader")[0].upload("broken.jsonl", b'{"prompt": "hi", "chosen": "a"\n', "application/json")
    at.run()
    no_exception(at)
    assert len(at.error) == 1
    message = at.error[0].value.replace("\\", "")  # the page escapes markdown in messages
    assert message.startswith("broken.jsonl:1") and "Traceback" not in message
    at.get("file_uploader")[0].set_value(("empty.csv", b"", "text/csv"))
    at.run()
    no_exception(at)
    assert at.error[0].value.replace("\\", "") == "empty.csv: the file is empty"


def test_an_upload_over_the_limit_is_refused(app_env, monkeypatch):
    monkeypatch.setenv("RMCORE_APP_MAX_UPLOAD_MB", "1")
    at = new_session()
    big = (json.dumps({"prompt": "p", "chosen": "a" * 1000, "rejected": "b"}) + "\n").encode() * 1200
    at.get("file_uploader")[0].set_value(("big.jsonl", big, "application/json"))
    at.run()
    no_exception(at)
    assert "over the 1 MB upload limit" in at.error[0].value


def test_a_tidy_csv_upload_is_read_and_user_text_stays_text(app_env):
    hostile = (
        "<script>alert('x')</script><b>bold?</b> [link](http://example.com) ![img](http://example.com/i.png)"
    )
    csv_text = (
        f'prompt,response,rank\n"{hostile}",good answer,1\n"{hostile}",bad answer,2\n'
        f'"{hostile}",<img src=x onerror=alert(1)>,\n'
    )
    at = new_session()
    name = "![img](http://example.com/i.png) :red[x] $y$.csv"  # a file name is user text too
    at.get("file_uploader")[0].set_value((name, csv_text.encode(), "text/csv"))
    at.run()
    no_exception(at)
    assert not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Instructions"] == "1" and metrics["Unranked"] == "1"
    # the instruction is shown verbatim in a text element, never as markdown or HTML
    assert any(t.value == hostile for t in at.text)
    assert not any(hostile in m.value for m in at.markdown)
    assert not [m for m in at.markdown if m.proto.allow_html]
    assert not at.get("html")
    shown = (
        [m.value for m in at.markdown] + [c.value for c in at.caption] + [c.value for c in at.sidebar.caption]
    )
    assert any(r"\!\[img\]\(http\:" in v for v in shown), "the file name is shown, escaped"
    assert not any("![img](" in v or ":red[" in v for v in shown)
    for source in (ROOT / "app").rglob("*.py"):
        assert "unsafe_allow_html" not in source.read_text(), source


# ----------------------------------------------------------------------------- the main flow


def test_main_flow_demo_train_probe_evaluate_export(app_env):
    at = load_demo(new_session())
    train_head(at, "demo-head", epochs=3)
    no_exception(at)
    assert any(s.value.startswith("Finished: demo-head") for s in at.subheader)
    curves = by_key(plotly_specs(at), "curves")
    names = {trace.get("name") for trace in curves["data"]}
    assert {"train (each step)", "train (smoothed)", "held-out"} <= names
    held = [t for t in curves["data"] if t.get("name") == "held-out"]
    assert len(held[0]["x"]) == 4  # before training and after each of the 3 epochs
    folder = app_env / "demo-head"
    assert (folder / "model.safetensors.index.json").is_file() and (folder / jobs.HELD_OUT_FILE).is_file()

    # Probe: the new model is picked by default; rewards, the heatmap of sigma(r_i - r_j), a token trace
    open_page(at, "views/probe.py")
    no_exception(at)
    assert at.selectbox(key="probe_model").value == "trained:demo-head"
    assert any("learned from only" in i.value for i in at.info), "a model trained on the demo set is called weak"
    at.button(key="probe_score").click().run()
    assert not at.warning, "a trained model gives no untrained-head warning"
    assert at.success[0].value.startswith("Highest reward: candidate #")
    specs = plotly_specs(at)
    heatmap = by_key(specs, "pref_heatmap")["data"][0]
    assert heatmap["type"] == "heatmap" and len(heatmap["z"]) == 3
    assert heatmap["customdata"][0][1].startswith("P(#1 preferred over #2) = ")
    assert abs(heatmap["z"][0][1] + heatmap["z"][1][0] - 1) < 1e-6
    assert any("sigma" in latex.value for latex in at.latex)
    bars = by_key(specs, "reward_bars")["data"][0]
    assert bars["x"] == sorted(bars["x"])  # sorted: the highest reward drawn on top
    # add and remove candidates within 2..9
    at.button(key="add_candidate").click().run()
    assert len([t for t in at.text_area if t.key.startswith("cand_")]) == 4
    for _ in range(2):
        remove = [b for b in at.button if b.key and b.key.startswith("remove_")]
        remove[0].click().run()
    cands = [t for t in at.text_area if t.key.startswith("cand_")]
    assert len(cands) == 2 and all(b.disabled for b in at.button if b.key and b.key.startswith("remove_"))

    # Evaluate on the held-out prompts saved with the model
    open_page(at, "views/evaluate.py")
    assert at.radio(key="eval_source").value == "held-out prompts saved with this model"
    at.button(key="run_eval").click().run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert 0 <= float(metrics["Pairwise accuracy"].split()[0]) <= 1
    assert {"rank_gap", "calibration", "histograms", "length"} <= {
        k
        for k in ("rank_gap", "calibration", "histograms", "length")
        if any(k in i for i in plotly_specs(at))
    }
    assert at.dataframe[-1].value.shape[0] > 0  # the worst pairs

    # Export: a zip of the folder and the pipeline lines
    open_page(at, "views/export.py")
    no_exception(at)
    assert at.get("download_button")
    assert any('function_to_apply="none"' in c.value and ".render(" in c.value for c in at.code)
    assert any("## Held-out results" in m.value for m in at.markdown), "the model card is shown"
    from app.files import zip_folder

    with zipfile.ZipFile(io.BytesIO(zip_folder(folder, include_checkpoint=False))) as archive:
        names = set(archive.namelist())
    assert {"demo-head/config.json", "demo-head/model.safetensors.index.json", "demo-head/rmcore.json",
            "demo-head/model-00001-of-00002.safetensors", "demo-head/model-00002-of-00002.safetensors"} <= names


def test_generate_candidates_replaces_them_and_picks_the_best_of_n(app_env):
    at = open_page(new_session(), "views/probe.py")
    at.slider(key="gen_n").set_value(3)
    at.slider(key="gen_tokens").set_value(16)
    at.run()
    at.button(key="generate").click().run()
    no_exception(at)
    cands = [t for t in at.text_area if t.key.startswith("cand_")]
    assert len(cands) == 3
    assert at.success[0].value.startswith("Best of 3: candidate #")


def test_widget_values_survive_a_visit_to_another_page(app_env):
    at = load_demo(new_session())
    open_page(at, "views/probe.py")
    at.text_area(key="probe_prompt").input("My own question")
    at.text_area(key="cand_1").input("My own answer")
    at.run()
    open_page(at, "views/train.py")
    at.number_input(key="train_epochs").set_value(7)
    at.radio(key="train_mode").set_value("lora")
    at.text_input(key="train_name").input("special")
    at.run()
    open_page(at, "views/learn.py")
    at.slider(key="learn_r1").set_value(-2.0).run()
    open_page(at, "views/probe.py")
    no_exception(at)
    assert at.text_area(key="probe_prompt").value == "My own question"
    assert at.text_area(key="cand_1").value == "My own answer"
    open_page(at, "views/train.py")
    assert (at.number_input(key="train_epochs").value, at.radio(key="train_mode").value,
            at.text_input(key="train_name").value) == (7, "lora", "special")
    open_page(at, "views/learn.py")
    assert at.slider(key="learn_r1").value == -2.0
    assert not at.warning, [w.value for w in at.warning]  # no "value set twice" warnings


def test_trainable_blocks_reach_the_training_and_are_off_in_head_mode(app_env):
    at = load_demo(new_session())
    open_page(at, "views/train.py")
    assert at.radio(key="train_mode").value == "auto", "the default: head, then the top blocks when a pass fits"
    assert not at.number_input(key="train_trainable_layers").disabled, "auto's second stage trains blocks"
    at.radio(key="train_mode").set_value("head").run()
    assert at.number_input(key="train_trainable_layers").disabled, "head mode trains no blocks"
    at.radio(key="train_mode").set_value("lora")
    at.radio(key="train_how").set_value("epochs").run()
    assert not at.number_input(key="train_trainable_layers").disabled
    at.number_input(key="train_trainable_layers").set_value(1)
    at.number_input(key="train_epochs").set_value(1)
    at.text_input(key="train_name").input("top-block")
    train_to_the_end(at, timeout_s=180)
    meta = json.loads((app_env / "top-block" / "rmcore.json").read_text())
    assert meta["config"]["trainable_layers"] == 1 and meta["config"]["mode"] == "lora"


def test_probe_keeps_the_form_numbers_when_a_candidate_is_empty(app_env):
    at = open_page(new_session(), "views/probe.py")
    at.button(key="probe_score").click().run()
    at.text_area(key="cand_1").input("")
    at.run()
    no_exception(at)
    assert any("#2 is empty and left out" in c.value for c in at.caption)
    specs = plotly_specs(at)
    assert sorted(by_key(specs, "pref_heatmap")["data"][0]["x"]) == ["#1", "#3"]
    labels = by_key(specs, "reward_bars")["data"][0]["y"]
    assert sorted(label.split()[0] for label in labels) == ["#1", "#3"]
    assert any(label.startswith("#3 idk") for label in labels)
    assert at.success[0].value.split("candidate ")[1][:2] in ("#1", "#3")
    assert not any("lost" in w.value for w in at.warning)
    at.text_area(key="cand_2").input("very long " * 400)
    at.run()
    assert any("candidate #3 lost its end" in w.value for w in at.warning)


def test_a_run_stopped_before_its_first_step_says_nothing_was_saved(app_env, monkeypatch):
    start = jobs.TrainingJob.start
    monkeypatch.setattr(jobs.TrainingJob, "start", lambda job: (job.stop(), start(job)))  # Stop at once
    at = load_demo(new_session())
    open_page(at, "views/train.py")
    at.text_input(key="train_name").input("never-trained")
    at.run()
    at.button(key="start_training").click().run()
    job = jobs.manager().current()
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "stopped" and not snap.saved and not snap.steps, snap.phase
    assert not (app_env / "never-trained").exists()
    at.run()
    no_exception(at)
    assert any(s.value.startswith("Stopped: never-trained") for s in at.subheader)
    assert not at.success and any("nothing was" in i.value for i in at.info)
    assert not at.get("page_link"), "no links to a model that does not exist"


def test_probe_scores_a_file_of_unranked_answers_and_offers_the_lines(app_env):
    at = open_page(new_session(), "views/probe.py")
    rows = [{"prompt": "Name a fruit", "responses": ["Apple", "A car", "Pear"]},
            {"prompt": "Say hi", "responses": ["Hello!"]},
            {"prompt": "2 + 2?", "responses": ["4", "5"]}]
    raw = "".join(json.dumps(r) + "\n" for r in rows).encode()
    uploader = next(u for u in at.get("file_uploader") if u.proto.id.endswith("score_upload"))
    uploader.set_value(("samples.jsonl", raw, "application/json"))
    at.run()
    no_exception(at)
    at.button(key="score_file").click().run()
    no_exception(at)
    table = at.dataframe[-1].value  # the page's only table
    assert list(table["K"]) == [3, 1, 2]
    assert list(table["best answer"])[1] == "Hello!"
    assert at.get("download_button"), "the scored lines can be downloaded"
    uploader = next(u for u in at.get("file_uploader") if u.proto.id.endswith("score_upload"))
    uploader.set_value(("broken.jsonl", b"{not json}\n", "application/json"))
    at.run()
    no_exception(at)
    assert any(e.value.replace("\\", "").startswith("broken.jsonl:1") for e in at.error)


# ----------------------------------------------------------------------------- one job per server, sessions


def test_second_session_sees_the_running_job_and_stop_keeps_a_checkpoint(app_env):
    owner = load_demo(new_session())
    open_page(owner, "views/train.py")
    owner.radio(key="train_mode").set_value("full")
    owner.radio(key="train_how").set_value("epochs").run()  # a budget would fit the run to its minutes
    owner.number_input(key="train_epochs").set_value(200)
    owner.number_input(key="train_batch").set_value(1)
    owner.text_input(key="train_name").input("long-run")
    owner.run()
    owner.button(key="start_training").click().run()
    no_exception(owner)
    job = jobs.manager().current()
    assert job is not None and job.snapshot().active

    other = new_session()
    assert "rm_data" not in other.session_state, "a new session starts without the other's data"
    other = load_demo(other)
    open_page(other, "views/train.py")
    no_exception(other)
    assert any("another browser session" in i.value for i in other.info)
    assert other.button(key="start_training").disabled
    assert not [b for b in other.button if b.key == "stop_job"], "only the owner can stop it"
    # asking anyway (e.g. two tabs racing) gets a clear refusal, not a second job
    with pytest.raises(jobs.JobBusy, match="already running"):
        jobs.manager().start(job.request, "someone-else")

    # the owner stops it: a checkpoint and the model so far are kept
    for _ in range(200):  # wait until it has taken a step
        if job.snapshot().steps:
            break
        job.wait(0.1)
    owner.run()
    owner.button(key="stop_job").click().run()
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "stopped", snap.error
    folder = app_env / "long-run"
    assert (folder / "checkpoint" / "state.json").is_file() and (folder / "model.safetensors").is_file()
    owner.run()
    assert any(s.value.startswith("Stopped: long-run") for s in owner.subheader)
    open_page(other, "views/train.py")
    assert not other.button(key="start_training").disabled
    assert not any(s.value.startswith("Stopped") for s in other.subheader), (
        "another session's run stays private"
    )


def test_two_sessions_keep_their_own_data(app_env):
    first = load_demo(new_session())
    first.checkbox(key=f"too_hard_{first.session_state['rm_data'].uid}_0").check().run()
    second = new_session()
    assert "rm_data" not in second.session_state
    second = load_demo(second)
    assert second.session_state["rm_data"].excluded == set()
    assert first.session_state["rm_data"].excluded == {0}
    assert first.session_state["rm_data"].groups[0] is not second.session_state["rm_data"].groups[0]


# ----------------------------------------------------------------------------- settings, charts, config


def test_model_picker_stays_inside_the_models_folder(app_env, tiny_model_dir, tmp_path):
    models = settings.models_dir()
    assert models == app_env.resolve()
    for bad in ("../x", "..", "/etc", "a/b", ".hidden", "", "x" * 200):
        with pytest.raises(ValueError):
            settings.model_path(bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    (models / "link").symlink_to(outside)
    with pytest.raises(ValueError):
        settings.model_path("link")
    pickled = models / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    (models / "half-written").mkdir()
    assert settings.list_models() == []
    assert settings.clean_model_name("  my model/../v1 ") == "my-model-..-v1"


def test_charts_escape_user_text_and_say_what_cells_mean():
    assert charts.plain("<b>x</b> & y\n z") == "&lt;b&gt;x&lt;/b&gt; &amp; y z"
    assert charts.token_label(" a\n") == "·a⏎"
    fig = charts.preference_heatmap([[0.5, 0.8], [0.2, 0.5]], ["a", "b"])
    assert fig.data[0].customdata[1][0] == "P(#2 preferred over #1) = 0.200"
    bars = charts.reward_bars(["<i>low</i>", "high"], [-1.0, 2.0], best=1)
    assert list(bars.data[0].x) == [-1.0, 2.0] and "&lt;i&gt;" in bars.data[0].y[0]
    assert "%{" not in "".join(bars.data[0].customdata)
    curves = charts.training_curves(
        [{"step": i, "loss": 1 / i, "accuracy": 0.5, "margin": 0.1} for i in range(1, 5)],
        [{"step": 0, "eval_loss": 0.7, "eval_accuracy": 0.5, "eval_margin": 0.0}],
    )
    assert len(curves.data) == 10  # 3 panels x (each step, smoothed, held-out) + the chance line's legend entry
    assert any(t.name.startswith("chance") for t in curves.data)
    assert curves.layout.xaxis.dtick == 1, "a 4-step run gets whole-step ticks"
    trace = charts.token_trace(["Hi", " there", "<|im_end|>"], [0.1, 0.5, 0.2])
    assert [round(v, 6) for v in trace.data[2].y] == [0.1, 0.4, -0.3]
    assert charts.smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])


def test_server_config_keeps_xsrf_on_binds_localhost_and_limits_uploads():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["enableXsrfProtection"] is True and server["address"] == "localhost"
    assert server["maxUploadSize"] == settings.upload_limit_mb() == 50
    assert server["headless"] is True


LOAD_IN_THREADS = """
import sys, threading
sys.path.insert(0, sys.argv[1])
import app.resources
app.resources.ensure_ml()  # what every path of the app that loads a model or starts training calls first
from rmcore.model.reward_model import load_sequence_classifier, load_tokenizer
errors = []
def load(how):
    try:
        how(sys.argv[2])
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=load, args=(how,)) for how in (load_tokenizer, load_sequence_classifier) * 2]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
sys.exit(1 if errors else 0)
"""


def test_models_loaded_by_two_threads_at_once_in_a_fresh_app_process(tiny_model_dir):
    """A page and a training job (or two sessions) may load a model at the same moment; transformers'
    lazy names fail to import when two threads resolve them first at once, unless the app did it."""
    import subprocess

    ran = subprocess.run([sys.executable, "-c", LOAD_IN_THREADS, str(ROOT), str(tiny_model_dir)],
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr[-2000:]


# ------------------------------------------------------------------- rmcore modules added for the app


def test_estimate_times_one_batch_and_scales_with_epochs(tiny_model_dir, private_cache):
    from rmcore.data import split_groups
    from rmcore.training.estimate import estimate_training_time, format_duration, measure_rates
    from rmcore.training.train import TrainConfig

    train_groups, eval_groups = split_groups(read_preferences(demo_data_path()).groups, 0.2)
    for mode in ("head", "full"):
        config = TrainConfig(model=str(tiny_model_dir), mode=mode, epochs=2, max_length=128)
        rates = measure_rates(config, train_groups)
        assert rates.forward_s_per_token > 0 and (rates.train_s_per_token > 0) == (mode != "head")
        two = estimate_training_time(config, train_groups, eval_groups, rates=rates)
        config.epochs = 4
        four = estimate_training_time(config, train_groups, eval_groups, rates=rates)
        assert two.seconds > 0 and two.steps * 2 == four.steps and four.seconds > two.seconds
        assert two.describe().startswith("about ")
    assert format_duration(75) == "1 min 15 s" and format_duration(3) == "3 s"


def test_the_plan_preview_promises_the_top_blocks_the_model_has_only_when_a_pass_fits(tiny_model_dir, private_cache):
    from dataclasses import replace

    from rmcore.data import split_groups
    from rmcore.data.encoding import encode_groups
    from rmcore.model.reward_model import load_tokenizer
    from rmcore.training.estimate import measure_rates, plan_for
    from rmcore.training.train import TrainConfig

    train_groups, eval_groups = split_groups(read_preferences(demo_data_path()).groups, 0.2)
    config = TrainConfig(model=str(tiny_model_dir), mode="auto", time_budget_s=600, max_length=128)
    rates = measure_rates(config, train_groups)
    assert rates.blocks == 2
    assert plan_for(config, train_groups, eval_groups, rates=rates).then_top_blocks == 2, "4 clamped to 2 blocks"
    tokens = sum(g.num_tokens for g in encode_groups(load_tokenizer(str(tiny_model_dir)), train_groups + eval_groups,
                                                     128))
    slow = replace(rates, forward_s_per_token=0.75 * 600 / tokens)  # the features take three quarters of it
    assert plan_for(config, train_groups, eval_groups, rates=slow).then_top_blocks == 0, \
        "features that fill most of the budget leave no pass of the top blocks to promise"


def test_generate_samples_n_answers_and_best_of_n_takes_the_highest_reward(tiny_model_dir):
    from rmcore.model.reward_model import RewardModel
    from rmcore.policy.generate import Generator, best_of_n

    generator = Generator(tiny_model_dir, device="cpu")
    first = generator.sample("Name a prime number", 3, max_new_tokens=8, seed=1)
    assert len(first) == 3 and all(isinstance(t, str) for t in first)
    assert generator.sample("Name a prime number", 3, max_new_tokens=8, seed=1) == first  # reproducible
    result = best_of_n(
        generator, RewardModel.load(tiny_model_dir, device="cpu"), "Name a prime", n=4, max_new_tokens=8
    )
    assert len(result.candidates) == 4
    assert result.score.best == max(range(4), key=result.score.rewards.__getitem__)


# ----------------------------------------------------------------------------- questioning the model (issue 17)


def test_probe_runs_the_counterfactual_edits_with_the_users_wrong_facts(app_env):
    at = open_page(new_session(), "views/probe.py")
    at.button(key="probe_score").click().run()
    no_exception(at)
    assert any("`·` stands for that space" in c.value for c in at.caption), "the token trace has a legend"
    wrong_area = next(t for t in at.text_area if t.key.startswith("probe_wrong_"))
    wrong_area.input("Eggs peel best after boiling for three hours in salt water; every chef knows this.")
    at.run()
    at.button(key="run_probes").click().run()
    no_exception(at)
    table = at.dataframe[0].value
    assert len(table) == 7 and "wrong facts in a confident tone (your edit)" in set(table["edit"])
    assert any("standard deviation" in c.value and "demo set" in c.value for c in at.caption)
    deltas = by_key(plotly_specs(at), "probe_deltas")["data"][0]
    assert len(deltas["x"]) == 7 and deltas["x"] == sorted(deltas["x"])


def test_evaluate_compares_two_models_and_reports_length_and_categories(app_env):
    at = open_page(new_session(), "views/evaluate.py")
    at.toggle(key="eval_compare").set_value(True).run()
    rows = [{"prompt": f"q{i}", "chosen": "a long and careful answer " * (1 + i % 3), "rejected": "short",
             "subset": "chat" if i % 2 else "math"} for i in range(8)]
    uploader = next(u for u in at.get("file_uploader") if u.proto.id.endswith("eval_upload"))
    uploader.set_value(("bench.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode(), "application/json"))
    at.run()
    at.button(key="run_eval").click().run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Longer answer wins"].startswith("1.000")
    assert "±" in metrics["Pairwise accuracy"]
    assert metrics["B − A"] == "+0.000" and metrics["Pick the same answer"] == "100%"  # the same model twice
    categories = next(d.value for d in at.dataframe if "category" in d.value.columns)
    assert sorted(categories["category"]) == ["chat", "math"]
    worst = next(d.value for d in at.dataframe if "model agrees" in d.value.columns)
    assert set(worst["model agrees"]) <= {"✓ yes", "✗ no"}, "plain text, not checkboxes that look editable"
    charts_shown = list(plotly_specs(at))
    assert all(any(key in i for i in charts_shown) for key in ("baselines", "difference"))


def test_a_stopped_run_resumes_from_the_app_also_after_a_server_restart(app_env, monkeypatch):
    owner = load_demo(new_session())
    open_page(owner, "views/train.py")
    assert owner.radio(key="train_how").value == "time budget", "the app trains to a time budget by default"
    owner.radio(key="train_mode").set_value("full")
    owner.radio(key="train_how").set_value("epochs").run()
    owner.number_input(key="train_epochs").set_value(2)
    owner.number_input(key="train_batch").set_value(2)
    owner.text_input(key="train_name").input("paused")
    owner.run()
    owner.button(key="start_training").click().run()
    job = jobs.manager().current()
    for _ in range(1200):  # stop once it has taken a step (minutes on a loaded machine)
        if job.snapshot().steps:
            break
        job.wait(0.1)
    jobs.manager().stop(job.owner)
    assert job.wait(120) and job.snapshot().status == "stopped"
    folder = app_env / "paused"
    assert jobs.resumable(folder), "a stopped run keeps its training prompts beside its checkpoint"

    # the server restarts: the run is offered from the models folder, and resumes to the end
    monkeypatch.setattr(jobs, "_MANAGER", jobs.JobManager())
    fresh = load_demo(new_session())
    open_page(fresh, "views/train.py")
    no_exception(fresh)
    assert fresh.selectbox(key="train_resume_pick").value == "paused"
    fresh.button(key="resume_stopped").click().run()
    no_exception(fresh)
    resumed = jobs.manager().current()
    assert resumed is not None and resumed.wait(180)
    snap = resumed.snapshot()
    assert snap.status == "done", snap.error
    meta = json.loads((folder / "rmcore.json").read_text())
    assert not meta["stopped"] and meta["steps"] == meta["total_steps"]
    assert not (folder / "checkpoint").exists() and not (folder / jobs.TRAIN_DATA_FILE).exists()
    assert (folder / jobs.HELD_OUT_FILE).is_file()


# ----------------------------------------------------------------------------- a new user's problems (issue 25)

VALUE_WIDGETS = {"text_area", "text_input", "number_input", "selectbox", "radio", "slider", "checkbox", "toggle",
                 "select_slider", "multiselect"}


def test_every_value_widget_keeps_its_value_across_pages():
    """What a person types or chooses survives a visit to another page in a real browser only when the widget
    says persist_state="session" (Streamlit drops an undrawn widget's value, and a widget drawn again shows its
    default in the browser however the server kept it: AppTest never saw that). tests/e2e reads them back."""
    import ast

    missing = []
    for source in sorted((ROOT / "app").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in VALUE_WIDGETS:
                keywords = {k.arg: k.value for k in node.keywords}
                persist = keywords.get("persist_state")
                if "key" not in keywords or not (isinstance(persist, ast.Constant) and persist.value == "session"):
                    missing.append(f"{source.relative_to(ROOT)}:{node.lineno} {node.func.attr}")
    assert not missing, missing


def test_train_page_shows_the_plan_a_time_budget_will_follow(app_env):
    at = load_demo(new_session())
    open_page(at, "views/train.py")
    no_exception(at)
    plan = "\n".join(m.value for m in at.markdown)
    assert "Trains in **head mode** on **all 344 training comparisons**" in plan
    assert "Evaluates on **all 40 held-out comparisons** (6 instructions)" in plan
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Planned time"].endswith(" of 5 min") and "Estimated time" not in metrics
    at.radio(key="train_how").set_value("epochs").run()
    assert "Estimated time" in {m.label for m in at.metric}, "a run of epochs gets the time estimate"


def test_train_page_says_when_nothing_useful_fits_and_does_not_start(app_env, monkeypatch):
    import rmcore.training.estimate as estimate

    real = estimate.plan_for

    def nothing_fits(*args, **kwargs):
        plan = real(*args, **kwargs)
        plan.fits, plan.train_prompts, plan.train_comparisons = False, 0, 0
        return plan

    monkeypatch.setattr(estimate, "plan_for", nothing_fits)
    at = load_demo(new_session())
    open_page(at, "views/train.py")
    no_exception(at)
    said = at.error[0].value
    assert said.startswith("Nothing useful fits: a 5 min budget fits 0 of 344 training comparisons in head mode")
    assert "Choose a longer time budget" in said and "--time-budget" not in said
    assert at.button(key="start_training").disabled


def test_the_plan_in_words_for_each_mode():
    from app.wording import plan_lines, refusal_text
    from rmcore.training.budget import Plan

    head = Plan("head", 300, 12, 301, 2354, 1205, 9416, 30, 235, 120, 942, 1, 40, {"features": 250}, 2460)
    lines = plan_lines(head)
    assert lines[0].startswith("Trains in **head mode** on **1,205 of the 9,416 training comparisons** (301 of "
                               "2,354 instructions")
    assert "**120 of the 942 held-out comparisons** (30 of 235 instructions, a random sample" in lines[1]
    assert len(lines) == 2, "head mode alone says nothing of top blocks"
    head.then_top_blocks = 4  # --mode auto
    assert plan_lines(head)[1] == ("Then, if the time left fits a pass, trains the **top 4 blocks** from the head's "
                                   "solution in the rest of the budget, and keeps whichever of the two scores "
                                   "better on the held-out prompts.")
    full = Plan("full", 300, 12, 52, 52, 1135, 344, 6, 6, 40, 40, 4, 43, {"training": 250}, 900)
    assert plan_lines(full)[0] == ("Trains in **full mode** on **43 steps: 3.3 passes over all 344 training "
                                   "comparisons**.")
    assert plan_lines(full)[1].endswith("(6 instructions), 4 times.")
    none_held = Plan("lora", 60, 12, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, {}, 30)
    assert plan_lines(none_held)[1].startswith("No held-out instructions")
    refused = Plan("full", 60, 40, 0, 52, 0, 344, 0, 6, 0, 40, 0, 0, {}, 2400, fits=False)
    assert refusal_text(refused).endswith("Choose a longer time budget, or try head mode")


def test_length_warning_says_not_significantly_better_with_the_interval_and_counts_right():
    from rmcore.analysis.evaluate import length_warning  # the app shows rmcore's text, as the CLI prints it

    s = {"accuracy": 0.825, "accuracy_se": 0.06, "length_agreement": 0.92,
         "length_correlation": 0.71, "length_baseline": {"accuracy": 0.725},
         "length_controlled": {"accuracy": 1.0, "se": 0.0, "comparisons": 1}}
    said = length_warning(s)
    assert "not significantly better than the 0.725" in said and "between 0.705 and 0.945" in said
    assert "On the 1 pair of similar length" in said and "1 pairs" not in said and "no better than" not in said
    s.update(accuracy=0.95, accuracy_se=0.01, length_controlled={"accuracy": 0.9, "se": 0.03, "comparisons": 30})
    assert "significantly better than the 0.725" in length_warning(s) and "30 pairs" in length_warning(s)
    s.update(length_agreement=0.5, length_correlation=0.1)
    assert length_warning(s) is None  # neither tracking length nor within two standard errors of it


def test_the_token_trace_says_the_reward_is_read_at_the_line_break_after_im_end():
    from app.wording import trace_legend

    said = trace_legend([" Boil", " it", ".", "<|im_end|>", "\n"])
    assert "here `⏎`, the line break after `<|im_end|>`" in said
    assert "TRL's RewardTrainer" in said and "pipeline read the same token" in said
    assert "here `.`" in trace_legend(["Fine", "."])


def test_best_of_n_says_when_every_pick_hit_the_token_limit():
    from app.wording import limit_summary

    records = [{"responses": ["a", "b"], "hit_limit": [True, False]},
               {"responses": ["c", "d"], "hit_limit": [False, True]}]
    kind, text = limit_summary(records, [[1.0, 0.0], [0.0, 2.0]], 48)
    assert kind == "warning" and text.startswith("Every pick hit the 48-token limit") and "all 2 prompts" in text
    kind, text = limit_summary(records, [[0.0, 1.0], [0.0, 2.0]], 48)
    assert kind == "caption" and text == "2 of 4 answers hit the 48-token limit (cut mid-answer); 1 of the 2 picks did."
    assert limit_summary([{"responses": ["a"], "hit_limit": [False]}], [[0.0]], 48) is None


def test_the_live_panel_shows_every_wait_with_a_bar_and_the_time_left():
    from types import SimpleNamespace

    from app.wording import progress_bar

    def snap(**kw):
        base = dict(active=True, status="starting", steps=[], phase="loading the base model", phase_progress=None,
                    phase_elapsed_s=4.0, expected_s={}, budget_s=0.0, elapsed_s=10.0, progress=0.0, step=0,
                    total_steps=0, eta_s=None, last={})
        return SimpleNamespace(**{**base, **kw})

    # a budget: the bar of elapsed against it carries a phase that reports no progress of its own
    [(value, text)] = progress_bar(snap(budget_s=300.0))
    assert value == 10 / 300 and text == "loading the base model… · 10 s of the 5 min budget · at most 4 min 50 s left"
    # rmcore's own progress and time left, then the budget
    bars = progress_bar(snap(budget_s=300.0, phase="computing trunk features (12/40), about 20 s left",
                             phase_progress=0.3))
    assert bars[0] == (0.3, "computing trunk features (12/40), about 20 s left…") and "budget" in bars[1][1]
    # no budget: the estimate made before the start, and plain words when it runs over
    [(value, text)] = progress_bar(snap(expected_s={"loading": 10.0}))
    assert value == 0.4 and text.endswith("4 s so far, about 6 s left")
    [(value, text)] = progress_bar(snap(expected_s={"loading": 2.0}))
    assert value == 0.95 and "longer than the 2 s estimated" in text
    # steps: the ETA never beyond what the budget leaves
    [steps, budget] = progress_bar(snap(status="running", steps=[{}], step=1, total_steps=130, eta_s=278.0,
                                        last={"epoch": 0.1}, budget_s=60.0, elapsed_s=5.0, progress=0.01))
    assert steps[1].endswith("5 s elapsed · ETA 55 s") and budget[1].endswith("at most 55 s left")


def test_a_wait_shows_the_time_left_and_learns_a_busy_machine():
    from app import waiting

    assert waiting.progress_text("Loading", 2.0, 8.0) == (0.25, "Loading: 2 s so far, about 6 s left")
    value, text = waiting.progress_text("Loading", 9.0, 8.0)
    assert value == 0.95 and "longer than the 8 s expected" in text
    assert waiting.wait_for(lambda: 42, "Nothing", 1.0, "test") == 42
    with pytest.raises(ValueError):
        waiting.wait_for(lambda: int("x"), "Nothing", 1.0, "test")


def test_a_head_only_download_is_offered_for_the_embedded_trunk_and_its_trunk_comes_back(app_env, tiny_model_dir,
                                                                                         tmp_path):
    """A head-mode model of the embedded model: the zip leaves out the trunk shard (the embedded weights), and its
    restore_trunk.py writes it back, checked by hash, to the same model (here the tiny model stands in)."""
    from app.files import (
        RESTORE_SCRIPT,
        embedded_head_model,
        head_only_extras,
        included,
        trunk_fingerprint,
        write_zip,
        zip_folder,
        zip_size,
    )
    from rmcore.model.reward_model import RewardModel
    from rmcore.model.shared_trunk import TRUNK_SHARD
    from rmcore.training.train import TrainConfig, train

    groups = read_preferences(demo_data_path()).groups[:8]
    folder = app_env / "emb-head"
    train(TrainConfig(model=str(tiny_model_dir), mode="head", epochs=1), groups, folder)
    meta = json.loads((folder / "rmcore.json").read_text())
    assert not embedded_head_model(folder, meta), "only where the trunk is the embedded model"
    meta["config"]["model"] = "embedded"
    (folder / "rmcore.json").write_text(json.dumps(meta))
    assert embedded_head_model(folder, meta)

    files = included(folder, head_only=True)
    extra = head_only_extras("emb-head", trunk_fingerprint(folder), (folder / TRUNK_SHARD).stat().st_size)
    buffer = io.BytesIO()
    write_zip(folder, files, buffer, extra)
    assert len(buffer.getvalue()) <= zip_size(files, extra), "the size on the button is an upper bound"
    whole = included(folder)
    assert 0.8 * zip_size(whole) < len(zip_folder(folder)) <= zip_size(whole), "and close: weights are stored"
    with zipfile.ZipFile(buffer) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    assert f"emb-head/{TRUNK_SHARD}" not in names and f"emb-head/{RESTORE_SCRIPT}" in names
    restored = tmp_path / "unzipped" / "emb-head"
    script = {}
    exec(compile((restored / RESTORE_SCRIPT).read_text(), RESTORE_SCRIPT, "exec"), script)
    script["restore"](restored, source=tiny_model_dir / "model.safetensors")
    before, after = RewardModel.load(folder, device="cpu"), RewardModel.load(restored, device="cpu")
    assert after.rewards("Hi", ["Hello!", "Go away."]) == before.rewards("Hi", ["Hello!", "Go away."])

    at = open_page(new_session(), "views/export.py")  # the page offers both, each with its size
    no_exception(at)
    assert at.selectbox(key="export_model").value == "trained:emb-head"
    at.radio(key="export_head_only").set_value("the head only").run()
    no_exception(at)
    assert at.get("download_button")[0].proto.label.startswith("Download emb-head-head-only.zip (")


def test_the_skipped_rows_table_has_one_row_per_skipped_row_and_their_reasons(app_env):
    lines = demo_data_path().read_bytes() + (
        b'{"prompt": "A question with only one answer", "responses": ["The only answer."], "ranks": [1]}\n'
        b'{"prompt": "A question nobody ranked", "responses": ["One.", "Two."], "ranks": [null, null]}\n')
    at = new_session()
    at.get("file_uploader")[0].set_value(("mine.jsonl", lines, "application/json"))
    at.run()
    no_exception(at)
    table = next(d.value for d in at.dataframe if "reason" in d.value.columns)
    assert list(table["where"]) == ["line 59", "line 60"]
    assert table["reason"][1].startswith("no response is ranked")
