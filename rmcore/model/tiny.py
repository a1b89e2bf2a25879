"""A tiny random Llama with a small byte-level tokenizer, built offline in a second.

For tests, notebooks and smoke benchmarks: the same code paths as the embedded model (chat
template, pad token equal to the end-of-turn token, as in SmolLM2) at a size that trains in
seconds on a CPU. Its rewards mean nothing until trained.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rmcore.model.reward_model import load_sequence_classifier, save_reward_model

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "The quick brown fox jumps over the lazy dog. A reward model scores how helpful a response is.",
    "Water boils at 100 degrees Celsius at sea level. Paris is the capital of France.",
    "To bake bread, mix flour, water, salt and yeast, knead, let it rise, then bake it.",
    "def add(a, b): return a + b  # Python adds two numbers",
    "I'm sorry, I can't help with that. Here is a safer alternative you could try instead.",
    "user assistant system: thank you, please, explain, why, how, what, when, where, which",
    "0123456789 + - * / = ( ) [ ] { } , . ; : ! ? ' \" @ # $ % & é ° C",
]


def build_tiny_model(out_dir: str | Path, *, hidden_size: int = 32, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, vocab_size: int = 384, seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM and its tokenizer to `out_dir` (a standard HF folder)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|im_end|>",  # as in SmolLM2: padding equals the end-of-turn token (the pitfall)
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_reward_model(out_dir: str | Path, *, seed: int = 0, **model_options) -> Path:
    """A tiny random reward model folder (the tiny Llama plus a seeded reward neuron), saved as rmcore saves.

    Its rewards are random but fixed: enough to drive best-of-n and RLHF code paths in tests.
    """

    with tempfile.TemporaryDirectory() as base_dir:
        base = build_tiny_model(Path(base_dir) / "base", seed=seed, **model_options)
        classifier, tokenizer, _ = load_sequence_classifier(str(base), seed=seed)
        return save_reward_model(classifier, tokenizer, out_dir, {"base_model": "tiny", "mode": "random"})
