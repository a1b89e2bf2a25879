"""Turn (prompt, responses) into token ids, identically for training, scoring and evaluation.

The text a reward model sees is the chat-template rendering of the conversation with the response
as the assistant's turn, exactly as `tokenizer.apply_chat_template` writes it, so the saved model
gives the same reward through `transformers.pipeline` on that text. The prompt part (everything up
to the assistant's turn) is tokenized once per group and shared by its K responses.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, replace

from rmcore.core.errors import ModelError
from rmcore.data.formats import Message, RankedGroup, ordered_pairs

# Tokens of prompt + one response when nobody says otherwise: training's default (TrainConfig) and
# the length a model that does not record its own is read at.
DEFAULT_MAX_LENGTH = 512
_SURROGATE = re.compile("[\ud800-\udfff]")  # not characters: a Rust tokenizer refuses the whole text
_MESSAGE_OVERHEAD = 16  # characters a chat template adds around one message, counted generously
_longest_token: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class EncodedGroup:
    """Token ids of one group: the shared prompt and each response's continuation."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    ranks: list[int | None]
    margin: float = 0.0
    prompt_truncated: bool = False
    truncated: tuple[int, ...] = ()  # indexes of the responses whose end was cut

    @property
    def responses_truncated(self) -> int:
        return len(self.truncated)

    @property
    def num_tokens(self) -> int:
        """Tokens in the packed row: the prompt once plus every response."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)

    @property
    def unshared_tokens(self) -> int:
        """Tokens if each response were a separate sequence repeating the prompt."""
        return sum(len(self.prompt_ids) + len(r) for r in self.response_ids)

    def pairs(self) -> list[tuple[int, int]]:
        return ordered_pairs(self.ranks)


def _fallback_prompt(messages: list[Message]) -> str:
    """For tokenizers without a chat template: a plain 'Role: text' transcript."""
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return turns + "Assistant:"


class ChatTemplateError(ModelError):
    """A model's chat template that fails. Transformers renders templates in jinja2's sandbox, so a
    template that tries to reach Python (or the shell) is stopped there: the message says so, in one line."""


def template_problem(tokenizer, exc: Exception) -> str:
    """One line naming the model folder and what its chat template did wrong."""
    folder = getattr(tokenizer, "name_or_path", "") or "the model"
    detail = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
    kind = type(exc).__name__
    if kind == "TemplateSyntaxError":
        line = getattr(exc, "lineno", None)
        return (f"{folder}: its chat template has a syntax error ({f'line {line}: ' if line else ''}{detail}); "
                "nothing was rendered: fix chat_template (chat_template.jinja or tokenizer_config.json)")
    if kind == "SecurityError":
        return (f"{folder}: its chat template tried to do something jinja2's sandbox forbids ({detail}); the "
                "sandbox stopped it and no code ran; do not use this template")
    if kind == "TemplateError":  # the template's own raise_exception(...)
        return (f"{folder}: its chat template refused the conversation: {detail} (it ran in jinja2's sandbox; "
                "no code ran)")
    return (f"{folder}: its chat template failed ({kind}: {detail}); it ran in jinja2's sandbox, so no code "
            "ran; fix the template")


def apply_template(tokenizer, messages: list[Message], add_generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except ChatTemplateError:
        raise
    except Exception as exc:  # jinja2 raises many types, and a template can raise its own
        raise ChatTemplateError(template_problem(tokenizer, exc)) from None


TEMPLATE_CHECK_SECONDS = 10.0  # a real template renders a one-line exchange in milliseconds


def check_chat_template(tokenizer, within_s: float | None = None) -> None:
    """Render a one-turn conversation and its reply once, so a broken template is refused when the
    model loads, in one line naming the folder, not in the middle of a run.

    jinja2's sandbox stops code from running but not loops (nested `range(100000)` loops spin for
    hours), so the trial render has `within_s` seconds (TEMPLATE_CHECK_SECONDS): it runs in a daemon
    thread, and a template still rendering then is refused (the thread cannot be stopped; it ends with
    the process)."""
    if not getattr(tokenizer, "chat_template", None):
        return
    messages, outcome = [{"role": "user", "content": "Hi"}], {}

    def trial() -> None:
        try:
            render_response(tokenizer, messages, "Hello", render_prompt(tokenizer, messages))
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc
        outcome["done"] = True

    thread = threading.Thread(target=trial, name="rmcore-template-check", daemon=True)
    thread.start()
    thread.join(TEMPLATE_CHECK_SECONDS if within_s is None else within_s)
    if "done" not in outcome:
        folder = getattr(tokenizer, "name_or_path", "") or "the model"
        raise ChatTemplateError(f"{folder}: its chat template did not finish rendering a one-line exchange in "
                                f"{TEMPLATE_CHECK_SECONDS if within_s is None else within_s:g} s (a loop that runs "
                                "for ever?); refused: fix chat_template (chat_template.jinja or tokenizer_config.json)")
    if "error" in outcome:
        raise outcome["error"]


def render_prompt(tokenizer, messages: list[Message]) -> str:
    """The text before the response: the conversation plus the assistant-turn header."""
    if getattr(tokenizer, "chat_template", None):
        return apply_template(tokenizer, messages, add_generation_prompt=True)
    return _fallback_prompt(messages)


def render_response(tokenizer, messages: list[Message], response: str, prompt_text: str | None = None) -> str:
    """The text the response adds after `render_prompt` (content plus end-of-turn markers)."""
    if getattr(tokenizer, "chat_template", None):
        prompt_text = prompt_text if prompt_text is not None else render_prompt(tokenizer, messages)
        full = apply_template(tokenizer, messages + [{"role": "assistant", "content": response}],
                               add_generation_prompt=False)
        if full.startswith(prompt_text):
            return full[len(prompt_text) :]
        return response + (tokenizer.eos_token or "")
    return " " + response + (tokenizer.eos_token or "")


def render_text(tokenizer, messages: list[Message], response: str) -> str:
    """The whole text a reward is read from; give this to a text-classification pipeline."""
    prompt_text = render_prompt(tokenizer, messages)
    return prompt_text + render_response(tokenizer, messages, response, prompt_text)


def split_at_shared_prompt(tokenizer, prompt_text: str, full_texts: list[str]) -> tuple[list[int], list[list[int]]]:
    """Tokenize each whole text once and split it where the tokens stop being shared by every text.

    A response's tokens are those of its whole rendered text, as a pipeline or TRL's reward-model
    path tokenizes `render_text`: tokenizing the prompt and the response apart differs when the
    tokenizer merges across the boundary (a response starting with "  " or "\\n\\n" after the
    header's "\\n"). The shared prompt is then one or two tokens shorter; rewards are unchanged.
    """
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(full_texts, add_special_tokens=True)["input_ids"]
    shared = len(prompt_ids)
    for ids in full_ids:
        shared = min(shared, len(ids) - 1)  # every response keeps at least one token
        while shared and ids[:shared] != prompt_ids[:shared]:
            shared -= 1
    return prompt_ids[:shared], [ids[shared:] for ids in full_ids]


def encode_group(tokenizer, group: RankedGroup, max_length: int) -> EncodedGroup:
    """Tokenize a group; over-long rows lose prompt tokens from the left first, then response tail.

    Every response of a group shares one prompt, so the prompt is cut to fit the longest response.
    It keeps at least a quarter of `max_length` (when it has that many) before responses are cut.
    """
    # Text far past max_length tokens is cut by characters first (tokenizing a 50 MB line costs gigabytes).
    chars = max_chars(tokenizer, max_length)
    prompt = clip_prompt(group.prompt, chars)
    responses = [_clean(r[:chars]) for r in group.responses]
    prompt_text = render_prompt(tokenizer, prompt)
    prompt_ids, response_ids = split_at_shared_prompt(tokenizer, prompt_text, [
        prompt_text + render_response(tokenizer, prompt, r, prompt_text) for r in responses
    ])
    longest = max(len(r) for r in response_ids)
    prompt_truncated = False
    truncated: list[int] = []
    if len(prompt_ids) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt_ids), max_length // 4))
        if keep < len(prompt_ids):
            prompt_ids = prompt_ids[len(prompt_ids) - keep :]
            prompt_truncated = True
        room = max_length - len(prompt_ids)
        for i, ids in enumerate(response_ids):
            if len(ids) > room:
                response_ids[i] = ids[:room]
                truncated.append(i)
    return EncodedGroup(
        prompt_ids, response_ids, list(group.ranks), group.margin, prompt_truncated, tuple(truncated)
    )


def max_chars(tokenizer, max_length: int) -> int:
    """Characters that surely hold more than `max_length` tokens.

    No token is longer than the vocabulary's longest entry, so text past this many characters
    would be cut after tokenizing anyway; cutting it before gives the same tokens, cheaply.
    """
    longest = _longest_token.get(tokenizer)
    if longest is None:
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        longest = max(map(len, vocab), default=64)
        try:
            _longest_token[tokenizer] = longest
        except TypeError:  # not weak-referenceable: computed again next time
            pass
    return (max_length + _MESSAGE_OVERHEAD) * max(longest, 1)


def clip_prompt(messages: list[Message], chars: int) -> list[Message]:
    """The prompt's last `chars` characters as messages (a prompt is cut from the left).

    Earlier messages that cannot reach the kept tokens are dropped, a long message keeps its end,
    and lone surrogates (not characters) become U+FFFD.
    """
    kept: list[Message] = []
    budget = chars
    for message in reversed(messages):
        if budget <= 0:
            break
        content = message["content"]
        if len(content) > budget:
            content = content[len(content) - budget :]
        budget -= len(content) + _MESSAGE_OVERHEAD
        kept.append({**message, "content": _clean(content)})
    return kept[::-1]


def last_turns(messages: list[Message], n: int | None) -> list[Message]:
    """The end of a dialogue: its last `n` messages (a turn is one message), less a leading assistant
    message, so the kept part starts with a user turn and ends where the prompt ends (the user's last
    message). A leading system message is kept: it conditions every turn. `None` keeps everything.

    Why: in multi-turn data most prompt tokens are earlier turns; a time budget that cannot cover every
    comparison fits more of them on the last turns (rmcore.training.budget). Returns `messages` itself
    when nothing is cut, so a caller can reuse what it encoded before."""
    system = 1 if messages and messages[0]["role"] == "system" else 0
    if n is None or len(messages) - system <= n:
        return messages
    kept = messages[len(messages) - n :]
    while len(kept) > 1 and kept[0]["role"] != "user":
        kept = kept[1:]
    return messages[:system] + kept


def encode_last_turns(tokenizer, groups: list[RankedGroup], n: int | None, max_length: int,
                      whole: list[EncodedGroup] | None = None) -> tuple[list[RankedGroup], list[EncodedGroup]]:
    """`groups` cut to their last `n` turns (`last_turns`) and encoded. `whole` (their encodings uncut,
    when known) is reused for the groups the cut leaves alone: short dialogues cost nothing to re-plan."""
    cut_groups, cut_encoded = [], []
    for i, group in enumerate(groups):
        prompt = last_turns(group.prompt, n)
        cut = group if prompt is group.prompt else replace(group, prompt=prompt)
        reuse = cut is group and whole is not None
        cut_groups.append(cut)
        cut_encoded.append(whole[i] if reuse else encode_group(tokenizer, cut, max_length))
    return cut_groups, cut_encoded


def _clean(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def encode_groups(tokenizer, groups: list[RankedGroup], max_length: int) -> list[EncodedGroup]:
    return [encode_group(tokenizer, g, max_length) for g in groups]


def count_truncated(encoded: list[EncodedGroup]) -> tuple[int, int]:
    """(prompts truncated, responses truncated), for the validation report."""
    return sum(e.prompt_truncated for e in encoded), sum(e.responses_truncated for e in encoded)
