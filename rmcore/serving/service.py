"""`rmcore serve`: a reward model as an HTTP service, for RL stacks that call their reward over the network.

Endpoints (JSON in and out; every error is `{"error": "one readable line"}` with a 4xx status):

- `POST /score` `{"prompt": str | messages, "responses": [str, ...]}` -> what `rmcore score --json` prints.
- `POST /get_reward` OpenRLHF's remote reward protocol: `{"query": [full rendered texts], "prompts": [...],
  "labels": [...]}` -> `{"rewards": [...], "scores": [...], "extra_logs": {...}, "truncated", "unparsed"}`.
  Each text is split where this model's chat template opens the last assistant turn, and scored as
  if sent alone (cut to the max length on its own); texts whose prompts are the same tokens, in
  this request or others of the same round, share one computation of the prompt. A text without
  that opening is scored whole, as OpenRLHF's own reward server does, and listed in `unparsed`.
- `GET /health` (model, device, dtype, max length) and `GET /metrics` (Prometheus text format).

Requests are not scored one by one. A single worker thread owns the model; requests queue up, and
each round it takes everything queued (after waiting a few milliseconds for company), merges the
responses of every request that share a prompt, and scores them in packed rows (rmcore.model.batching)
under a token budget. A prompt this server has scored on its own before is still in the model's
prompt cache, so it is scored alone and only its new responses are computed (best-of-n, GRPO).
Scores are the ones `RewardModel.score` gives: a response's reward depends only on its prompt's
tokens and its own (the block mask), whichever requests it was batched with.

Limits: request body size, responses per request, characters per text, and a bounded queue
that answers 503 with Retry-After. SIGTERM or Ctrl-C stops accepting connections, answers every
request already received, then exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import math
import signal
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rmcore.data import RankedGroup
from rmcore.data.encoding import EncodedGroup, encode_group, render_prompt, render_response
from rmcore.model.batching import split_by_tokens

# ----------------------------------------------------------------------------- settings


@dataclass
class ServeConfig:
    """Settings of `rmcore serve`; the CLI reads its options, defaults and help from these fields."""

    model: str = field(default="embedded", metadata={
        "help": "the reward model: a folder saved by `rmcore train` (or 'embedded', whose head is untrained)",
        "metavar": "DIR"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)"})
    port: int = field(default=8000, metadata={"help": "TCP port (default 8000; 0 picks a free one)"})
    token_file: str | None = field(default=None, metadata={
        "help": "file holding a bearer token that every request must send (Authorization: Bearer TOKEN)",
        "metavar": "FILE"})
    max_batch_tokens: int = field(default=8192, metadata={
        "help": "token budget of one forward pass: rows x longest row (default 8192); lower it if memory runs out",
        "metavar": "N"})
    dtype: str = field(default="float32", metadata={
        "help": "precision of the trunk (default float32); bfloat16 is faster on GPUs and CPUs with bfloat16 "
                "instructions, with rewards a little off float32's"})
    max_length: int | None = field(default=None, metadata={
        "help": "tokens of prompt + one response; longer ones are cut as in training (default: the model's)",
        "metavar": "N"})
    batch_wait_ms: float = field(default=5.0, metadata={
        "help": "how long the first queued request waits for others to share its forward pass (default 5)",
        "metavar": "MS"})
    max_queue: int = field(default=4096, metadata={
        "help": "responses waiting to be scored before new requests get 503 + Retry-After (default 4096)",
        "metavar": "N"})
    max_responses: int = field(default=256, metadata={
        "help": "responses (or /get_reward texts) in one request (default 256)", "metavar": "N"})
    max_text_chars: int = field(default=100_000, metadata={
        "help": "characters in one prompt or response (default 100000; token truncation applies below it)",
        "metavar": "N"})
    max_body_mb: float = field(default=16.0, metadata={
        "help": "request body size limit in MiB (default 16)", "metavar": "MB"})

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `rmcore serve` options, one per ServeConfig field."""
    for f in fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        extra: dict[str, Any] = {"choices": ("float32", "bfloat16")} if f.name == "dtype" else {}
        if "metavar" in f.metadata:
            extra["metavar"] = f.metadata["metavar"]
        parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=f.metadata["help"], **extra)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in fields(ServeConfig)})
    for name in ("max_batch_tokens", "max_queue", "max_responses", "max_text_chars"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.max_length is not None and config.max_length < 16:
        raise ValueError(f"--max-length must be at least 16 tokens (prompt + one response), got {config.max_length}")
    if not 0 <= config.batch_wait_ms <= 1000:
        raise ValueError(f"--batch-wait-ms must be between 0 and 1000, got {config.batch_wait_ms:g}")
    if not 0 < config.max_body_mb <= 1024:
        raise ValueError(f"--max-body-mb must be above 0 and at most 1024, got {config.max_body_mb:g}")
    if not 0 <= config.port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, got {config.port}")
    return config


def read_token(path: str) -> str:
    """The bearer token from a file (never from the command line, where `ps` would show it)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"--token-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--token-file {path}: cannot read it ({exc})") from None
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"--token-file {path}: give the token on one line, no spaces (the file is "
                         f"{'empty' if not token else 'several words'})")
    return token


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A request the server refuses: the HTTP status and one line saying what is wrong and where."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# ----------------------------------------------------------------------------- full texts -> prompt + response


class _RenderedTemplate:
    """A tokenizer stand-in for `encode_group` whose chat template returns text rendered elsewhere.

    /get_reward receives whole conversations already rendered; this lets them go through the very
    tokenization and truncation rules `RewardModel.score` uses (rmcore.data.encoding), instead of a copy.
    """

    chat_template = "already rendered"

    def __init__(self, tokenizer, prompt_text: str):
        self.tokenizer = tokenizer
        self.prompt_text = prompt_text

    def __call__(self, text, **kwargs):
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str):  # everything else (special tokens, decode, ...) is the real tokenizer's
        return getattr(self.tokenizer, name)

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False):
        if add_generation_prompt:
            return self.prompt_text
        return self.prompt_text + messages[-1]["content"]  # the response, already in its rendered form


@dataclass
class TemplateShape:
    """Where this model's chat template puts an assistant reply: `header` opens the turn (the end
    of every rendered prompt), a reply renders as `prefix + content + suffix`."""

    header: str
    prefix: str
    suffix: str
    eos: str

    @classmethod
    def of(cls, tokenizer) -> TemplateShape:
        marker = "\u2063rmcore-reply\u2063"  # text no reply contains
        messages = [{"role": "user", "content": "\u2063rmcore-prompt\u2063"}]
        prompt = render_prompt(tokenizer, messages)
        if getattr(tokenizer, "chat_template", None):
            without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            header = prompt[len(without):] if prompt.startswith(without) else ""
        else:  # rmcore's plain "Role: text" transcript
            header = "Assistant:"
        reply = render_response(tokenizer, messages, marker, prompt)
        prefix, _, suffix = reply.partition(marker)
        return cls(header, prefix, suffix, tokenizer.eos_token or "")

    def split(self, text: str) -> tuple[str, str] | None:
        """(prompt text, reply as rendered) of a full text, or None when it has no assistant turn.

        The reply's end-of-turn marker is rendered the way training saw it whether or not the text
        has one (a policy's decoded sample ends in EOS, or nothing if it hit its length limit), so
        the reward equals `RewardModel.score(prompt, [content])`.
        """
        if not self.header:
            return None
        at = text.rfind(self.header)
        if at < 0:
            return None
        prompt, reply = text[: at + len(self.header)], text[at + len(self.header):]
        if self.prefix and reply.startswith(self.prefix):
            reply = reply[len(self.prefix):]
        for end in dict.fromkeys([self.suffix, self.suffix.rstrip(), self.eos]):
            if end and reply.endswith(end):
                reply = reply[: -len(end)]
                break
        return prompt, self.prefix + reply + self.suffix


def encode_rendered(tokenizer, prompt_text: str, replies: list[str], max_length: int) -> EncodedGroup:
    """Token ids of replies (as rendered) to a rendered prompt, cut to `max_length` as everywhere."""
    group = RankedGroup([], replies, [None] * len(replies))
    return encode_group(_RenderedTemplate(tokenizer, prompt_text), group, max_length)


# ----------------------------------------------------------------------------- statistics


class Stats:
    """Counters for /metrics; latencies of the last 2048 scoring requests for the percentiles."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.items = 0
        self.tokens = 0
        self.forward_passes = 0
        self.rounds = 0
        self.truncated = 0
        self.unparsed = 0
        self.latencies: dict[str, deque[float]] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: dict[str, int] = {}
        self.compute_seconds = 0.0
        self.started = time.time()

    def request(self, endpoint: str, status: int, seconds: float | None) -> None:
        with self.lock:
            self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1
            if seconds is not None and status == 200:
                self.latencies.setdefault(endpoint, deque(maxlen=2048)).append(seconds)
                self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds
                self.latency_count[endpoint] = self.latency_count.get(endpoint, 0) + 1

    def tokens_per_second(self) -> float:
        with self.lock:
            return self.tokens / self.compute_seconds if self.compute_seconds > 0 else 0.0


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def prometheus_text(stats: Stats, batcher: Batcher, model) -> str:
    """Metrics in the Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:.10g}" for labels, value in samples)

    with stats.lock:
        metric("rmcore_requests_total", "counter", "HTTP requests by endpoint and status code.",
               [(f'{{endpoint="{e}",code="{c}"}}', n) for (e, c), n in sorted(stats.requests.items())])
        metric("rmcore_items_total", "counter", "Responses scored.", [("", stats.items)])
        metric("rmcore_tokens_total", "counter", "Tokens in the packed rows scored (each prompt once per row).",
               [("", stats.tokens)])
        metric("rmcore_forward_passes_total", "counter", "Forward passes of the model.", [("", stats.forward_passes)])
        metric("rmcore_batch_rounds_total", "counter", "Rounds of the batcher (each scores every request queued).",
               [("", stats.rounds)])
        metric("rmcore_truncated_total", "counter", "Responses cut to fit the max length (prompt or response).",
               [("", stats.truncated)])
        metric("rmcore_unparsed_total", "counter", "/get_reward texts without the model's assistant turn, "
               "scored whole.", [("", stats.unparsed)])
        metric("rmcore_compute_seconds_total", "counter", "Seconds the worker spent scoring.",
               [("", stats.compute_seconds)])
        quantiles = []
        for endpoint, window in sorted(stats.latencies.items()):
            values = list(window)
            quantiles += [(f'{{endpoint="{endpoint}",quantile="{q}"}}', percentile(values, q))
                          for q in (0.5, 0.95, 0.99)]
            quantiles += [(f'_sum{{endpoint="{endpoint}"}}', stats.latency_sum[endpoint]),
                          (f'_count{{endpoint="{endpoint}"}}', stats.latency_count[endpoint])]
        lines.append("# HELP rmcore_request_latency_seconds Latency of successful scoring requests "
                     "(quantiles over the last 2048).")
        lines.append("# TYPE rmcore_request_latency_seconds summary")
        lines.extend(f"rmcore_request_latency_seconds{labels} {value:.6g}" for labels, value in quantiles)
    metric("rmcore_queue_requests", "gauge", "Requests waiting to be scored.", [("", batcher.queued_requests)])
    metric("rmcore_queue_items", "gauge", "Responses waiting to be scored.", [("", batcher.queued_items)])
    metric("rmcore_prompt_cache_hit_tokens_total", "counter", "Prompt tokens taken from the prompt cache.",
           [("", model.prompt_cache.hits_tokens)])
    metric("rmcore_prompt_cache_bytes", "gauge", "Bytes held by the prompt cache.", [("", model.prompt_cache.nbytes)])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- dynamic batching


@dataclass
class _Job:
    groups: list[EncodedGroup]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    items: int
    enqueued: float


class Batcher:
    """The worker thread that owns the model: gathers queued requests and scores them together.

    Each round takes every queued request, merges the responses of all of them by prompt (the
    exact prompt tokens after truncation, so merging never changes a reward), cuts prompts with
    many responses into pieces within the token budget, and scores:
    - prompts this server scored alone before, one at a time: the prompt cache holds their keys and
      values, so only the new responses are computed;
    - the others packed into rows, as many per forward pass as `max_batch_tokens` allows; a prompt
      that ends up alone in a pass goes through the prompt cache and is remembered.
    """

    def __init__(self, model, stats: Stats, *, max_batch_tokens: int, wait_s: float, max_queue: int):
        from rmcore.model.attention import supports_prefix
        from rmcore.model.reward_model import unwrap_classifier

        self.model = model
        self.stats = stats
        self.max_batch_tokens = max_batch_tokens
        self.wait_s = wait_s
        self.max_queue = max_queue
        config = unwrap_classifier(model.model).config
        self.caches_prompts = model.prompt_cache.max_bytes > 0 and supports_prefix(config)
        self._seen_alone: OrderedDict[tuple[int, ...], None] = OrderedDict()  # prompts now in the prompt cache
        self._pending: list[_Job] = []
        self._queued_items = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="rmcore-batcher", daemon=True)

    @property
    def queued_requests(self) -> int:
        return len(self._pending)

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Score what is queued, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    async def score(self, groups: list[EncodedGroup]) -> list[list[float]]:
        """Rewards of every response of every group, once a round has scored them."""
        loop = asyncio.get_running_loop()
        items = sum(len(g.response_ids) for g in groups)
        job = _Job(groups, loop.create_future(), loop, items, time.monotonic())
        with self._cond:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", {"Retry-After": "5"})
            if self._pending and self._queued_items + items > self.max_queue:
                raise ApiError(503, f"the queue is full ({self._queued_items} responses waiting, at most "
                                    f"{self.max_queue}); retry later", {"Retry-After": str(self._retry_after())})
            self._pending.append(job)
            self._queued_items += items
            self._cond.notify()
        return await job.future

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the tokens per second measured so far."""
        rate = self.stats.tokens_per_second()
        tokens = sum(g.num_tokens for job in self._pending for g in job.groups)
        return max(1, min(60, math.ceil(tokens / rate))) if rate > 0 else 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                first = self._pending[0].enqueued
                stopping = self._stopping
            delay = first + self.wait_s - time.monotonic()
            if delay > 0 and not stopping:
                time.sleep(delay)  # let requests sent at the same moment join this round
            with self._cond:
                jobs, self._pending, self._queued_items = self._pending, [], 0
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        """Score a round's jobs together; if that fails, each job alone, so a failure stays with its request.

        Requests are validated before they are queued (`encode_texts`, `parse_*_request`), so a failed
        round means a bug or out of memory: no client may get an answer computed with another's input,
        and every client whose own request scores gets exactly its answer."""
        start = time.perf_counter()
        try:
            results = self._score_jobs(jobs)
        except Exception:
            if len(jobs) == 1:
                self._fail(jobs[0])
                return
            for job in jobs:
                self._run([job])
            return
        with self.stats.lock:
            self.stats.compute_seconds += time.perf_counter() - start
            self.stats.rounds += 1
        for job, rewards in zip(jobs, results):
            _resolve(job, result=rewards)

    @staticmethod
    def _fail(job: _Job) -> None:
        """The request's own scoring failed: a 500 for it alone, the trace in the log, the server lives on."""
        kind, exc, _ = sys.exc_info()
        traceback.print_exc()
        message = f"scoring failed ({kind.__name__}: {exc})".splitlines()[0]
        _resolve(job, error=ApiError(500, message))

    def _score_jobs(self, jobs: list[_Job]) -> list[list[list[float]]]:
        # Every response of every job under its prompt: prompt ids -> [(job, group, response), ...]
        by_prompt: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
        for j, job in enumerate(jobs):
            for g, group in enumerate(job.groups):
                places = by_prompt.setdefault(tuple(group.prompt_ids), [])
                places.extend((j, g, r) for r in range(len(group.response_ids)))
        pieces: list[tuple[EncodedGroup, list[tuple[int, int, int]]]] = []
        for prompt, places in by_prompt.items():
            pieces.extend(self._cut(list(prompt), places, jobs))
        alone = [i for i, (group, _) in enumerate(pieces) if tuple(group.prompt_ids) in self._seen_alone]
        packed = sorted(set(range(len(pieces))) - set(alone))
        passes = [[i] for i in alone] + [
            [packed[k] for k in part]
            for part in split_by_tokens(list(range(len(packed))), [pieces[i][0].num_tokens for i in packed],
                                        self.max_batch_tokens)]
        out = [[[0.0] * len(g.response_ids) for g in job.groups] for job in jobs]
        for part in passes:
            groups = [pieces[i][0] for i in part]
            rewards = self.model.rewards_for(groups, batch_size=len(groups))
            if len(part) == 1 and self.caches_prompts and groups[0].prompt_ids:  # now in the prompt cache
                self._remember(tuple(groups[0].prompt_ids))
            for i, piece_rewards in zip(part, rewards):
                for (j, g, r), reward in zip(pieces[i][1], piece_rewards):
                    out[j][g][r] = reward
        with self.stats.lock:
            self.stats.forward_passes += len(passes)
            self.stats.tokens += sum(group.num_tokens for group, _ in pieces)
            self.stats.items += sum(job.items for job in jobs)
        return out

    def _cut(self, prompt: list[int], places: list[tuple[int, int, int]], jobs: list[_Job]):
        """One prompt's responses as groups of at most `max_batch_tokens` tokens (one response at least)."""
        pieces, ids, where = [], [], []
        size = len(prompt)
        for j, g, r in places:
            response = jobs[j].groups[g].response_ids[r]
            if ids and size + len(response) > self.max_batch_tokens:
                pieces.append((EncodedGroup(prompt, ids, [None] * len(ids)), where))
                ids, where, size = [], [], len(prompt)
            ids.append(response)
            where.append((j, g, r))
            size += len(response)
        pieces.append((EncodedGroup(prompt, ids, [None] * len(ids)), where))
        return pieces

    def _remember(self, prompt: tuple[int, ...]) -> None:
        self._seen_alone[prompt] = None
        self._seen_alone.move_to_end(prompt)
        while len(self._seen_alone) > 4096:
            self._seen_alone.popitem(last=False)


def _resolve(job: _Job, result: Any = None, error: Exception | None = None) -> None:
    """Hand a result to the request's event loop (the request may have gone: then drop it)."""
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # its event loop has closed: nobody is waiting any more
        job.loop.call_soon_threadsafe(settle)


# ----------------------------------------------------------------------------- requests


def _check_text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ApiError(422, f"{where} must be a string, got {_json_type(value)}")
    if len(value) > limit:
        raise ApiError(413, f"{where} has {len(value)} characters, more than this server's limit of {limit} "
                            "(--max-text-chars)")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_list(body: dict, key: str, limit: int) -> list:
    if key not in body:
        raise ApiError(422, f"missing field '{key}'")
    value = body[key]
    if not isinstance(value, list):
        raise ApiError(422, f"'{key}' must be a list, got {_json_type(value)}")
    if not value:
        raise ApiError(422, f"'{key}' is empty; give at least one")
    if len(value) > limit:
        raise ApiError(413, f"'{key}' has {len(value)} entries, more than this server's limit of {limit} "
                            "(--max-responses)")
    return value


def parse_score_request(body: dict, config: ServeConfig) -> tuple[str | list[dict[str, str]], list[str]]:
    """(prompt, responses) of a /score body, or ApiError naming the field that is wrong."""
    unknown = sorted(set(body) - {"prompt", "responses"})
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(map(repr, unknown))}; /score takes 'prompt' and "
                            "'responses'")
    if "prompt" not in body:
        raise ApiError(422, "missing field 'prompt' (a string, or a list of {'role', 'content'} messages)")
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if not prompt:
            raise ApiError(422, "'prompt' is an empty list of messages")
        for i, message in enumerate(prompt):
            if not isinstance(message, dict) or not {"role", "content"} <= set(message):
                raise ApiError(422, f"prompt[{i}] must be an object with 'role' and 'content'")
            _check_text(message["role"], f"prompt[{i}].role", config.max_text_chars)
            _check_text(message["content"], f"prompt[{i}].content", config.max_text_chars)
        prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
    else:
        _check_text(prompt, "'prompt'", config.max_text_chars)
    responses = _check_list(body, "responses", config.max_responses)
    for i, response in enumerate(responses):
        if not _check_text(response, f"responses[{i}]", config.max_text_chars).strip():
            raise ApiError(422, f"responses[{i}] is empty; give each candidate some text")
    return prompt, responses


def parse_reward_request(body: dict, config: ServeConfig) -> list[str]:
    """The texts of an OpenRLHF /get_reward body. Its `prompts` and `labels` are accepted and not used
    (the prompt is read from each text; labels are for rule-based rewards)."""
    queries = _check_list(body, "query", config.max_responses)
    for i, text in enumerate(queries):
        _check_text(text, f"query[{i}]", config.max_text_chars)
    for key in ("prompts", "labels"):
        if body.get(key) is not None and not isinstance(body[key], list):
            raise ApiError(422, f"'{key}' must be a list (one per query) or absent, got {_json_type(body[key])}")
    return queries


async def read_json_body(request, limit: int) -> dict:
    """The request's JSON object, refusing bodies over `limit` bytes before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"bad Content-Length header {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, f"the body has {int(declared)} bytes, more than this server's limit of {limit} "
                                "(--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is over this server's limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "the body is empty; send a JSON object")
    try:
        body = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8 text; send a JSON object") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, got {_json_type(body)}")
    return body


# ----------------------------------------------------------------------------- the ASGI app


class RewardService:
    """The model, its batcher and the request handlers (a Starlette app in `.app`)."""

    def __init__(self, model, config: ServeConfig, token: str | None = None):
        self.model = model
        self.config = config
        self.token = token
        self.stats = Stats()
        self.shape = TemplateShape.of(model.tokenizer)
        self.batcher = Batcher(model, self.stats, max_batch_tokens=config.max_batch_tokens,
                               wait_s=config.batch_wait_ms / 1000, max_queue=config.max_queue)
        self.app = self._build_app()

    def _build_app(self):
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        @contextlib.asynccontextmanager
        async def lifespan(app):
            self.batcher.start()
            try:
                yield
            finally:  # uvicorn gets here after every request in flight has been answered
                await asyncio.to_thread(self.batcher.stop)

        async def http_error(request, exc: HTTPException):
            return _error_response(ApiError(exc.status_code, exc.detail or "error", dict(exc.headers or {})))

        routes = [
            Route("/score", self._endpoint("score", self.score), methods=["POST"]),
            Route("/get_reward", self._endpoint("get_reward", self.get_reward), methods=["POST"]),
            Route("/health", self._endpoint("health", self.health), methods=["GET"]),
            Route("/metrics", self._endpoint("metrics", self.metrics), methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})

    def _endpoint(self, name: str, handler: Callable[[Any], Awaitable[Any]]):
        """Wrap a handler: the bearer token, JSON errors (never a stack trace), counters and latency."""
        async def endpoint(request):
            start = time.perf_counter()
            try:
                self._check_token(request)
                response = await handler(request)
            except ApiError as exc:
                response = _error_response(exc)
            except Exception as exc:  # a bug: log it here, tell the client one line
                traceback.print_exc()
                response = _error_response(ApiError(500, f"internal error ({type(exc).__name__}); see the server log"))
            timed = name in ("score", "get_reward")
            self.stats.request(name, response.status_code, time.perf_counter() - start if timed else None)
            return response

        return endpoint

    def _check_token(self, request) -> None:
        if self.token is None:
            return
        sent = request.headers.get("authorization", "")
        scheme, _, value = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            what = "no bearer token" if not sent else "a wrong bearer token"
            raise ApiError(401, f"this server needs 'Authorization: Bearer TOKEN' (the request had {what})",
                           {"WWW-Authenticate": "Bearer"})

    async def score(self, request):
        from starlette.responses import JSONResponse

        from rmcore.model.reward_model import ScoreResult, preference_matrix

        body = await read_json_body(request, self.config.max_body_bytes)
        prompt, responses = parse_score_request(body, self.config)
        try:  # tokenizing off the event loop, which goes on taking requests meanwhile
            group = await asyncio.to_thread(self.model.encode, prompt, responses)
        except Exception as exc:  # a chat template that refuses these messages (roles, order)
            raise ApiError(422, f"the model's chat template cannot render this prompt ({exc})") from None
        empty = [i for i, ids in enumerate(group.response_ids) if not ids]
        if empty:  # nothing to read a reward at: refused before it joins a batch
            raise ApiError(422, f"responses[{empty[0]}] has no tokens to read a reward at")
        [rewards] = await self.batcher.score([group])
        best = max(range(len(rewards)), key=rewards.__getitem__)
        result = ScoreResult(rewards, preference_matrix(rewards), best, self.model.trained, group.prompt_truncated,
                             list(group.truncated))
        self._count_cuts(len(responses) if group.prompt_truncated else len(group.truncated), 0)
        return JSONResponse(result.to_dict())

    async def get_reward(self, request):
        from starlette.responses import JSONResponse

        body = await read_json_body(request, self.config.max_body_bytes)
        texts = parse_reward_request(body, self.config)
        groups, unparsed = await asyncio.to_thread(self.encode_texts, texts)
        rewards = [reward for [reward] in await self.batcher.score(groups)]
        truncated = [i for i, group in enumerate(groups) if group.prompt_truncated or group.truncated]
        self._count_cuts(len(truncated), len(unparsed))
        return JSONResponse({"rewards": rewards, "scores": rewards,
                             "extra_logs": {"rm_truncated": [float(i in truncated) for i in range(len(texts))]},
                             "truncated": truncated, "unparsed": unparsed})

    def encode_texts(self, texts: list[str]) -> tuple[list[EncodedGroup], list[int]]:
        """Each full text as a group of its own: (groups, indexes of the texts scored whole).

        Each is cut to the max length on its own, so a text's reward never depends on the others
        sent with it; the batcher still computes a prompt once for every text whose prompt tokens
        are the same.
        """
        groups, unparsed = [], []
        for i, text in enumerate(texts):
            split = self.shape.split(text)
            if split is None:
                unparsed.append(i)
                split = ("", text)  # no prompt: the whole text is read at its last token
            group = encode_rendered(self.model.tokenizer, split[0], [split[1]], self.model.max_length)
            if not group.response_ids[0]:  # nothing to read a reward at: refused before it joins a batch
                raise ApiError(422, f"query[{i}] has no tokens to read a reward at; send the whole rendered text "
                                    "(prompt and response)")
            groups.append(group)
        return groups, unparsed

    def _count_cuts(self, truncated: int, unparsed: int) -> None:
        with self.stats.lock:
            self.stats.truncated += truncated
            self.stats.unparsed += unparsed

    async def health(self, request):
        from starlette.responses import JSONResponse

        from rmcore import __version__

        return JSONResponse({"status": "ok", "model": self.model.name, "trained": self.model.trained,
                             "device": str(self.model.device), "dtype": self.model.dtype,
                             "max_length": self.model.max_length, "chat_template_header": self.shape.header,
                             "rmcore": __version__, "uptime_s": round(time.time() - self.stats.started, 1)})

    async def metrics(self, request):
        from starlette.responses import PlainTextResponse

        return PlainTextResponse(prometheus_text(self.stats, self.batcher, self.model),
                                 media_type="text/plain; version=0.0.4")


def _error_response(error: ApiError):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


# ----------------------------------------------------------------------------- the command


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket before loading the model, so a busy port fails at once."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
    except OSError as exc:
        sock.close()
        hint = "; choose another with --port" if exc.errno in (98, 48) else ""
        raise ValueError(f"cannot listen on {host}:{port} ({exc.strerror}){hint}") from None
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def banner(url: str, model, config: ServeConfig) -> str:
    auth = f' -H "Authorization: Bearer $(cat {config.token_file})"' if config.token_file else ""
    example = json.dumps({"prompt": "How do I boil an egg?",
                          "responses": ["Simmer it for 9 minutes, then cool it in cold water.", "idk, google it"]})
    note = "" if model.trained else ("\nnote: this model's reward head is untrained (random); "
                                     "train one with `rmcore train`.")
    return (f"rmcore serve: {model.name} ({model.device}, {model.dtype}, max length {model.max_length}) on {url}\n"
            f"  POST {url}/score   POST {url}/get_reward (OpenRLHF --remote_rm_url)   GET {url}/health   "
            f"GET {url}/metrics\n"
            f"try:\n  curl -s {url}/score{auth} -H 'Content-Type: application/json' -d '{example}'{note}\n"
            "Ctrl-C stops it (requests already received are answered first).")


def run(config: ServeConfig) -> int:
    """Load the model, serve until SIGTERM or Ctrl-C, answer what is in flight, return 0."""
    import uvicorn

    from rmcore.model.reward_model import RewardModel

    token = read_token(config.token_file) if config.token_file else None
    sock = bind(config.host, config.port)
    try:
        model = RewardModel.load(config.model, max_length=config.max_length, dtype=config.dtype)
        service = RewardService(model, config, token)
        if token is None and sock.getsockname()[0] not in ("127.0.0.1", "::1"):
            print(f"warning: listening on {config.host} without --token-file: anyone who can reach this machine "
                  "can use the model", file=sys.stderr)
        server = uvicorn.Server(uvicorn.Config(service.app, log_level="warning", access_log=False,
                                               timeout_graceful_shutdown=None, lifespan="on"))
        print(banner(url_of(sock), model, config), flush=True)
        # uvicorn handles SIGTERM and SIGINT while it runs, then raises them again for the handlers it
        # found: make those handlers "already stopped" so a graceful stop exits with status 0.
        previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            server.run(sockets=[sock])
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        sock.close()
    print("rmcore serve: stopped", file=sys.stderr, flush=True)
    return 0


def _stopped(signum, frame) -> None:
    """A signal after uvicorn has shut down: nothing is left to stop."""


def main(args: argparse.Namespace) -> int:
    return run(config_from_args(args))
