"""An rmcore reward model as the reward function of TRL's `GRPOTrainer`.

GRPO samples G completions of every prompt and needs one reward for each. TRL can take a reward
model by path, but then it runs every (prompt, completion) as its own padded sequence, computing
the shared prompt G times. `RewardFunction` groups the completions of a prompt and scores them in
one packed row, as `RewardModel.score` does, so the prompt is computed once:

    reward = RewardFunction(RewardModel.load("models/rm"))
    GRPOTrainer(model=..., reward_funcs=reward, ...)

The rewards are the ones `RewardModel.score(prompt, completions)` gives (tested), so they also
equal TRL's by-path rewards for conversational prompts (tested, on the tiny and the embedded
tokenizer). What makes them match:
  - text: TRL decodes a completion without special tokens and renders prompt + completion with the
    reward model's chat template, which closes the assistant turn with its end-of-turn marker; that
    is `RewardModel.render`, the text rmcore trains on, read at its last token (also for an answer
    cut at max_completion_length, which the template closes all the same);
  - tokens: TRL tokenizes that whole text; rmcore tokenizes each whole text too and splits it where
    the G texts stop sharing tokens (rmcore.data.encoding.split_at_shared_prompt). Tokenizing prompt and
    answer apart differed for answers starting with spaces or newlines that SmolLM2's tokenizer
    merges with the "\n" ending the assistant header;
  - reading: rmcore saves a pad token that rendered text never contains, so TRL's "last non-pad
    token" is the true last token.
For plain-text prompts TRL's by-path reward is the raw text `prompt + completion` without a
template, which no rmcore model was trained on; here a plain-text prompt is the user's
instruction, rendered with the chat template as in training. rmcore's GRPO passes chat prompts.
"""

from __future__ import annotations

from typing import Any

from rmcore.data import Message
from rmcore.data.prompts import Prompt, prompt_key
from rmcore.model.reward_model import RewardModel

Completion = str | list[Message]


def completion_text(completion: Completion) -> str:
    """The answer's text: TRL passes a string, or for chat prompts `[{"role": "assistant", "content": ...}]`."""
    if isinstance(completion, str):
        return completion
    if (isinstance(completion, list) and len(completion) == 1 and isinstance(completion[0], dict)
            and completion[0].get("role") == "assistant" and isinstance(completion[0].get("content"), str)):
        return completion[0]["content"]
    raise ValueError("a completion must be a string or one assistant message "
                     f"[{{'role': 'assistant', 'content': str}}], got {str(completion)[:80]!r}")


class RewardFunction:
    """`(prompts, completions, **kwargs) -> list[float]`: rmcore's rewards, one packed pass per prompt.

    TRL repeats each prompt G times in `prompts` (one per completion); completions that share a
    prompt are scored together, whatever their order, and the rewards come back in input order.
    """

    def __init__(self, reward_model: RewardModel, *, batch_size: int = 8, name: str = "rmcore_reward"):
        self.reward_model = reward_model
        self.batch_size = batch_size  # prompt groups per forward pass
        self.__name__ = name  # TRL logs rewards under the callable's __name__ ("rewards/rmcore_reward/mean")
        self.calls = 0  # how many times TRL asked for rewards (for tests and the benchmark)

    def __call__(self, prompts: list[Prompt], completions: list[Completion], **kwargs: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions: "
                             "give one prompt per completion")
        groups: dict[str, tuple[Prompt, list[int]]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault(prompt_key(prompt), (prompt, []))[1].append(index)
        texts = [completion_text(c) for c in completions]
        encoded = [self.reward_model.encode(prompt, [texts[i] for i in indexes]) for prompt, indexes in groups.values()]
        group_rewards = self.reward_model.rewards_for(encoded, batch_size=self.batch_size)
        rewards = [0.0] * len(completions)
        for (_, indexes), values in zip(groups.values(), group_rewards):
            for i, value in zip(indexes, values):
                rewards[i] = float(value)
        self.calls += 1
        return rewards
