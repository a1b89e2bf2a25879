"""The requests `rmcore serve` takes, checked before anything is queued: /score bodies, OpenRLHF's
/get_reward texts split where the chat template opens the assistant turn, and the one-line errors.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rmcore.data import RankedGroup
from rmcore.data.encoding import EncodedGroup, apply_template, encode_group, render_prompt, render_response
from rmcore.serving.config import ServeConfig


class ApiError(Exception):
    """A request the server refuses: the HTTP status and one line saying what is wrong and where."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


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
            without = apply_template(tokenizer, messages, add_generation_prompt=False)
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


_SURROGATE = re.compile("[\ud800-\udfff]")  # "\ud800" in JSON: half of a UTF-16 pair, not a character


def _check_text(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ApiError(422, f"{where} must be a string, got {_json_type(value)}")
    if len(value) > limit:
        raise ApiError(413, f"{where} has {len(value)} characters, more than this server's limit of {limit} "
                            "(--max-text-chars)")
    bad = _SURROGATE.search(value)
    if bad:
        raise ApiError(422, f"{where} holds a lone UTF-16 surrogate (\\u{ord(bad.group()):04x}) at character "
                            f"{bad.start()}, which is not a character; send valid Unicode text")
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
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply (thousands of brackets) to be a request") from None
    except ValueError:  # Python refuses to read an integer of more than 4,300 digits
        raise ApiError(400, "the body holds a number with thousands of digits; no field of a request is a "
                            "number") from None
    if not isinstance(body, dict):
        raise ApiError(422, f"the body must be a JSON object, got {_json_type(body)}")
    return body
