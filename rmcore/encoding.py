"""Turn (prompt, responses) into token ids, identically for training, scoring and evaluation.

The text a reward model sees is the chat-template rendering of the conversation with the response
as the assistant's turn, exactly as `tokenizer.apply_chat_template` writes it, so the saved model
gives the same reward through `transformers.pipeline` on that text. The prompt part (everything up
to the assistant's turn) is tokenized once per group and shared by its K responses.
"""

from __future__ import annotations

from dataclasses import dataclass

from rmcore.data import Message, RankedGroup


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
        return RankedGroup([], [""] * len(self.ranks), self.ranks).pairs()


def _fallback_prompt(messages: list[Message]) -> str:
    """For tokenizers without a chat template: a plain 'Role: text' transcript."""
    turns = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return turns + "Assistant:"


def render_prompt(tokenizer, messages: list[Message]) -> str:
    """The text before the response: the conversation plus the assistant-turn header."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _fallback_prompt(messages)


def render_response(tokenizer, messages: list[Message], response: str, prompt_text: str | None = None) -> str:
    """The text the response adds after `render_prompt` (content plus end-of-turn markers)."""
    if getattr(tokenizer, "chat_template", None):
        prompt_text = prompt_text if prompt_text is not None else render_prompt(tokenizer, messages)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response}], tokenize=False
        )
        if full.startswith(prompt_text):
            return full[len(prompt_text) :]
        return response + (tokenizer.eos_token or "")
    return " " + response + (tokenizer.eos_token or "")


def render_text(tokenizer, messages: list[Message], response: str) -> str:
    """The whole text a reward is read from; give this to a text-classification pipeline."""
    prompt_text = render_prompt(tokenizer, messages)
    return prompt_text + render_response(tokenizer, messages, response, prompt_text)


def encode_group(tokenizer, group: RankedGroup, max_length: int) -> EncodedGroup:
    """Tokenize a group; over-long rows lose prompt tokens from the left first, then response tail.

    Every response of a group shares one prompt, so the prompt is cut to fit the longest response.
    It keeps at least a quarter of `max_length` (when it has that many) before responses are cut.
    """
    prompt_text = render_prompt(tokenizer, group.prompt)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"]
    response_texts = [render_response(tokenizer, group.prompt, r, prompt_text) for r in group.responses]
    response_ids = tokenizer(response_texts, add_special_tokens=False)["input_ids"]
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


def encode_groups(tokenizer, groups: list[RankedGroup], max_length: int) -> list[EncodedGroup]:
    return [encode_group(tokenizer, g, max_length) for g in groups]


def count_truncated(encoded: list[EncodedGroup]) -> tuple[int, int]:
    """(prompts truncated, responses truncated), for the validation report."""
    return sum(e.prompt_truncated for e in encoded), sum(e.responses_truncated for e in encoded)
