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
request already received (waiting at most --shutdown-timeout seconds for them: a client stalled
half-way through its body is dropped), then exits with status 0.
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
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from rmcore import __version__
from rmcore.data.encoding import EncodedGroup
from rmcore.model.reward_model import RewardModel, ScoreResult, preference_matrix
from rmcore.serving.batcher import Batcher, Stats, prometheus_text
from rmcore.serving.config import ServeConfig, config_from_args, read_token
from rmcore.serving.protocol import (
    ApiError,
    TemplateShape,
    encode_rendered,
    parse_reward_request,
    parse_score_request,
    read_json_body,
)


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
            except asyncio.CancelledError:  # a stop past --shutdown-timeout: a client stalled mid-body
                response = _error_response(ApiError(503, "the server stopped before this request was received "
                                                         "whole (--shutdown-timeout)", {"Connection": "close"}))
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
        self._count_cuts(len(responses) if group.prompt_truncated else len(group.truncated), 0)
        bad = self._non_finite(rewards)
        if bad:  # NaN cannot be written as JSON: null, and the indexes said in `non_finite`
            return JSONResponse(_non_finite_score(rewards, bad, self.model.trained, group))
        best = max(range(len(rewards)), key=rewards.__getitem__)
        result = ScoreResult(rewards, preference_matrix(rewards), best, self.model.trained, group.prompt_truncated,
                             list(group.truncated))
        return JSONResponse(result.to_dict())

    async def get_reward(self, request):
        body = await read_json_body(request, self.config.max_body_bytes)
        texts = parse_reward_request(body, self.config)
        groups, unparsed = await asyncio.to_thread(self.encode_texts, texts)
        rewards = [reward for [reward] in await self.batcher.score(groups)]
        truncated = [i for i, group in enumerate(groups) if group.prompt_truncated or group.truncated]
        self._count_cuts(len(truncated), len(unparsed))
        bad = self._non_finite(rewards)
        shown = [None if i in bad else r for i, r in enumerate(rewards)]
        answer = {"rewards": shown, "scores": shown,
                  "extra_logs": {"rm_truncated": [float(i in truncated) for i in range(len(texts))]},
                  "truncated": truncated, "unparsed": unparsed}
        if bad:
            answer["non_finite"] = bad
        return JSONResponse(answer)

    def _non_finite(self, rewards: list[float]) -> list[int]:
        """Indexes of rewards that are NaN or infinite (weights that overflow on a text); counted, and said
        once in the server's log."""
        bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
        if bad:
            with self.stats.lock:
                first = self.stats.non_finite == 0
                self.stats.non_finite += len(bad)
            if first:
                print(f"warning: {self.model.name} gave a non-finite reward ({rewards[bad[0]]}); such rewards are "
                      "answered as null and listed in 'non_finite'", file=sys.stderr, flush=True)
        return bad

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
        return JSONResponse({"status": "ok", "model": self.model.name, "trained": self.model.trained,
                             "device": str(self.model.device), "dtype": self.model.dtype,
                             "max_length": self.model.max_length, "chat_template_header": self.shape.header,
                             "rmcore": __version__, "uptime_s": round(time.time() - self.stats.started, 1)})

    async def metrics(self, request):
        return PlainTextResponse(prometheus_text(self.stats, self.batcher, self.model),
                                 media_type="text/plain; version=0.0.4")


def _non_finite_score(rewards: list[float], bad: list[int], trained: bool, group: EncodedGroup) -> dict[str, Any]:
    """A /score answer whose rewards are not all finite: those are null (and listed in `non_finite`), as are
    the probabilities that involve them; `best` is the best finite one (null when none is)."""
    good = [i for i in range(len(rewards)) if i not in bad]
    matrix = preference_matrix([0.0 if i in bad else r for i, r in enumerate(rewards)])
    probabilities = [[None if i in bad or j in bad else p for j, p in enumerate(row)] for i, row in enumerate(matrix)]
    return {"rewards": [None if i in bad else r for i, r in enumerate(rewards)], "probabilities": probabilities,
            "best": max(good, key=rewards.__getitem__) if good else None, "trained": trained,
            "truncated_prompt": group.prompt_truncated, "truncated_responses": list(group.truncated),
            "non_finite": bad}


def _error_response(error: ApiError):
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


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
    token = read_token(config.token_file) if config.token_file else None
    sock = bind(config.host, config.port)
    try:
        model = RewardModel.load(config.model, max_length=config.max_length, dtype=config.dtype)
        service = RewardService(model, config, token)
        if token is None and sock.getsockname()[0] not in ("127.0.0.1", "::1"):
            print(f"warning: listening on {config.host} without --token-file: anyone who can reach this machine "
                  "can use the model", file=sys.stderr)
        # A stop waits for the requests in flight at most --shutdown-timeout seconds: a client that stalls
        # half-way through its body must not keep the server alive (uvicorn then cancels what is left).
        server = uvicorn.Server(uvicorn.Config(service.app, log_level="warning", access_log=False,
                                               timeout_graceful_shutdown=config.shutdown_timeout, lifespan="on"))
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
