"""Dynamic batching for `rmcore serve`: one worker thread owns the model and scores every queued request
together, merged by prompt and packed under a token budget; a failure stays with its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from rmcore.data.encoding import EncodedGroup
from rmcore.model.attention import supports_prefix
from rmcore.model.batching import split_by_tokens
from rmcore.model.reward_model import unwrap_classifier
from rmcore.serving.protocol import ApiError


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
        self.non_finite = 0  # rewards that were NaN or infinite (answered as null)
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
        metric("rmcore_non_finite_total", "counter", "Rewards that were NaN or infinite, answered as null.",
               [("", stats.non_finite)])
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
