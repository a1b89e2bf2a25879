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
# # 2. From rankings to pairs
#
# Notebook 1 trained on comparisons "A beat B". Labelers are rarely asked for one comparison at
# a time: InstructGPT showed them $K = 4$ to $9$ answers to rank, OpenAssistant volunteers rank
# 2 to 9 sibling replies, and Llama 3's annotators sometimes rewrite the winner. This notebook
# turns a ranking into comparisons, shows why all comparisons of one prompt belong in one batch
# element, how they are weighted, what happens to ties, unranked answers and edited answers,
# what Llama 2's margins do, and compares the pairwise recipe with the listwise Plackett-Luce
# model. Each formula is checked against `rmcore`. It loads a tokenizer, no model.

# %%
import itertools
import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F

from rmcore.data import RankedGroup, demo_data_path, read_preferences
from rmcore.data.encoding import EncodedGroup, encode_groups
from rmcore.model.embedded import embedded_model_dir
from rmcore.model.reward_model import load_tokenizer
from rmcore.training.loss import bradley_terry_loss, pair_index

ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "rmcore").is_dir()), Path.cwd())
OASST = ROOT / "../shared/data/oasst/en_100_tree.jsonl"  # real rankings, read in place (see its README)
data = read_preferences(OASST if OASST.is_file() else demo_data_path())
print("\n".join(data.report.summary_lines()[:8]))

# %% [markdown]
# ## 2.1 A ranking of $K$ answers holds $\binom{K}{2}$ comparisons
#
# A labeler who ranks $K$ answers $y_{(1)} \succ y_{(2)} \succ \dots \succ y_{(K)}$ has, implicitly,
# compared every pair: each of the $\binom{K}{2} = K(K-1)/2$ unordered pairs gives one ordered
# comparison (winner, loser). In rank notation (1 = best), the comparisons are
#
# $$\{(i, j) : \text{rank}_i < \text{rank}_j\}.$$
#
# `RankedGroup.pairs()` returns them as (winner index, loser index).

# %%
def expand(ranks: list) -> list[tuple[int, int]]:
    """Every (winner, loser) with a strictly better rank; unranked (None) answers take no part."""
    ranked = [i for i, r in enumerate(ranks) if r is not None]
    return [(i, j) if ranks[i] < ranks[j] else (j, i)
            for i, j in itertools.combinations(ranked, 2) if ranks[i] != ranks[j]]


group = max(data.groups[:40], key=lambda g: len(g.responses))
print("instruction:", group.prompt_text[:100])
for text, rank in zip(group.responses, group.ranks):
    print(f"  rank {rank}: {text[:70]!r}")
assert sorted(expand(group.ranks)) == sorted(group.pairs())
assert len(group.pairs()) == math.comb(len(group.responses), 2)  # fully ranked, no ties
assert sum(len(expand(g.ranks)) for g in data.groups) == data.report.comparisons
print(f"K = {len(group.responses)} answers -> {len(group.pairs())} comparisons; "
      f"the whole file: {data.report.prompts} prompts -> {data.report.comparisons} comparisons")

# %% [markdown]
# Comparisons grow quadratically: a $K = 9$ ranking holds 36 of them. That is why rankings are
# a cheap way to collect comparisons — reading 9 answers once costs a labeler far less than
# judging 36 separate pairs.

# %%
for k in range(2, 10):
    n = sum(len(g.responses) == k for g in data.groups)
    print(f"K = {k}: C(K,2) = {math.comb(k, 2):2d} comparisons per prompt   ({n} prompts in this file)")

# %% [markdown]
# ## 2.2 One batch element per prompt
#
# The obvious recipe — write every comparison out as its own (prompt, chosen, rejected) row,
# shuffle, train — has two problems that InstructGPT (Ouyang et al. 2022, section 3.5) points out.
#
# **Overfitting.** The $\binom{K}{2}$ comparisons of a prompt are not independent: each answer
# appears in $K - 1$ of them. Shuffled into the data set, one epoch shows the model each answer
# $K - 1$ times in separate gradient steps, which InstructGPT found made the reward model overfit
# within a single epoch. Putting all comparisons of a prompt into **one batch element** makes one
# epoch see each answer once.
#
# **Compute.** As separate rows, every comparison needs two forward passes (chosen and rejected):
# $2\binom{K}{2} = K(K-1)$ passes per prompt. As one element, each of the $K$ answers is run
# once and its reward reused in all its $K - 1$ comparisons: $K$ passes. `rmcore` goes one step
# further and runs the shared prompt once too, packing `[prompt | answer 1 | ... | answer K]` into
# one row with an attention mask that keeps answers from seeing each other (notebook 3 checks
# that this gives the same rewards).

# %%
for k in (2, 4, 9):
    print(f"K = {k}: {k * (k - 1):2d} forward passes as separate pairs, {k} as one batch element")

tokenizer = load_tokenizer(str(embedded_model_dir()))  # the embedded model's (first use converts it: ~20 s)
encoded = encode_groups(tokenizer, data.groups, max_length=512)
pair_rows = sum(2 * len(e.prompt_ids) + len(e.response_ids[w]) + len(e.response_ids[l])
                for e in encoded for w, l in e.pairs())  # every comparison as its own (chosen, rejected) row
unshared = sum(e.unshared_tokens for e in encoded)  # K sequences, each repeating the prompt
packed = sum(e.num_tokens for e in encoded)  # the prompt once, then every answer
print(f"tokens through the model per epoch: {pair_rows:,} as pairs, {unshared:,} as K sequences, "
      f"{packed:,} packed ({pair_rows / packed:.1f}x fewer than pairs)")
assert packed < unshared and packed < pair_rows

# %% [markdown]
# ## 2.3 Normalising by the number of comparisons
#
# Within its batch element, a prompt contributes the **mean** over its comparisons, and the loss
# is the mean over prompts. InstructGPT writes it as
#
# $$\operatorname{loss}(\theta) = -\frac{1}{\binom{K}{2}} \, \mathbb{E}_{(x, y_w, y_l) \sim D}
#   \left[\log \sigma\big(r_\theta(x, y_w) - r_\theta(x, y_l)\big)\right],$$
#
# i.e. for a batch of prompts $g = 1..G$ with comparison sets $C_g$:
#
# $$\mathcal{L} = \frac{1}{G} \sum_{g=1}^{G} \frac{1}{|C_g|} \sum_{(w, l) \in C_g}
#   -\log \sigma(r_w - r_l).$$
#
# Every prompt then weighs the same whatever its $K$. A flat mean over all comparisons would let
# a $K = 9$ prompt count 36 times as much as a $K = 2$ prompt. `rmcore` divides by $|C_g|$, the
# comparisons the prompt *actually* has, which is $\binom{K}{2}$ for a full ranking without ties
# (next section).

# %%
def grouped_loss(rewards_per_group: list[torch.Tensor], rank_lists: list[list]) -> torch.Tensor:
    """Mean over prompts of the mean over each prompt's comparisons."""
    per_prompt = [torch.stack([-F.logsigmoid(r[w] - r[l]) for w, l in expand(ranks)]).mean()
                  for r, ranks in zip(rewards_per_group, rank_lists)]
    return torch.stack(per_prompt).mean()


torch.manual_seed(0)
rank_lists = [[1, 2], [3, 1, 2, 4], [2, 1, 5, 3, 4, 7, 6, 9, 8]]  # K = 2, 4 and 9
rewards = [torch.randn(len(ranks)) for ranks in rank_lists]
stubs = [EncodedGroup([], [[0]] * len(ranks), ranks) for ranks in rank_lists]
rmcore_loss, _ = bradley_terry_loss(torch.cat(rewards), pair_index(stubs))
assert torch.isclose(rmcore_loss, grouped_loss(rewards, rank_lists))
flat = torch.cat([torch.stack([-F.logsigmoid(r[w] - r[l]) for w, l in expand(ranks)])
                  for r, ranks in zip(rewards, rank_lists)])
print(f"per-prompt mean (rmcore, InstructGPT): {float(rmcore_loss):.4f}; flat mean over "
      f"{len(flat)} comparisons: {float(flat.mean()):.4f}")
print("weight of each comparison in rmcore:", sorted({round(float(w), 4) for w in pair_index(stubs).weight}))

# %% [markdown]
# ## 2.4 Ties and unranked answers
#
# Bradley-Terry has no notion of a tie ($P(i \succ j) + P(j \succ i) = 1$). A tie therefore gives
# **no comparison**: the two answers are still compared with everything ranked above and below
# them. (Extensions such as Rao-Kupper or Davidson add an explicit tie probability; we do not need
# them.) An answer a labeler left **unranked** (`null` in `rmcore`'s ranked format; OpenAssistant
# has some) takes part in no comparison at all. It still costs a forward pass in training, and it
# is still scored at evaluation.

# %%
ranks = [1, 2, 2, None, 3]  # answers 1 and 2 tied, answer 3 unranked
g = RankedGroup([{"role": "user", "content": "?"}], ["a", "b", "c", "d", "e"], ranks)
print("comparisons:", g.pairs())
assert sorted(g.pairs()) == sorted(expand(ranks)) == [(0, 1), (0, 2), (0, 4), (1, 4), (2, 4)]
w = pair_index([EncodedGroup([], [[0]] * 5, ranks)]).weight
assert torch.allclose(w, torch.full((5,), 1 / 5, dtype=w.dtype))  # |C_g| = 5, not C(4,2) = 6

# %% [markdown]
# ## 2.5 A labeler's edited best answer
#
# Llama 3's annotators could, besides choosing, **edit** the chosen answer to make it better,
# giving three answers with a clear order: edited $\succ$ chosen $\succ$ rejected. In ranking
# terms the edit is one more answer with rank 1, and every other rank moves down by one. It adds
# one comparison against each ranked answer. (Llama 3 also packs the prompt and all its answers
# into a single row, as `rmcore` does.)
#
# A caution: the edited answer is written by a person, not sampled from the model, so a reward
# model can learn "sounds human-edited" as a shortcut. Keeping such rows a minority, or checking
# accuracy separately on model-only comparisons, guards against it.

# %%
def with_edited_best(group: RankedGroup, edited: str) -> RankedGroup:
    """The group with a labeler's rewrite of its best answer ranked above everything."""
    ranks = [1] + [r + 1 if r is not None else None for r in group.ranks]
    return RankedGroup(group.prompt, [edited] + group.responses, ranks, group.margin, group.source)


pair = RankedGroup([{"role": "user", "content": "Name a prime."}], ["7 is prime.", "9"], [1, 2])
edited = with_edited_best(pair, "7 is a prime number: its only divisors are 1 and 7.")
print(edited.ranks, edited.pairs())
assert sorted(edited.pairs()) == [(0, 1), (0, 2), (1, 2)]  # edited > chosen > rejected

# %% [markdown]
# ## 2.6 Margins (Llama 2)
#
# Llama 2 asked annotators *how much* better the chosen answer was (significantly, better,
# slightly, negligibly) and added a margin $m$ that grows with it:
#
# $$\mathcal{L} = -\log \sigma\big(r_w - r_l - m\big).$$
#
# Its gradient is $-(1 - \sigma(\Delta - m))$: a comparison keeps pushing until the gap clears $m$
# rather than 0, so strongly preferred pairs are driven further apart. Llama 2 tried a "small"
# ($1, \tfrac23, \tfrac13, 0$) and a "large" ($3, 2, 1, 0$) scale and reports the margin helped,
# mostly on the clearly separable pairs; Llama 3 later dropped it as data grew. A margin also
# means $\sigma(r_w - r_l)$ is no longer the model's probability that people prefer $y_w$ — the
# rewards are stretched. In `rmcore`, a `margin` field on a pairs file (or a ranked group) sets
# $m$ for all comparisons of that prompt.

# %%
def margin_loss(r_w: torch.Tensor, r_l: torch.Tensor, m: float) -> torch.Tensor:
    """-log sigma(r_w - r_l - m), averaged."""
    return -F.logsigmoid(r_w - r_l - m).mean()


r = torch.tensor([0.8, 0.3])
for m in (0.0, 1 / 3, 1.0, 3.0):
    ours = margin_loss(r[0], r[1], m)
    theirs, _ = bradley_terry_loss(r, pair_index([EncodedGroup([], [[0], [0]], [1, 2], margin=m)]))
    assert torch.isclose(ours, theirs, atol=1e-6)  # rmcore keeps margins in float32
    grad_w = -(1 - torch.sigmoid(r[0] - r[1] - m))
    print(f"margin {m:.2f}: loss {float(ours):.4f}, gradient on r_w {float(grad_w):.4f}")

d = np.linspace(-4, 8, 241)
fig = go.Figure([go.Scatter(x=d, y=np.log1p(np.exp(-(d - m))), name=f"m = {m:g}") for m in (0, 1, 3)])
fig.update_layout(title="−log σ(Δ − m): a margin moves the loss to the right", xaxis_title="Δ = r_w − r_l",
                  yaxis_title="loss", height=340)
fig.show()

# %% [markdown]
# ## 2.7 The listwise alternative: Plackett-Luce
#
# Instead of breaking a ranking into pairs, we can model the ranking itself. Plackett-Luce
# imagines the labeler picking the best answer among all $K$ with Bradley-Terry odds, then the best
# of the remaining $K - 1$, and so on. With $\tau$ the ranking (best first):
#
# $$P(\tau) = \prod_{k=1}^{K-1} \frac{e^{r_{\tau_k}}}{\sum_{m=k}^{K} e^{r_{\tau_m}}}, \qquad
#   -\log P(\tau) = \sum_{k=1}^{K-1} \Big(\log \sum_{m=k}^{K} e^{r_{\tau_m}} - r_{\tau_k}\Big).$$
#
# For $K = 2$ it is $-\log \frac{e^{r_w}}{e^{r_w} + e^{r_l}} = -\log\sigma(r_w - r_l)$: exactly
# Bradley-Terry. For $K > 2$ the two losses differ.

# %%
def plackett_luce_nll(ranked: torch.Tensor) -> torch.Tensor:
    """-log P(ranking) under Plackett-Luce; `ranked` holds the rewards best first, shape (..., K)."""
    K = ranked.shape[-1]
    return sum(torch.logsumexp(ranked[..., k:], -1) - ranked[..., k] for k in range(K - 1))


r = torch.tensor([0.4, -1.1])
bt, _ = bradley_terry_loss(r, pair_index([EncodedGroup([], [[0], [0]], [1, 2])]))
assert torch.isclose(plackett_luce_nll(r), bt)  # r is listed best first  # K = 2: the same loss
r4 = torch.tensor([1.0, 0.2, -0.3, -1.5])
bt4, _ = bradley_terry_loss(r4, pair_index([EncodedGroup([], [[0]] * 4, [1, 2, 3, 4])]))
print(f"K = 4: Plackett-Luce NLL {float(plackett_luce_nll(r4)):.4f}, "
      f"Bradley-Terry mean over 6 pairs {float(bt4):.4f}")

# %% [markdown]
# ### Sampling Plackett-Luce rankings, and why all-pairs Bradley-Terry still works
#
# A Plackett-Luce ranking can be drawn by adding independent Gumbel noise to every reward and
# sorting (the "Gumbel-max trick", applied $K - 1$ times). That construction shows something
# useful: whether $i$ ends up above $j$ depends only on $r_i + G_i$ versus $r_j + G_j$, and the
# difference of two Gumbels is logistic, so
#
# $$P(i \text{ ranked above } j) = \sigma(r_i - r_j)$$
#
# whatever else is in the list. Every pair read off a Plackett-Luce ranking follows Bradley-Terry
# exactly, so fitting Bradley-Terry to all pairs (a *composite* likelihood) is consistent. What it
# gets wrong is independence: the pairs of one ranking are correlated, so it counts
# $\binom{K}{2}$ pieces of evidence where there are fewer. Let's check both claims numerically.

# %%
rng = np.random.default_rng(0)
r_true = np.array([1.2, 0.5, 0.0, -0.4, -1.3])
order = np.argsort(-(r_true + rng.gumbel(size=(200_000, 5))), axis=1)  # 200k rankings, best first
position = np.argsort(order, axis=1)  # position[s, i] = where answer i landed in ranking s
empirical = (position[:, :, None] < position[:, None, :]).mean(0)  # P(i above j)
predicted = 1 / (1 + np.exp(-(r_true[:, None] - r_true[None, :])))
off_diag = ~np.eye(5, dtype=bool)
print(f"largest gap between observed and σ(r_i − r_j): {np.abs(empirical - predicted)[off_diag].max():.4f}")
assert np.abs(empirical - predicted)[off_diag].max() < 0.01


# %% [markdown]
# ### Fitting both to the same rankings
#
# Ten answers with known rewards; each simulated prompt shows a random four of them to a
# Plackett-Luce labeler. We fit one reward per answer with each loss (the Bradley-Terry fit uses
# `rmcore`'s loss) and measure the root-mean-square error after centring, over 8 repetitions.

# %%
def bt_all_pairs(r: torch.Tensor, items: torch.Tensor, index) -> torch.Tensor:
    """rmcore's loss: per ranking, the mean of -log σ over its 6 pairs; then the mean."""
    return bradley_terry_loss(r[items].reshape(-1), index)[0]


def pl_rankings(r: torch.Tensor, items: torch.Tensor, index=None) -> torch.Tensor:
    """Mean Plackett-Luce negative log-likelihood of the rankings."""
    return plackett_luce_nll(r[items]).mean()


def fit(loss_fn, items: torch.Tensor, index) -> np.ndarray:
    """Minimise loss_fn from zero with L-BFGS (both losses are convex); returns centred rewards."""
    r = torch.zeros(10, requires_grad=True)
    opt = torch.optim.LBFGS([r], max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(r, items, index)
        loss.backward()
        return loss

    opt.step(closure)
    return (r - r.mean()).detach().numpy()


truth = np.linspace(-1.5, 1.5, 10)
errors = {"Bradley-Terry, all pairs (rmcore)": [], "Plackett-Luce": []}
for rep in range(8):
    rng = np.random.default_rng(rep)
    shown = np.stack([rng.choice(10, 4, replace=False) for _ in range(150)])  # (prompts, K)
    rankings = [s[np.argsort(-(truth[s] + rng.gumbel(size=4)))] for s in shown]  # item ids, best first
    items = torch.tensor(np.stack(rankings))  # (prompts, K), best first
    index = pair_index([EncodedGroup([], [[0]] * 4, [1, 2, 3, 4]) for _ in rankings])
    bt_fit, pl_fit = fit(bt_all_pairs, items, index), fit(pl_rankings, items, index)
    errors["Bradley-Terry, all pairs (rmcore)"].append(np.sqrt(np.mean((bt_fit - truth) ** 2)))
    errors["Plackett-Luce"].append(np.sqrt(np.mean((pl_fit - truth) ** 2)))
for name, errs in errors.items():
    print(f"{name:34s} RMS error {np.mean(errs):.3f} ± {np.std(errs) / np.sqrt(len(errs)):.3f}")
assert max(np.mean(e) for e in errors.values()) < 0.3  # both recover the rewards

# %% [markdown]
# Both recover the rewards, with errors of the same size: on rankings generated by Plackett-Luce
# its own (exact) likelihood is a little ahead, but the pairwise composite likelihood loses
# little. Both need each answer's reward only once, so either fits `rmcore`'s packed rows. The
# pairwise recipe keeps the practical advantages: ties and unranked answers need no extra
# modelling, plain pairs are just $K = 2$, and it is what InstructGPT, Anthropic and Llama 2
# trained with. `rmcore` therefore trains all-pairs Bradley-Terry; the Plackett-Luce function
# above is three lines if you want to try the listwise loss.
#
# **Next:** [notebook 3](03_transformer_to_number.ipynb) — where the rewards $r$ come from.
