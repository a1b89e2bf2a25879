"""Sample candidate responses with an instruct LLM and pick the best of n with a reward model.

This is what a reward model is for at inference time: the policy (here the embedded
SmolLM2-135M-Instruct itself, loaded as a plain causal LM) samples n answers, the reward model
scores them, and the highest reward wins ("best-of-n", or rejection sampling).

    generator = Generator()                     # the embedded instruct model
    result = best_of_n(generator, RewardModel.load("models/rm"), "How do I boil an egg?", n=4)
    result.candidates[result.score.best]
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from rmcore.core.errors import ModelError
from rmcore.data import Message
from rmcore.data.encoding import render_prompt
from rmcore.model.device import autodetect_device
from rmcore.model.reward_model import (
    RewardModel,
    ScoreResult,
    from_pretrained_safely,
    load_tokenizer,
    resolve_model_path,
)
from rmcore.policy.models import own_generation_config


@dataclass
class BestOfN:
    candidates: list[str]
    score: ScoreResult  # rewards, P[i][j] = sigma(r_i - r_j), best


class Generator:
    """A causal LM that samples answers to an instruction through its chat template."""

    def __init__(self, model: str | os.PathLike | None = None, *, device: str | None = None):
        from transformers import AutoModelForCausalLM  # transformers: half a second to import; only loading needs it

        path, self.name = resolve_model_path(model)
        self.device = device or autodetect_device()
        self.tokenizer = load_tokenizer(path)
        self.model = from_pretrained_safely(AutoModelForCausalLM, path).to(self.device).eval()
        own_generation_config(self.model, path)  # sampling settings are this class's, never the folder's
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def prompt_ids(self, prompt: str | list[Message]) -> torch.Tensor:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = render_prompt(self.tokenizer, messages)  # exactly the prompt the reward model scores after
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        return ids.to(self.device)  # (1, T)

    @torch.inference_mode()
    def sample(
        self,
        prompt: str | list[Message],
        n: int = 4,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[str]:
        """n sampled answers (different from each other as sampling allows); reproducible for a seed."""
        if not 1 <= n <= 16:
            raise ValueError(f"n must be between 1 and 16, got {n}")
        input_ids = self.prompt_ids(prompt)
        torch.manual_seed(seed)
        try:
            output = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=max(temperature, 1e-3),
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )  # (n, T + new)
        except RuntimeError as exc:
            raise ModelError(f"{self.name}: generation failed ({exc})") from None
        new_tokens = output[:, input_ids.shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def best_of_n(
    generator: Generator, reward_model: RewardModel, prompt: str | list[Message], n: int = 4, **sample_kwargs
) -> BestOfN:
    """Sample n answers with `generator` and score them with `reward_model`: `.score.best` is the pick."""
    candidates = generator.sample(prompt, n, **sample_kwargs)
    return BestOfN(candidates, reward_model.score(prompt, candidates))
