"""Sample n answers per prompt from a policy (a causal LM), batched, with the KV cache.

The raw material of best-of-n and of RLHF: many answers to the same prompts. Prompts are rendered
with the same chat template rmcore scores with (rmcore.data.encoding.render_prompt), and an answer ends
where the policy emits its end-of-turn token; an answer that runs into `max_new_tokens` first is
marked `hit_limit` (it was cut, and a reward model may judge the cut).

`write_samples` appends one record per prompt to a JSONL file in rmcore's unranked-candidates
format (prompt, responses), so `rmcore score --data` reads it; a rerun with the same settings
skips the prompts already there, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from rmcore.core.errors import DataError, ModelError
from rmcore.core.files import read_small_file
from rmcore.data.encoding import clip_prompt, max_chars, render_prompt
from rmcore.data.prompts import Prompt, as_messages, prompt_key
from rmcore.data.records import decode, limits
from rmcore.policy.config import MAX_ANSWERS_PER_PROMPT, SEQUENCES_PER_CALL, check_seed

MAX_SEQUENCES_PER_CALL = 4096  # sequences generated together; more would only run out of memory
MAX_PROMPT_TOKENS = 1024  # a longer prompt is cut from the left (as a reward model cuts one), and reported


@dataclass
class Sample:
    text: str  # the answer as the user reads it (special tokens removed, stripped)
    tokens: list[int]  # answer token ids as generated, up to and including the end-of-turn token if emitted
    hit_limit: bool  # True when the answer ran into max_new_tokens before its end-of-turn token

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


@dataclass
class SamplingSettings:
    """What makes two sampling runs interchangeable (a file is resumed only with the same settings)."""

    model: str
    n: int
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int

    def check(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.n > MAX_ANSWERS_PER_PROMPT:
            raise ValueError(f"--n must be at most {MAX_ANSWERS_PER_PROMPT} answers per prompt (a prompt's answers are "
                             f"one record, held in memory), got {self.n:,}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be above 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        check_seed(self.seed)


# ----------------------------------------------------------------------------- the policy's tokens


def end_token_ids(tokenizer, model=None) -> list[int]:
    """Every token that ends a turn: the tokenizer's EOS, the model's, and ChatML's <|im_end|>."""
    ids = {tokenizer.eos_token_id}
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def prompt_token_ids(tokenizer, prompt: Prompt, max_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    """The prompt as the policy sees it: rendered with the chat template, up to the assistant header,
    cut from the left to its last `max_tokens` tokens (as a reward model cuts a long prompt)."""
    return _prompt_ids(tokenizer, prompt, max_tokens)[0]


def _prompt_ids(tokenizer, prompt: Prompt, max_tokens: int) -> tuple[list[int], bool]:
    """(token ids, whether the prompt was cut). A text far past `max_tokens` is cut by characters first,
    so a 5 MB prompt costs what its last few thousand characters cost."""
    messages = as_messages(prompt)
    clipped = clip_prompt(messages, max_chars(tokenizer, max_tokens))
    ids = tokenizer(render_prompt(tokenizer, clipped), add_special_tokens=True)["input_ids"]
    return ids[-max_tokens:], len(ids) > max_tokens


def prompts_cut(tokenizer, prompts: list[Prompt], max_tokens: int = MAX_PROMPT_TOKENS) -> int:
    """How many of the prompts are longer than `max_tokens` tokens (sampling keeps their last ones)."""
    return sum(_prompt_ids(tokenizer, p, max_tokens)[1] for p in prompts)


def check_context(policy_model, max_new_tokens: int) -> None:
    """Refuse more new tokens than the policy can read after a prompt (its position limit)."""
    config = getattr(policy_model, "config", None)
    text = getattr(config, "text_config", None) or config
    context = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    if isinstance(context, int) and max_new_tokens + MAX_PROMPT_TOKENS > context:
        raise ValueError(f"--max-new-tokens {max_new_tokens:,}: the policy reads at most {context:,} tokens (its "
                         f"max_position_embeddings) and a prompt takes up to {MAX_PROMPT_TOKENS:,} of them, so at "
                         f"most {max(context - MAX_PROMPT_TOKENS, 1):,} new tokens")


# ----------------------------------------------------------------------------- sampling


@torch.inference_mode()
def sample(policy_model, tokenizer, prompts: list[Prompt], n: int, max_new_tokens: int = 96,
           temperature: float = 1.0, seed: int = 0, *, top_p: float = 1.0,
           sequences_per_call: int = SEQUENCES_PER_CALL,
           on_progress: Callable[[float, int], None] | None = None,
           stop_event: threading.Event | None = None) -> list[list[Sample]]:
    """n sampled answers for each prompt, in prompt order; reproducible for a seed.

    Prompts are generated together (left-padded, n sequences each) so that about
    `sequences_per_call` sequences share a `generate` call. `on_progress(prompts_done, total)` is
    called at every generated token (prompts_done is fractional inside a call); a set
    `stop_event` returns the prompts finished so far.
    """
    results: list[list[Sample]] = []

    def on_token(done: float) -> None:
        if on_progress is not None:
            on_progress(done, len(prompts))

    for chunk in iter_samples(policy_model, tokenizer, prompts, n, max_new_tokens, temperature, seed,
                              top_p=top_p, sequences_per_call=sequences_per_call,
                              on_token=on_token if on_progress is not None else None):
        results.extend(chunk)
        if on_progress is not None:
            on_progress(len(results), len(prompts))
        if stop_event is not None and stop_event.is_set():
            break
    return results


def iter_samples(policy_model, tokenizer, prompts: list[Prompt], n: int, max_new_tokens: int,
                 temperature: float, seed: int, *, top_p: float = 1.0, first_index: int = 0,
                 sequences_per_call: int = SEQUENCES_PER_CALL,
                 on_token: Callable[[float], None] | None = None) -> Iterator[list[list[Sample]]]:
    """Yield the samples of a few prompts at a time (one `generate` call each).

    The random seed of a call is derived from `seed` and the index of its first prompt
    (`first_index` + position), so a resumed run draws what an uninterrupted one would when it
    resumes at a call boundary. `on_token(prompts_done)` is called at every generated token with
    a fractional count of prompts done (a call's prompts count as done in proportion to its
    tokens), so progress moves during a long call.
    """
    SamplingSettings("", n, max_new_tokens, temperature, top_p, seed).check()
    if not 1 <= sequences_per_call <= MAX_SEQUENCES_PER_CALL:
        raise ValueError(f"--sequences-per-call must be from 1 to {MAX_SEQUENCES_PER_CALL}, got {sequences_per_call:,}")
    check_context(policy_model, max_new_tokens)
    per_call = max(1, sequences_per_call // n)
    calls = math.ceil(n / sequences_per_call)  # above sequences_per_call, one prompt's answers take several calls
    for start in range(0, len(prompts), per_call):
        part = prompts[start : start + per_call]
        size = len(part)
        answers: list[list[Sample]] = [[] for _ in part]
        for call in range(calls):
            torch.manual_seed(_call_seed(seed, first_index + start, call))
            count = min(sequences_per_call, n - call * sequences_per_call)
            ticker = None
            if on_token is not None:
                def ticker(step: int, start=start, size=size, call=call) -> None:
                    on_token(start + size * (call + min(step, max_new_tokens) / max_new_tokens) / calls)
            for mine, more in zip(answers, _generate(policy_model, tokenizer, part, count, max_new_tokens,
                                                     temperature, top_p, ticker)):
                mine.extend(more)
        yield answers


def _call_seed(seed: int, index: int, call: int) -> int:
    """The random seed of a generate call: from the seed and its first prompt's index, and for the second
    and later calls of one prompt's answers (n above --sequences-per-call), a hash of the three."""
    if call == 0:
        return seed * 1_000_003 + index
    digest = hashlib.sha256(f"{seed}:{index}:{call}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def _token_ticker(callback: Callable[[int], None]):
    """A stopping criterion that never stops: it counts generated tokens for progress reports."""
    from transformers import StoppingCriteria  # transformers: half a second to import; reading samples needs none

    class TokenTicker(StoppingCriteria):
        def __init__(self):
            self.step = 0

        def __call__(self, input_ids, scores, **kwargs):
            self.step += 1
            callback(self.step)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return TokenTicker()


def _generate(model, tokenizer, prompts: list[Prompt], n: int, max_new_tokens: int, temperature: float,
              top_p: float, on_step: Callable[[int], None] | None = None) -> list[list[Sample]]:
    device = next(model.parameters()).device
    encoded = [prompt_token_ids(tokenizer, p) for p in prompts]
    width = max(len(ids) for ids in encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # left padding, so every prompt ends where generation starts
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)  # (P, T)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
    ends = end_token_ids(tokenizer, model)
    try:
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=True, temperature=temperature,
            top_p=top_p, top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=n, use_cache=True,
            pad_token_id=pad_id, eos_token_id=ends,
            stopping_criteria=[_token_ticker(on_step)] if on_step is not None else None,
        )  # (P * n, T + new): the n answers of a prompt are consecutive rows
    except (RuntimeError, MemoryError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(f"generation failed ({type(exc).__name__}: {detail}); if memory ran out, lower "
                         "--sequences-per-call, --n or --max-new-tokens") from None
    new_tokens = output[:, width:].tolist()
    samples = [_to_sample(tokenizer, row, ends) for row in new_tokens]
    return [samples[i * n : (i + 1) * n] for i in range(len(prompts))]


def _to_sample(tokenizer, row: list[int], ends: list[int]) -> Sample:
    end = next((i for i, token in enumerate(row) if token in ends), None)
    tokens = row if end is None else row[: end + 1]
    text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Sample(text, tokens, end is None)


# ----------------------------------------------------------------------------- samples files


def sample_record(prompt: Prompt, samples: list[Sample], settings: SamplingSettings) -> dict[str, Any]:
    """One line of a samples file: an unranked-candidates record plus what a reader of samples needs."""
    return {
        "prompt": prompt,
        "responses": [s.text for s in samples],
        "num_tokens": [s.num_tokens for s in samples],
        "hit_limit": [s.hit_limit for s in samples],
        "sampling": asdict(settings),
    }


def json_line(record: dict[str, Any]) -> str:
    """One JSON line. U+2028, U+2029 and U+0085 are escaped: JSON allows them raw in a string, but readers
    that split on every line end (Python's str.splitlines, many editors) would cut the record there."""
    text = json.dumps(record, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\u0085", "\\u0085") + "\n"


def _samples_text(path: Path) -> str:
    """The text of a samples file, read as data files are: a regular file, under the size limit, UTF-8."""
    raw = read_small_file(path, limits().max_bytes, str(path), kind="samples file", fail=DataError)
    return decode(raw, str(path)) if raw.strip() else ""


def read_samples_located(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """("PATH:LINE", record) of each complete record of a samples file (a cut-off last line from an
    interrupted write is left out); a file that is not a samples file is refused."""
    path = Path(path)
    records = []
    lines = _samples_text(path).split("\n")  # not splitlines(): U+2028 may be inside a JSON string
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            if number == len(lines):  # the write that was interrupted
                break
            raise DataError(f"{path}:{number}", "not valid JSON; is this a samples file from rmcore sample?") from None
        if not isinstance(record, dict) or "responses" not in record or not isinstance(record.get("sampling"), dict):
            raise DataError(f"{path}:{number}", "not a samples record (prompt, responses, sampling); "
                                                "rmcore sample writes only to a new file or to its own samples file")
        records.append((f"{path}:{number}", record))
    return records


def read_samples_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of a samples file (a cut-off last line from an interrupted write is left out)."""
    return [record for _, record in read_samples_located(path)]


def sample_record_problem(record: dict[str, Any]) -> str | None:
    """Why a samples record cannot be scored (best-of-n reads prompt, responses, num_tokens, hit_limit), or None."""
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and
                                 isinstance(m.get("content"), str) for m in prompt):
            return "'prompt' must be text or a non-empty list of {role, content} messages"
    elif not isinstance(prompt, str) or not prompt.strip():
        return "'prompt' is missing" if prompt is None else f"'prompt' must be text, found {_kind(prompt)}"
    responses = record.get("responses")
    if not isinstance(responses, list) or not responses:
        return "'responses' must be a non-empty list of answers, found " + (
            "an empty list" if responses == [] else _kind(responses))
    if not all(isinstance(r, str) for r in responses):
        return "every response must be text"
    for key, kind in (("num_tokens", "whole numbers >= 0"), ("hit_limit", "true/false")):
        values = record.get(key)
        if values is None:
            continue
        good = isinstance(values, list) and all(
            (isinstance(v, bool) if key == "hit_limit" else isinstance(v, int) and not isinstance(v, bool) and v >= 0)
            for v in values)
        if not good:
            return f"'{key}' must be a list of {kind}, one per response"
        if len(values) != len(responses):
            return f"'{key}' has {len(values)} entries for {len(responses)} responses"
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {str: "text", dict: "an object", list: "a list", bool: "true/false"}.get(type(value), "a number")


def prompts_done(path: Path, settings: SamplingSettings) -> set[str]:
    """Keys of the prompts already in `path`; refuse a file that is not a samples file of these settings."""
    if not path.exists() and not path.is_symlink():
        return set()
    if path.is_dir():
        raise DataError(str(path), "is a folder; --out must be a .jsonl file")
    records = read_samples_file(path)  # refuses a named pipe or a device without opening it for long
    if not records:
        raise DataError(str(path), "exists and holds no samples record; rmcore sample never writes over a file: "
                                   "choose a new --out file")
    wanted = asdict(settings)
    for record in records:
        if record["sampling"] != wanted:
            differ = sorted(k for k in wanted if record["sampling"].get(k) != wanted[k])
            verb = "differs" if len(differ) == 1 else "differ"
            raise DataError(str(path), f"already holds samples made with other settings ({', '.join(differ)} "
                                       f"{verb}); choose a new --out file, or the same settings to continue it")
        if not isinstance(record.get("prompt"), (str, list)):
            raise DataError(str(path), "holds a record without a prompt; rmcore sample writes only to a new file "
                                       "or to its own samples file")
    return {prompt_key(r["prompt"]) for r in records}


def write_samples(policy_model, tokenizer, prompts: list[Prompt], out_path: str | os.PathLike,
                  settings: SamplingSettings, *, sequences_per_call: int = SEQUENCES_PER_CALL,
                  on_progress: Callable[[float, int], None] | None = None) -> tuple[int, int]:
    """Append the samples of the prompts not yet in `out_path`; returns (prompts written, prompts skipped).

    Each generate call's prompts are written and flushed as soon as they are done, so a killed
    run loses at most one call's work.
    """
    settings.check()
    out_path = Path(out_path)
    done = prompts_done(out_path, settings)
    todo = [p for p in prompts if prompt_key(p) not in done]
    skipped = len(prompts) - len(todo)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _drop_partial_line(out_path)
    written = 0
    first_index = skipped  # seeds follow the prompt's position in the whole run
    if on_progress is not None:
        on_progress(skipped, len(prompts))
    def on_token(done_in_run: float) -> None:
        if on_progress is not None:
            on_progress(skipped + done_in_run, len(prompts))

    for chunk in iter_samples(policy_model, tokenizer, todo, settings.n, settings.max_new_tokens,
                              settings.temperature, settings.seed, top_p=settings.top_p,
                              first_index=first_index, sequences_per_call=sequences_per_call,
                              on_token=on_token if on_progress is not None else None):
        lines = "".join(json_line(sample_record(prompt, samples, settings))
                        for prompt, samples in zip(todo[written : written + len(chunk)], chunk, strict=True))
        with out_path.open("a", encoding="utf-8") as out:  # opened per call: no empty file before the first
            out.write(lines)
        written += len(chunk)
        if on_progress is not None:
            on_progress(skipped + written, len(prompts))
    return written, skipped


def _drop_partial_line(path: Path) -> None:
    """Make appending start on a clean line: an unterminated last line that is a whole record (a file
    edited by hand, or copied without its final newline) gets its newline; one cut off by a write
    killed half-way is removed (read_samples_file leaves it out too, so its prompt is sampled again)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = read_small_file(path, limits().max_bytes, str(path), kind="samples file", fail=DataError)
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    if _is_json(data[keep:]):
        with path.open("ab") as handle:
            handle.write(b"\n")
        return
    with path.open("r+b") as handle:
        handle.truncate(keep)


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
