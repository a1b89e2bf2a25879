# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. From a transformer to one number
#
# Notebooks 1 and 2 treated the reward $r$ as a free number per answer. A reward model computes it
# from text: $r_\theta(x, y)$ for a prompt $x$ and an answer $y$, so it can score answers nobody
# has ranked. This notebook builds that function from a chat language model, on `rmcore`'s embedded
# model (SmolLM2-135M-Instruct): replace the language-model head by one neuron, read it at the last
# token, avoid the padding trap that silently reads it somewhere else, and look at the neuron's
# value at every token.
#
# The reward neuron here is **untrained** (seeded random weights), so the numbers mean nothing
# yet; the mechanics are what matter. Notebook 4 trains it. The first run converts the embedded
# model once (about 20 s); later runs load it in a second or two.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a kernel without ipywidgets

import plotly.graph_objects as go
import torch
from transformers import pipeline
from transformers.utils import logging as hf_logging

from rmcore.model.embedded import embedded_model_dir
from rmcore.model.reward_model import RewardModel, load_tokenizer

hf_logging.disable_progress_bar()
rm = RewardModel.load("embedded")  # the base model + a new, seeded reward neuron (on a GPU if there is one)
model, tokenizer, device = rm.model, rm.tokenizer, rm.device
TOL = 1e-4 if device != "cuda" else 5e-2  # rmcore scores in bfloat16 on a GPU; our checks run in float32
print(f"{type(model).__name__}: hidden size {model.config.hidden_size}, "
      f"{model.config.num_hidden_layers} layers")

# %% [markdown]
# ## 3.1 Replace the language-model head with one neuron
#
# A decoder-only transformer maps tokens $t_1 \dots t_T$ to hidden states
# $h_1 \dots h_T \in \mathbb{R}^{d}$ ($d = 576$ here), each $h_t$ computed from tokens $1..t$ only
# (causal attention). A **language model** multiplies each $h_t$ by the vocabulary matrix
# $E \in \mathbb{R}^{V \times d}$ ($V = 49{,}152$) to get next-token logits $E h_t$. A **reward
# model** keeps the same trunk and replaces $E$ by a single row $w \in \mathbb{R}^{d}$:
#
# $$r_\theta(x, y) = w^\top h_T(x, y),$$
#
# one number instead of 49,152. In transformers this is `AutoModelForSequenceClassification` with
# `num_labels=1`: the trunk is the pretrained model, `score` is a new `Linear(576, 1,
# bias=False)` (no bias: it would cancel in every difference, notebook 1.6). SmolLM2 ties $E$ to
# its input embeddings, so we can still ask the trunk what it would *say* next — evidence that the
# features $h_t$ the neuron reads are those of a working language model.

# %%
prompt = "Give me one tip for sleeping better."
answer = "Keep a regular schedule: go to bed and get up at the same time every day."
encoded = rm.encode(prompt, [answer])  # rmcore's tokenization: chat template, prompt and answer
ids = encoded.prompt_ids + encoded.response_ids[0]
E, w = model.model.embed_tokens.weight, model.score.weight  # (V, d) and (1, d)
print(f"LM head {tuple(E.shape)} = {E.numel():,} numbers; reward head {tuple(w.shape)} = {w.numel()} numbers")
with torch.no_grad():
    hidden = model.model(input_ids=torch.tensor([ids], device=device)).last_hidden_state[0]  # (T, d)
next_token = hidden[len(encoded.prompt_ids) - 1] @ E.T  # (V,) logits after "<|im_start|>assistant\n"
print("the LM would start its answer with:", [tokenizer.decode([i]) for i in next_token.topk(5).indices])

# %% [markdown]
# ## 3.2 Read it at the last token
#
# Because attention is causal, $h_t$ has seen tokens $1..t$. Only the **last** position has seen
# the whole prompt and the whole answer, so that is where the reward is read. Which token is last
# depends on the chat template: SmolLM2 ends an assistant turn with `<|im_end|>` and a newline, so the
# reward is read at that **newline**, the token after `<|im_end|>` (which has seen `<|im_end|>` too).

# %%
text = rm.render(prompt, answer)  # the exact text the reward is read from
print(text)
print("last tokens:", [tokenizer.decode([t]) for t in ids[-4:]])
IM_END = tokenizer.convert_tokens_to_ids("<|im_end|>")
assert tokenizer.decode(ids[-1:]) == "\n" and ids[-2] == IM_END  # the last token is the newline after <|im_end|>


# %%
def reward_at(hidden: torch.Tensor, position: int) -> float:
    """The reward neuron applied to the hidden state at one position: w · h_position."""
    with torch.no_grad():
        return float(model.score(hidden[position]))


r_ours = reward_at(hidden, len(ids) - 1)
r_rmcore = rm.rewards(prompt, [answer])[0]
assert abs(r_ours - r_rmcore) < TOL
print(f"w · h_T = {r_ours:.5f}; rmcore: {r_rmcore:.5f}")

# %% [markdown]
# ### Several answers in one row
#
# Notebook 2 argued for scoring all $K$ answers of a prompt in one pass. `rmcore` packs
# `[prompt | answer 1 | answer 2 | ...]` into a single row, with position ids that restart after
# the prompt and an attention mask that lets each answer see the prompt and itself but not its
# siblings. Each answer's last hidden state is then exactly what it would be alone (as long as
# nothing needs truncating; notebook 4.6 shows what changes when the prompt must be cut):

# %%
answers = [answer, "Sleep is good.",
           "Avoid screens for an hour before bed, and keep the bedroom cool and dark."]
packed = rm.rewards(prompt, answers)  # one forward pass, the prompt computed once
alone = [rm.rewards(prompt, [a])[0] for a in answers]  # three separate passes
print("packed:", [round(r, 5) for r in packed])
print("alone: ", [round(r, 5) for r in alone])
assert all(abs(p - a) < TOL for p, a in zip(packed, alone))

# %% [markdown]
# ## 3.3 The padding trap: pad token = end-of-turn token
#
# Sequences of different lengths are batched by **padding** them to one length. The stock
# sequence-classification head does not know where each sequence really ends; it finds the end by
# looking for the pad token. Two rules have been used:
#
# * older transformers releases: *first pad token, minus one*;
# * current releases: *rightmost token that is not the pad token* (handles left padding too).
#
# Both assume the pad token never occurs inside the text. SmolLM2's tokenizer, like many chat
# tokenizers, ships with **pad = eos = `<|im_end|>`** — the token that closes *every* turn,
# including the system prompt:

# %%
raw = load_tokenizer(str(embedded_model_dir()))  # the tokenizer as the model ships it
pad = raw.pad_token_id
print(f"shipped: pad {raw.pad_token!r} (id {pad}), eos {raw.eos_token!r} (id {raw.eos_token_id})")
assert pad == raw.eos_token_id
print("pad = eos at positions", [i for i, t in enumerate(ids) if t == pad], f"of our {len(ids)} tokens")


# %%
def first_pad_minus_one(ids: list[int], pad: int) -> int:
    """The old rule: the token before the first pad."""
    return ids.index(pad) - 1 if pad in ids else len(ids) - 1


def rightmost_non_pad(ids: list[int], pad: int) -> int:
    """The current rule: the last token that is not the pad token."""
    return max(i for i, t in enumerate(ids) if t != pad)


print("true last token:     ", len(ids) - 1)
old = first_pad_minus_one(ids, pad)
print("first pad minus one: ", old, "... reads after", repr(tokenizer.decode(ids[: old + 1])[-30:]))
print("rightmost non-pad:   ", rightmost_non_pad(ids, pad))

# %% [markdown]
# **The old rule** stops at the first `<|im_end|>`, which closes the *system prompt*. It reads the
# reward before the user has said anything, so every answer to every question gets the same
# reward, and training cannot lower the loss at all. Let us confirm with three different answers
# to two different questions:

# %%
questions = [(prompt, a) for a in answers] + [("What is the capital of France?", "Paris.")]
old_rule = []
for q, a in questions:
    e = rm.encode(q, [a])
    row = e.prompt_ids + e.response_ids[0]
    with torch.no_grad():
        h = model.model(input_ids=torch.tensor([row], device=device)).last_hidden_state[0]
    old_rule.append(reward_at(h, first_pad_minus_one(row, pad)))
print("rewards read by the old rule:", [round(r, 5) for r in old_rule])
assert max(old_rule) - min(old_rule) < 1e-4  # identical: all read inside the system prompt

# %% [markdown]
# **The current rule** happens to work on SmolLM2's template, because the text ends with a
# newline after `<|im_end|>`. It breaks as soon as the text ends *with* the end-of-turn token —
# which is what you get from a template without the trailing newline, or from a trainer that
# appends `eos_token` to each answer. Then the rule skips the final `<|im_end|>` and reads one
# token early, a different number from the one training used:

# %%
ids_eos = ids[:-1]  # the same text ending at <|im_end|>
i = rightmost_non_pad(ids_eos, pad)
print(f"text ends with {tokenizer.decode(ids_eos[-1:])!r}; the rule reads at {i} "
      f"({tokenizer.decode([ids_eos[i]])!r}) instead of {len(ids_eos) - 1}")
print(f"reward there {reward_at(hidden, i):.4f}; "
      f"at the true last token {reward_at(hidden, len(ids_eos) - 1):.4f}")
assert i == len(ids_eos) - 2

# %% [markdown]
# ### What `rmcore` does
#
# Two things, either of which would be enough:
#
# 1. It never searches for padding: when it packs a batch it records where each answer's last
#    token is (`PackedBatch.last_index`) and reads the neuron there.
# 2. It gives the tokenizer a pad token that chat text never contains (`<|endoftext|>` here) and
#    saves it in the model's config, so the stock head — and therefore a plain transformers
#    `pipeline("text-classification")` on a saved model — reads the true last token too.
#
# Check the second: a right-padded batch through the stock head, then the pipeline.

# %%
print(f"rmcore's pad token: {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}); "
      f"in our text: {tokenizer.pad_token_id in ids}")
assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.pad_token_id not in ids
texts = [rm.render(prompt, a) for a in answers]
batch = tokenizer(texts, padding=True, return_tensors="pt").to(device)  # right padding with <|endoftext|>
with torch.no_grad():
    stock = model(**batch).logits.squeeze(-1).float().cpu()  # transformers finds the last non-pad token
pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device=device)
piped = [out["score"] for out in pipe(texts, function_to_apply="none")]
print("stock head:", stock.numpy().round(5), "| pipeline:", [round(s, 5) for s in piped])
assert all(abs(s - p) < TOL and abs(q - p) < TOL for s, q, p in zip(stock.tolist(), piped, packed))

# %% [markdown]
# ### Which token do TRL and the pipeline read?
#
# The same one. The pipeline tokenizes the rendered text, which ends `<|im_end|>` + newline, and the
# stock head reads its rightmost non-pad token: the newline. TRL's `RewardTrainer`, given conversations
# (a `prompt` and `chosen`/`rejected` messages), renders them with the same chat template, so its
# token ids are rmcore's to the last one, and the stock head it trains reads the newline too — with
# rmcore's pad token or with the shipped one (`<|im_end|>`: the newline is still not padding). Only
# text that ends *at* `<|im_end|>` (plain strings, to which TRL appends `eos_token`) would be read
# elsewhere, as 3.3 showed. Check all three on our first answer:

# %%
last, at_im_end = reward_at(hidden, len(ids) - 1), reward_at(hidden, len(ids) - 2)
piped_first = pipe(rm.render(prompt, answer), function_to_apply="none")[0]["score"]
assert abs(piped_first - last) < TOL and abs(piped_first - at_im_end) > 10 * TOL  # the newline, not <|im_end|>
print(f"pipeline {piped_first:.5f} = w · h at the newline {last:.5f} (at <|im_end|>: {at_im_end:.5f})")
try:
    import tempfile

    import datasets
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer
except ImportError:  # TRL comes with the benchmark's requirements (requirements-dev.txt installs them)
    print("TRL is not installed here: its check is skipped")
else:
    example = {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": answer}],
               "rejected": [{"role": "assistant", "content": "Sleep is good."}]}
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)  # a TrainingArguments deprecation, not ours
    pad_before = model.config.pad_token_id  # RewardTrainer sets the model's pad token to its tokenizer's
    for name, tok in (("rmcore's tokenizer", tokenizer), ("the shipped tokenizer", raw)):
        with tempfile.TemporaryDirectory() as scratch:
            trainer = RewardTrainer(model=model, processing_class=tok, train_dataset=Dataset.from_list([example]),
                                    args=RewardConfig(output_dir=scratch, use_cpu=device == "cpu", report_to=[]))
        row, trl_pad = trainer.train_dataset[0]["chosen_ids"], trainer.processing_class.pad_token_id
        read = rightmost_non_pad(row, trl_pad)  # where the stock head TRL trains reads the reward
        assert row == ids and read == len(ids) - 1
        print(f"TRL with {name} (pad {trainer.processing_class.pad_token!r}): the same {len(row)} tokens as "
              f"rmcore; the reward is read at token {read}, {tokenizer.decode(row[read:read + 1])!r}")
    model.config.pad_token_id = pad_before

# %% [markdown]
# ## 3.4 Per-token rewards
#
# Nothing stops us applying the neuron at every position: $r_t = w^\top h_t$ for each token $t$ of
# the answer. The last value is the reward. The others are **not** rewards of the answer's
# prefixes — the neuron is only ever trained at the last token — but after training (notebook 4)
# they are a useful probe of where the score moves: a sharp drop at one word is worth reading.
# `RewardModel.token_rewards` computes them.

# %%
tr = rm.token_rewards(prompt, answer)
ours = [reward_at(hidden, p) for p in range(tr.prompt_tokens, len(ids))]
assert all(abs(a - b) < TOL for a, b in zip(ours, tr.rewards))
assert abs(tr.rewards[-1] - r_rmcore) < TOL  # the last one is the reward
fig = go.Figure(go.Bar(x=list(range(len(tr.tokens))), y=tr.rewards, hovertext=tr.tokens))
fig.update_xaxes(tickmode="array", tickvals=list(range(len(tr.tokens))),
                 ticktext=[t.replace("\n", "\\n") for t in tr.tokens])
fig.update_layout(title="w · h_t at every token of the answer (untrained neuron: noise, for now)", height=360,
                  yaxis_title="w · h_t")
fig.show()

# %% [markdown]
# With a random $w$ these bars are a random projection of the hidden states: their ups and downs
# are real properties of the features, but not of any preference. Training picks the direction
# $w$ along which preferred answers score higher — in `rmcore`'s *head* mode, with the trunk
# frozen, that is the logistic regression of notebook 1.6 on the features $h_T$.
#
# **Next:** [notebook 4](04_train_and_probe.ipynb) — train $w$ on real rankings and probe the result.
