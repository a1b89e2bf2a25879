"""`rmcore serve` as a client sees it: a real server in a subprocess on a free port, called over HTTP.

Every server runs the tiny random model, so the rewards mean nothing, but they must equal the
library's `RewardModel.score` for the same texts, whichever requests they were batched with.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from rmcore.cli import main as cli_main

MAX_LENGTH = 64  # small, so truncation is easy to reach
PROMPTS = ["How do I boil an egg?", "Name a prime number.", "Why is the sky blue?", "Explain bread, please.",
           "What is 2 + 2?", "Where is Paris?", "When does water boil?", "Which fox is quick?"]


class Server:
    """`rmcore serve` in a subprocess; `url` is read from the line it prints once it listens."""

    def __init__(self, model_dir: Path, *options: str):
        # one torch thread: the tiny model needs no more, and a busy CPU makes two threads wait for each other
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rmcore", "serve", "--model", str(model_dir), "--port", "0",
             "--max-length", str(MAX_LENGTH), *options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self.banner = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the server did not start: {self.process.stderr.read()}")
            self.banner.append(line)
            if match := re.search(r" on (http://\S+)$", line.strip()):
                self.url = match.group(1)
                break
        else:
            raise RuntimeError("the server printed no URL in 90 s")
        while not self.banner[-1].startswith("Ctrl-C"):  # the rest of the banner: endpoints, curl, notes
            self.banner.append(self.process.stdout.readline())

    def metric(self, name: str, headers: dict | None = None) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=headers).text
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture(scope="module")
def library(tiny_model_dir):
    from rmcore.model.reward_model import RewardModel

    return RewardModel.load(tiny_model_dir, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    # a long gathering window so concurrent test requests surely share a round; small limits to reach
    s = Server(tiny_model_dir, "--batch-wait-ms", "150", "--max-queue", "24", "--max-responses", "8",
               "--max-text-chars", "3000", "--max-body-mb", "0.05")
    yield s
    s.stop()


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol * (1 + abs(y)) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- /score and /get_reward


def test_banner_shows_the_url_and_a_curl_that_works(server):
    text = "".join(server.banner)
    assert server.url.startswith("http://127.0.0.1:")  # localhost unless told otherwise
    command = next(line.strip() for line in server.banner if line.strip().startswith("curl "))
    assert server.url in command and "/score" in command
    body = json.loads(re.search(r"-d '(.*)'$", command).group(1))
    assert httpx.post(f"{server.url}/score", json=body).status_code == 200
    assert "untrained" in text


def test_score_equals_the_library(server, library):
    long_prompt = "Tell me everything about eggs. " * 20  # cut from the left at max length 64
    cases = [
        ("How do I boil an egg?", ["Simmer it for 9 minutes, then cool it in cold water.", "idk, google it"]),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}], ["7", "8", "9"]),
        (long_prompt, ["Boil them.", "Eggs " * 80]),
    ]
    for prompt, responses in cases:
        got = httpx.post(f"{server.url}/score", json={"prompt": prompt, "responses": responses})
        assert got.status_code == 200, got.text
        want = library.score(prompt, responses).to_dict()
        body = got.json()
        assert set(body) == set(want)
        assert close(body["rewards"], want["rewards"])
        assert all(close(a, b) for a, b in zip(body["probabilities"], want["probabilities"]))
        assert (body["best"], body["truncated_prompt"], body["truncated_responses"], body["trained"]) == (
            want["best"], want["truncated_prompt"], want["truncated_responses"], want["trained"])
    assert body["truncated_prompt"] and body["truncated_responses"] == [1]  # the last case was cut, and says so


def test_get_reward_in_openrlhf_shape(server, library):
    """OpenRLHF decodes prompt + sampled tokens (ending in EOS, or not when cut at its length limit) and
    posts {"query", "prompts", "labels"}; it reads "rewards" (or "scores") and "extra_logs"."""
    import torch

    prompt = "Where is Paris, France?"
    replies = ["In France.", "On the moon, obviously.", "Paris is the capital of France"]
    rendered_prompt = library.render(prompt, "x")[: -len("x<|im_end|>\n")]
    queries = [rendered_prompt + replies[0] + "<|im_end|>",  # as OpenRLHF decodes a finished sample
               rendered_prompt + replies[1] + "<|im_end|>\n",  # exactly RewardModel.render
               rendered_prompt + replies[2],  # cut at the policy's length limit: no end of turn
               "no chat template here, just text"]
    payload = {"query": queries, "prompts": [rendered_prompt] * 3 + [""], "labels": [None, None, "a", None]}
    passes = server.metric("rmcore_forward_passes_total")
    got = httpx.post(f"{server.url}/get_reward", json=payload)
    assert got.status_code == 200, got.text
    body = got.json()
    assert close(body["rewards"][:3], library.score(prompt, replies).rewards)
    assert body["scores"] == body["rewards"]
    assert body["extra_logs"] == {"rm_truncated": [0.0, 0.0, 0.0, 0.0]} and body["truncated"] == []
    assert body["unparsed"] == [3]
    # the text without the template is scored whole, as plain transformers reads it (last token)
    ids = library.tokenizer(queries[3], return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        whole = library.model(input_ids=ids).logits[0, 0].item()
    assert close(body["rewards"][3:], [whole], 1e-4)
    # the three texts of one prompt share one packed row; the unparsed text rides in the same pass
    assert server.metric("rmcore_forward_passes_total") - passes == 1


def test_get_reward_reports_texts_cut_to_max_length(server, library):
    prompt = "Why is the sky blue?"
    text = library.render(prompt, "Because of Rayleigh scattering. " * 20)
    body = httpx.post(f"{server.url}/get_reward", json={"query": [library.render(prompt, "Blue light."), text]}).json()
    assert body["truncated"] == [1] and body["extra_logs"]["rm_truncated"] == [0.0, 1.0]
    # each text is cut on its own: the short one's prompt is whole, as if it had been sent alone
    assert close(body["rewards"][:1], library.score(prompt, ["Blue light."]).rewards)
    assert close(body["rewards"][1:], library.score(prompt, ["Because of Rayleigh scattering. " * 20]).rewards)


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(server, library):
    requests_sent = len(PROMPTS)
    candidates = {p: [f"Answer {i} to {p}", "No."] for i, p in enumerate(PROMPTS)}
    passes, rounds = server.metric("rmcore_forward_passes_total"), server.metric("rmcore_batch_rounds_total")
    barrier = threading.Barrier(requests_sent)

    def ask(prompt: str) -> list[float]:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            response = client.post(f"{server.url}/score", json={"prompt": prompt, "responses": candidates[prompt]})
            assert response.status_code == 200, response.text
            return response.json()["rewards"]

    with ThreadPoolExecutor(requests_sent) as pool:
        answers = dict(zip(PROMPTS, pool.map(ask, PROMPTS)))
    for prompt, rewards in answers.items():
        assert close(rewards, library.score(prompt, candidates[prompt]).rewards), prompt
    assert server.metric("rmcore_forward_passes_total") - passes < requests_sent
    assert server.metric("rmcore_batch_rounds_total") - rounds < requests_sent
    assert server.metric("rmcore_queue_items") == 0


def test_poisoned_requests_sharing_a_round_never_get_another_clients_reward(server, library):
    """Texts with nothing to read a reward at, sent in the same round as good requests: each poisoned
    request gets its own 422, each good one exactly its own rewards (an empty text once read its
    neighbour's reward in the packed row)."""
    poisons = [{"query": [""]}, {"query": ["", "x"]}, {"query": ["ok text", ""]}]
    goods = {p: [f"Answer to {p}", "No."] for p in PROMPTS[:5]}
    barrier = threading.Barrier(len(poisons) + len(goods))

    def send(path: str, payload: dict) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(f"{server.url}{path}", json=payload)

    with ThreadPoolExecutor(len(poisons) + len(goods)) as pool:
        bad = [pool.submit(send, "/get_reward", payload) for payload in poisons]
        good = {p: pool.submit(send, "/score", {"prompt": p, "responses": r}) for p, r in goods.items()}
    for future, payload in zip(bad, poisons):
        got = future.result()
        index = payload["query"].index("")
        assert got.status_code == 422 and f"query[{index}] has no tokens" in got.json()["error"], got.text
    for prompt, future in good.items():
        assert future.result().status_code == 200
        assert close(future.result().json()["rewards"], library.score(prompt, goods[prompt]).rewards), prompt
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_a_request_that_fails_in_a_round_fails_alone(library):
    """A scoring failure (a bug, out of memory) is retried request by request: only the request that
    fails alone gets the 500, the others of its round get exactly their own rewards."""
    import asyncio

    from rmcore.serving.batcher import Batcher, Stats
    from rmcore.serving.protocol import ApiError

    poison = library.tokenizer("zebra", add_special_tokens=False)["input_ids"][0]
    real = library.rewards_for

    def fragile(groups, batch_size=8, on_progress=None):
        if any(poison in ids for g in groups for ids in g.response_ids):
            raise RuntimeError("a fault in the forward pass")
        return real(groups, batch_size=batch_size)

    class Fragile:  # the library model, failing on any pass that holds the poison token
        def __getattr__(self, name):
            return fragile if name == "rewards_for" else getattr(library, name)

    batcher = Batcher(Fragile(), Stats(), max_batch_tokens=4096, wait_s=0.2, max_queue=64)
    batcher.start()
    requests = {p: [f"Answer to {p}", "No."] for p in PROMPTS[:4]}
    requests["Say zebra."] = ["zebra zebra", "horse"]

    async def ask_all():
        jobs = [batcher.score([library.encode(p, r)]) for p, r in requests.items()]
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        answers = dict(zip(requests, asyncio.run(ask_all())))
    finally:
        batcher.stop()
    failed = answers.pop("Say zebra.")
    assert isinstance(failed, ApiError) and failed.status == 500 and "a fault in the forward pass" in str(failed)
    for prompt, answer in answers.items():
        assert close(answer[0], library.score(prompt, requests[prompt]).rewards), prompt


def test_health_and_metrics(server):
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["max_length"] == MAX_LENGTH and health["dtype"] == "float32"
    assert health["device"] == "cpu" and health["trained"] is False
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in ("rmcore_requests_total", "rmcore_items_total", "rmcore_tokens_total", "rmcore_forward_passes_total",
                 "rmcore_queue_items", "rmcore_request_latency_seconds"):
        assert f"# TYPE {name} " in metrics.text
    assert re.search(r'^rmcore_request_latency_seconds\{endpoint="score",quantile="0.95"\} \d', metrics.text, re.M)


# ----------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(("content", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"\xff\xfe\x00", 400, "not UTF-8"),
    (b"[1, 2]", 422, "JSON object"),
    (b'{"responses": ["a"]}', 422, "missing field 'prompt'"),
    (b'{"prompt": "p"}', 422, "missing field 'responses'"),
    (b'{"prompt": "p", "responses": "a"}', 422, "'responses' must be a list"),
    (b'{"prompt": "p", "responses": []}', 422, "'responses' is empty"),
    (b'{"prompt": "p", "responses": ["a", 3]}', 422, "responses[1] must be a string"),
    (b'{"prompt": "p", "responses": ["a", "  "]}', 422, "responses[1] is empty"),
    (b'{"prompt": [{"role": "user"}], "responses": ["a"]}', 422, "prompt[0]"),
    (b'{"prompt": "p", "respones": ["a"]}', 422, "unknown field(s) 'respones'"),
    (json.dumps({"prompt": "p", "responses": ["a"] * 9}).encode(), 413, "limit of 8"),
    (json.dumps({"prompt": "p" * 3001, "responses": ["a"]}).encode(), 413, "3001 characters"),
    (json.dumps({"prompt": "p", "responses": ["a" * 2000] * 8 * 4}).encode(), 413, "bytes"),
    (b"[" * 20_000 + b"]" * 20_000, 400, "the body is nested too deeply"),
    (b'{"prompt": "p", "responses": [' + b"7" * 5000 + b"]}", 400, "a number with thousands of digits"),
    (b'{"prompt": "p\\ud800", "responses": ["a"]}', 422, "'prompt' holds a lone UTF-16 surrogate (\\ud800)"),
    (b'{"prompt": "p", "responses": ["a", "b\\udfff"]}', 422, "responses[1] holds a lone UTF-16 surrogate"),
    (b'{"prompt": [{"role": "user", "content": "\\udbff"}], "responses": ["a"]}', 422,
     "prompt[0].content holds a lone UTF-16 surrogate"),
])
def test_bad_score_bodies_get_one_json_error(server, content, status, says):
    got = httpx.post(f"{server.url}/score", content=content, headers={"Content-Type": "application/json"})
    assert got.status_code == status, got.text
    assert got.headers["content-type"] == "application/json"
    assert set(got.json()) == {"error"} and says in got.json()["error"]
    assert "Traceback" not in got.text


@pytest.mark.parametrize(("payload", "status", "says"), [
    ({"prompts": ["p"]}, 422, "missing field 'query'"),
    ({"query": "one text"}, 422, "'query' must be a list"),
    ({"query": [1]}, 422, "query[0] must be a string"),
    ({"query": ["t"], "prompts": "p"}, 422, "'prompts' must be a list"),
    ({"query": ["fine", "lone \ud800 surrogate"]}, 422, "query[1] holds a lone UTF-16 surrogate (\\ud800)"),
])
def test_bad_get_reward_bodies_get_one_json_error(server, payload, status, says):
    got = httpx.post(f"{server.url}/get_reward", content=json.dumps(payload),  # a surrogate as \\ud800
                     headers={"Content-Type": "application/json"})
    assert got.status_code == status and says in got.json()["error"]


def test_hostile_bodies_leave_the_server_answering_everyone(server, library):
    """Bodies that once gave a 500 (RecursionError, Python's 4,300-digit limit, a lone surrogate reaching
    the tokenizer) each get a 4xx JSON error; the server goes on answering /health and good requests."""
    hostile = [("/score", b'{"prompt": "p", "responses": ["a"], "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"),
               ("/get_reward", b'{"query": [' + b"9" * 5000 + b"]}"),
               ("/get_reward", b'{"query": ["<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n\\ud83d"]}')]
    for path, content in hostile:
        got = httpx.post(f"{server.url}{path}", content=content, headers={"Content-Type": "application/json"})
        assert 400 <= got.status_code < 500 and set(got.json()) == {"error"}, got.text
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    good = httpx.post(f"{server.url}/score", json={"prompt": "Say hi.", "responses": ["Hi!", "No."]})
    assert good.status_code == 200 and close(good.json()["rewards"], library.score("Say hi.", ["Hi!", "No."]).rewards)


def test_non_finite_rewards_are_null_and_flagged(tiny_model_dir):
    """A reward that is NaN (a head that overflows; loading refuses NaN weights) cannot be written as JSON:
    it is answered as null and listed in `non_finite`, and counted in /metrics."""
    import torch
    from starlette.testclient import TestClient

    from rmcore.model.reward_model import RewardModel
    from rmcore.serving.config import ServeConfig
    from rmcore.serving.service import RewardService

    model = RewardModel.load(tiny_model_dir, max_length=MAX_LENGTH, device="cpu")
    with torch.no_grad():
        model.model.score.weight.fill_(float("nan"))  # after loading: as an overflow on some text would
    service = RewardService(model, ServeConfig(batch_wait_ms=0))
    with TestClient(service.app) as client:
        got = client.post("/score", json={"prompt": "p", "responses": ["a", "b"]})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["rewards"] == [None, None] and body["non_finite"] == [0, 1] and body["best"] is None
        assert body["probabilities"] == [[None, None], [None, None]]
        got = client.post("/get_reward", json={"query": [model.render("p", "a")]})
        assert got.status_code == 200 and got.json()["rewards"] == [None] and got.json()["non_finite"] == [0]
        assert client.get("/health").json()["status"] == "ok"
        assert re.search(r"^rmcore_non_finite_total 3$", client.get("/metrics").text, re.M)


def test_unknown_paths_and_methods_answer_json(server):
    assert httpx.get(f"{server.url}/nothing").json() == {"error": "Not Found"}
    got = httpx.get(f"{server.url}/score")
    assert got.status_code == 405 and "error" in got.json()


def test_a_full_queue_answers_503_with_retry_after(server):
    """--max-queue 24 responses: six requests of 8 sent at once cannot all wait (the first round takes
    at most 3 of them before the others arrive, and the window is 150 ms)."""
    barrier = threading.Barrier(6)

    def ask(i: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            body = {"prompt": f"q{i}", "responses": [f"a{k}" for k in range(8)]}
            return client.post(f"{server.url}/score", json=body)

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    refused = [a for a in answers if a.status_code == 503]
    assert refused and any(a.status_code == 200 for a in answers)
    assert all(int(a.headers["retry-after"]) >= 1 and "queue is full" in a.json()["error"] for a in refused)


# ----------------------------------------------------------------------------- token, shutdown, the command


@pytest.mark.slow  # starts a server of its own (a few seconds)
def test_the_bearer_token_is_enforced(tiny_model_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = Server(tiny_model_dir, "--token-file", str(token_file))
    try:
        assert "Authorization: Bearer $(cat" in "".join(server.banner)
        body = {"prompt": "p", "responses": ["a"]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            got = httpx.post(f"{server.url}/score", json=body, headers=headers)
            assert got.status_code == 401 and got.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in got.json()["error"]
        assert httpx.get(f"{server.url}/health").status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert httpx.post(f"{server.url}/score", json=body, headers=good).status_code == 200
        assert server.metric("rmcore_items_total", headers=good) == 1
    finally:
        server.stop()


@pytest.mark.slow  # starts a server of its own (a few seconds)
def test_sigterm_answers_requests_in_flight_then_exits_0(tiny_model_dir, library):
    server = Server(tiny_model_dir, "--batch-wait-ms", "800")  # requests sit in the queue for 0.8 s
    try:
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(httpx.post, f"{server.url}/score", json={"prompt": p, "responses": ["yes", "no"]},
                                   timeout=60) for p in PROMPTS[:3]]
            deadline = time.monotonic() + 10
            while server.metric("rmcore_queue_requests") < 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.metric("rmcore_queue_requests") == 3
            server.process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert [a.status_code for a in answers] == [200, 200, 200]
        for prompt, answer in zip(PROMPTS, answers):
            assert close(answer.json()["rewards"], library.score(prompt, ["yes", "no"]).rewards)
        assert server.process.wait(30) == 0
        stderr = server.process.stderr.read()
        assert "Traceback" not in stderr and "stopped" in stderr
    finally:
        server.stop()


@pytest.mark.slow  # starts a server of its own (a few seconds)
def test_sigterm_drops_a_client_stalled_half_way_through_its_body(tiny_model_dir, library):
    """--shutdown-timeout bounds a stop: the request in flight is answered, a client that sent half of its
    body and went quiet is dropped, and the server exits 0 soon after, without a traceback."""
    server = Server(tiny_model_dir, "--batch-wait-ms", "500", "--shutdown-timeout", "2")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)), timeout=10)
    try:
        stalled.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 1000\r\n\r\n{\"prompt\": \"half")
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(httpx.post, f"{server.url}/score", json={"prompt": "Hi", "responses": ["yes"]},
                                 timeout=60)
            deadline = time.monotonic() + 10
            while server.metric("rmcore_queue_requests") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert answer.result().status_code == 200
            assert close(answer.result().json()["rewards"], library.score("Hi", ["yes"]).rewards)
        assert server.process.wait(30) == 0
        assert time.monotonic() - started < 15
        stderr = server.process.stderr.read()
        assert "Traceback" not in stderr and "stopped" in stderr, stderr
    finally:
        stalled.close()
        server.stop()


def test_token_files_that_are_no_token_files_are_refused_at_once(tiny_model_dir, tmp_path, capsys):
    """--token-file /dev/zero once took 5 GB, a named pipe hung: only a regular file of at most 64 KB is read."""
    big = tmp_path / "big"
    big.write_bytes(b"x" * (65 << 10))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, says in (("/dev/zero", "is not a regular file"), (fifo, "is not a regular file"),
                       (big, "65 KB is far too large for this file (at most 64 KB)"), (tmp_path, "is a folder")):
        code = bounded(lambda path=path: cli_main(["serve", "--model", str(tiny_model_dir), "--token-file",
                                                   str(path)]))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"--token-file {path}: {says}" in err, err


def bounded(call, seconds: float = 60):
    """call() in a thread that must end within `seconds` (a hang fails the test instead of blocking it)."""
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


def test_command_line_errors_are_one_line_and_status_2(tiny_model_dir, tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "no such model folder" in capsys.readouterr().err
    assert cli_main(["serve", "--model", str(tiny_model_dir), "--token-file", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--token-file" in err and "no such file" in err
    (tmp_path / "empty").write_text("\n")
    assert cli_main(["serve", "--model", str(tiny_model_dir), "--token-file", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_main(["serve", "--model", str(tiny_model_dir), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"127.0.0.1:{port}" in err and "--port" in err and err.count("\n") == 1
    assert cli_main(["serve", "--max-batch-tokens", "0"]) == 2
    assert "--max-batch-tokens must be at least 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- splitting rendered texts


def test_template_split_finds_the_last_assistant_turn(library):
    from rmcore.serving.protocol import TemplateShape

    shape = TemplateShape.of(library.tokenizer)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Name a prime."}]
    text = library.render(messages, "7")
    prompt, reply = shape.split(text)
    assert text == prompt + reply and prompt.endswith("<|im_start|>assistant\n") and reply == "7<|im_end|>\n"
    assert shape.split(text.rstrip()) == (prompt, reply)  # EOS without the newline
    assert shape.split(prompt + "7") == (prompt, reply)  # no end of turn at all
    assert shape.split("plain text") is None


@pytest.mark.slow  # two servers on the tiny model, every level of the benchmark once (about 20 s of CPU)
def test_the_serving_benchmark_runs_end_to_end(shared_data, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import serve as serve_bench  # bench/serve.py is a script, not a package

    assert serve_bench.main(["--model", "tiny", "--scale", "0.1", "--out", str(tmp_path)]) == 0
    [result_file] = tmp_path.glob("*_serve.json")
    assert (tmp_path / result_file.name.replace(".json", ".md")).is_file()
    [block] = json.loads(result_file.read_text())["models"]
    for workload in ("new4", "grpo8"):
        for impl in ("rmcore", "baseline"):
            assert [level["clients"] for level in block["levels"][workload][impl]] == [1, 4, 16]
            assert all(level["items_per_s"] > 0 for level in block["levels"][workload][impl])
    assert block["max_abs_reward_difference_vs_baseline"] < 1e-4  # the pipeline reads the same reward
    assert block["in_process"]["max_abs_reward_difference"] < 1e-5
    assert block["forward_passes"]["new4"]["16"] < 16 and block["exit_code"] == 0
    assert len(block["targets"]) == 3
