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
# # 1. Bradley-Terry from first principles
#
# A reward model is trained on sentences like *"for this prompt, people preferred answer A to
# answer B"*. It has to turn them into a number per answer, the **reward** $r$. This notebook
# derives the one formula that links the two, the Bradley-Terry model, and everything a
# practitioner needs to know about it: what its probabilities mean, what its loss and gradient
# are, why the loss is never exactly zero, and why it is logistic regression in disguise.
# It ends with a toy: we invent rewards, simulate people who judge with them, and get the rewards
# back from the judgements alone.
#
# Each idea follows the same pattern (after
# [the Annotated Transformer](https://nlp.seas.harvard.edu/annotated-transformer/)): the math, a
# few lines of code that compute it, and an `assert` that our version matches what `rmcore`
# trains with. No model is loaded here; the notebook runs in seconds.

# %%
import math

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from rmcore.data.encoding import EncodedGroup
from rmcore.model.reward_model import preference_matrix, sigmoid
from rmcore.training.loss import bradley_terry_loss, pair_index

torch.set_default_dtype(torch.float64)  # exact comparisons in the asserts; rmcore casts as it needs

# %% [markdown]
# ## 1.1 Preferences are probabilities
#
# Show the same two answers $y_1, y_2$ to many people and they will not all pick the same one.
# InstructGPT's labelers agreed with each other on only about 73% of comparisons. So we model a
# *probability*: $P(y_2 \succ y_1)$, "$y_2$ is preferred to $y_1$".
#
# Bradley and Terry (1952) gave every item a positive strength $\pi$ and said an item wins in
# proportion to its strength. Writing the strength as $\pi = e^{r}$ (any real $r$ gives a
# positive $\pi$) makes $r$ the **reward**:
#
# $$P(y_2 \succ y_1) = \frac{\pi_2}{\pi_1 + \pi_2} = \frac{e^{r_2}}{e^{r_1} + e^{r_2}}.$$
#
# Divide the numerator and the denominator by $e^{r_2}$:
#
# $$P(y_2 \succ y_1) = \frac{1}{e^{r_1 - r_2} + 1} = \frac{1}{1 + e^{-(r_2 - r_1)}}
#   = \sigma(r_2 - r_1),$$
#
# where $\sigma(x) = 1/(1 + e^{-x})$ is the logistic sigmoid. The probability depends on the two
# rewards only through their **difference**.


# %%
def p_strengths(r1: float, r2: float) -> float:
    """P(y2 preferred to y1) as Bradley and Terry wrote it: a ratio of strengths e^r."""
    return math.exp(r2) / (math.exp(r1) + math.exp(r2))


def p_sigmoid(r1: float, r2: float) -> float:
    """The same probability after dividing through: sigma(r2 - r1)."""
    return 1.0 / (1.0 + math.exp(-(r2 - r1)))


for r1, r2 in [(0.0, 0.0), (0.0, 1.0), (1.3, -0.4), (2.0, 5.0)]:
    P = preference_matrix([r1, r2])  # rmcore: P[i][j] = sigma(r_i - r_j)
    assert math.isclose(p_strengths(r1, r2), p_sigmoid(r1, r2), rel_tol=1e-12)
    assert math.isclose(p_sigmoid(r1, r2), P[1][0], rel_tol=1e-12)
    print(f"r1={r1:+.1f} r2={r2:+.1f}  P(y2 > y1) = {p_sigmoid(r1, r2):.4f}")

# %% [markdown]
# ### Why dividing through matters on a computer
#
# The two forms are equal on paper, not in floating point: $e^{r}$ overflows for $r$ above
# about 709. The difference form never computes a huge exponential if we pick the branch by the
# sign of $x$ (for $x < 0$ use $\sigma(x) = e^{x} / (1 + e^{x})$). That is what `rmcore.model.reward_model.sigmoid`
# does, and why losses are written with `logsigmoid` rather than `log(sigmoid(...))`.

# %%
try:
    p_strengths(1000.0, 1001.0)
except OverflowError as exc:
    print("strength form:", exc)
print("difference form:", sigmoid(1001.0 - 1000.0))
assert math.isclose(sigmoid(1.0), p_sigmoid(1000.0, 1001.0), rel_tol=1e-12)
assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0  # no OverflowError in either direction

# %% [markdown]
# ## 1.2 Three properties of $\sigma$
#
# **It lies in $(0, 1)$.** For any real $x$, $e^{-x}$ is in $(0, \infty)$, so $1 + e^{-x}$ is in
# $(1, \infty)$ and its inverse in $(0, 1)$. A finite reward gap never makes a preference certain.
# (Floating point rounds $\sigma(x)$ to exactly 1.0 once $x > 37$ or so: the math says "almost
# sure", the computer says "sure".)
#
# **The two directions add up to one.**
#
# $$\sigma(-x) = \frac{1}{1 + e^{x}} = \frac{e^{-x}}{e^{-x} + 1} = 1 - \sigma(x),$$
#
# so $P(y_i \succ y_j) + P(y_j \succ y_i) = \sigma(r_i - r_j) + \sigma(r_j - r_i) = 1$: one of the
# two is always preferred (the model has no ties), and an answer against itself is a coin flip,
# $\sigma(0) = 1/2$. In matrix form, $P + P^\top = \mathbf{1}$ with $1/2$ on the diagonal.
#
# **Only differences matter.** Adding a constant $c$ to every reward changes nothing:
#
# $$\frac{e^{r_2 + c}}{e^{r_1 + c} + e^{r_2 + c}} = \frac{e^{c} e^{r_2}}{e^{c}(e^{r_1} + e^{r_2})}
#   = \frac{e^{r_2}}{e^{r_1} + e^{r_2}}.$$
#
# So "reward 3.2" means nothing by itself; only "0.8 more than that other answer" does. Data can
# never pin down the zero of the scale, which is why trainers such as TRL (and `rmcore`, with
# `center_coefficient`) add a small penalty $c \cdot \overline{r^2}$ to keep rewards near zero.

# %%
rewards = [0.7, -1.2, 2.5, 0.0]
P = np.array(preference_matrix(rewards))
assert ((P > 0) & (P < 1)).all()
assert np.allclose(P + P.T, 1.0) and np.allclose(np.diag(P), 0.5)
shifted = np.array(preference_matrix([r + 41.0 for r in rewards]))
assert np.allclose(P, shifted)  # shift invariance
print(np.round(P, 3))

# %% [markdown]
# **Scale does matter.** Multiplying every reward by $a$ multiplies every gap by $a$ and makes all
# preferences more ($a > 1$) or less ($a < 1$) certain. The unit of the reward is therefore not
# arbitrary: it is fixed by how consistent the judgements are. Solving $p = \sigma(\Delta)$ for the
# gap gives the **log-odds**,
#
# $$\Delta = \sigma^{-1}(p) = \log \frac{p}{1 - p},$$
#
# so a reward gap is the log of the odds that people prefer one answer. A gap of
# $\log 3 \approx 1.1$ means 3-to-1 odds (75%); matching labelers who agree 73% of the time takes
# a gap of only about 1.

# %%
def logit(p: float) -> float:
    """The reward gap that gives preference probability p."""
    return math.log(p / (1 - p))


for p in (0.55, 0.6, 0.726, 0.75, 0.9, 0.99):
    gap = logit(p)
    assert math.isclose(sigmoid(gap), p)
    print(f"P = {p:5.3f}  needs a reward gap of {gap:5.2f}")

# %%
x = np.linspace(-6, 6, 241)
fig = go.Figure()
for a in (0.5, 1.0, 2.0):
    fig.add_scatter(x=x, y=1 / (1 + np.exp(-a * x)), name=f"σ({a:g}·Δ)")
fig.add_hline(y=0.726, line_dash="dot", annotation_text="labeler agreement 72.6%")
fig.update_layout(title="P(winner preferred) against the reward gap Δ = r_w − r_l, at three scales",
                  xaxis_title="Δ", yaxis_title="probability", height=380)
fig.show()

# %% [markdown]
# ## 1.3 The loss: negative log-likelihood
#
# The data are comparisons $(y_w, y_l)$: winner and loser. If comparisons are independent, the
# likelihood of the rewards is $\prod \sigma(r_w - r_l)$, and maximising it is minimising the mean
# negative log-likelihood. Per comparison, with $\Delta = r_w - r_l$:
#
# $$\mathcal{L}(\Delta) = -\log \sigma(\Delta) = \log\left(1 + e^{-\Delta}\right).$$
#
# `rmcore.training.loss.bradley_terry_loss` computes exactly this, averaged over comparisons (notebook 2
# explains how it averages when a prompt has more than two answers). To call it we describe each
# comparison as a tiny "group" of two responses ranked 1 and 2; `pair_index` turns the groups into
# indices into a flat reward vector.

# %%
def stub_groups(rank_lists):
    """rmcore's EncodedGroup needs token ids only for their count; the loss needs just the ranks."""
    return [EncodedGroup(prompt_ids=[], response_ids=[[0]] * len(ranks), ranks=list(ranks))
            for ranks in rank_lists]


def bt_loss(r_w, r_l):
    """Mean of -log sigma(r_w - r_l) over comparisons."""
    return -F.logsigmoid(r_w - r_l).mean()


r_w, r_l = torch.tensor([1.0, 0.2, -0.5]), torch.tensor([0.0, 0.9, -3.0])
flat = torch.stack([r_w, r_l], dim=1).reshape(-1)  # (w0, l0, w1, l1, ...): group i = responses 2i, 2i+1
loss, stats = bradley_terry_loss(flat, pair_index(stub_groups([[1, 2]] * 3)))
assert torch.isclose(loss, bt_loss(r_w, r_l))
assert torch.isclose(loss, torch.log1p(torch.exp(-(r_w - r_l))).mean())  # the log(1 + e^-Δ) form
print(f"loss = {float(loss):.4f}; rmcore also reports {stats}")

# %% [markdown]
# ## 1.4 The gradient
#
# Since $\sigma'(x) = \sigma(x)\,(1 - \sigma(x))$,
#
# $$\frac{d\mathcal{L}}{d\Delta} = -\frac{\sigma'(\Delta)}{\sigma(\Delta)} = -(1 - \sigma(\Delta))
#   = -\sigma(-\Delta),$$
#
# and because $\Delta = r_w - r_l$,
#
# $$\frac{\partial \mathcal{L}}{\partial r_w} = -(1 - \sigma(\Delta)), \qquad
#   \frac{\partial \mathcal{L}}{\partial r_l} = +(1 - \sigma(\Delta)).$$
#
# Read it as: *push the winner up and the loser down, by the probability the model currently
# gives to the wrong answer.* A comparison the model already gets confidently right
# ($\sigma(\Delta) \approx 1$) contributes almost nothing; a confident mistake contributes almost
# the full unit. The two partial derivatives also cancel, so **gradient descent never changes the
# sum of the rewards** — the shift invariance of 1.2 seen from the optimiser's side.

# %%
def bt_grad(delta: torch.Tensor) -> torch.Tensor:
    """dL/dΔ for one comparison."""
    return -(1 - torch.sigmoid(delta))


rewards = torch.tensor([1.0, 0.0, 0.2, 0.9, -0.5, -3.0], requires_grad=True)
loss, _ = bradley_terry_loss(rewards, pair_index(stub_groups([[1, 2]] * 3)))
loss.backward()
delta = (rewards[0::2] - rewards[1::2]).detach()
assert torch.allclose(rewards.grad[0::2], bt_grad(delta) / 3)  # winners; /3: the mean over comparisons
assert torch.allclose(rewards.grad[1::2], -bt_grad(delta) / 3)  # losers
assert abs(float(rewards.grad.sum())) < 1e-12  # the sum of rewards does not move
print("gradient on each reward:", rewards.grad.numpy().round(4))

# %%
d = np.linspace(-6, 6, 241)
fig = make_subplots(rows=1, cols=2, subplot_titles=("loss −log σ(Δ)", "gradient dL/dΔ = −(1 − σ(Δ))"))
fig.add_scatter(x=d, y=np.log1p(np.exp(-d)), name="loss", row=1, col=1)
fig.add_scatter(x=d, y=-(1 - 1 / (1 + np.exp(-d))), name="gradient", row=1, col=2)
fig.update_xaxes(title_text="Δ = r_w − r_l")
fig.update_layout(height=360, showlegend=False)
fig.show()

# %% [markdown]
# ## 1.5 The optimum is only approached
#
# $\mathcal{L}(\Delta) = \log(1 + e^{-\Delta}) > 0$ for every finite $\Delta$, and it tends to 0
# only as $\Delta \to \infty$. Its gradient is never zero either. So if a set of comparisons can be
# satisfied perfectly (every winner always beats every loser, as happens with few data and a big
# model), there is **no minimum**: gradient descent keeps widening the gap forever, slowly.
# With step size $\eta$ on both rewards, $\Delta$ grows by $2\eta(1 - \sigma(\Delta)) \approx 2\eta
# e^{-\Delta}$ per step, so $e^{\Delta}$ grows by about $2\eta$ per step: $\Delta \approx
# \log(2\eta t)$ and the loss $\approx e^{-\Delta} \approx 1/(2\eta t)$.
#
# In practice the gap stops growing because data disagree with each other (a preference that
# holds 73% of the time is best fit by a finite gap, $\log(0.73/0.27) \approx 1$), or because we
# stop early, decay weights, or penalise $\overline{r^2}$.

# %%
eta, delta = 0.5, 0.0
checkpoints = {10, 100, 1_000, 10_000, 100_000}
for t in range(1, 100_001):
    delta += 2 * eta * (1 - sigmoid(delta))  # one gradient step on r_w and one on r_l
    if t in checkpoints:
        loss_t = math.log1p(math.exp(-delta))
        print(f"step {t:>7}: gap {delta:6.2f}   log(2ηt) {math.log(2 * eta * t):6.2f}   loss {loss_t:.2e}")
assert delta > 11 and 0 < math.log1p(math.exp(-delta)) < 1e-4  # far along, still not zero

# %% [markdown]
# ## 1.6 It is logistic regression
#
# Suppose the reward is linear in some fixed features of the answer, $r(y) = w^\top \phi(y)$.
# (This is exactly `rmcore`'s *head* training mode: the transformer is frozen and $\phi(y)$ is
# its last hidden state; only $w$ learns. Notebook 3 shows where $\phi$ comes from.) Then
#
# $$\Delta = w^\top \phi(y_w) - w^\top \phi(y_l) = w^\top \big(\phi(y_w) - \phi(y_l)\big) = w^\top x,$$
#
# and $-\log \sigma(w^\top x)$ is the loss of logistic regression on the input $x = \phi(y_w) -
# \phi(y_l)$ with the label "1". Two things follow. A bias term $b$ in $r = w^\top \phi + b$
# cancels in the difference, so a reward head needs none (Llama's `score` layer has
# `bias=False`). And everything known about logistic regression carries over: convex in $w$,
# no finite optimum on separable data (1.5), weight decay as the usual cure.

# %%
torch.manual_seed(0)
n, dim = 50, 8
phi_w, phi_l, w = torch.randn(n, dim), torch.randn(n, dim), torch.randn(dim)
rewards = torch.stack([phi_w @ w, phi_l @ w], dim=1).reshape(-1)  # r = w·φ for every response
bt, _ = bradley_terry_loss(rewards, pair_index(stub_groups([[1, 2]] * n)))
logreg = F.binary_cross_entropy_with_logits((phi_w - phi_l) @ w, torch.ones(n))
assert torch.isclose(bt, logreg)
with_bias = torch.stack([phi_w @ w + 3.0, phi_l @ w + 3.0], dim=1).reshape(-1)
assert torch.isclose(bradley_terry_loss(with_bias, pair_index(stub_groups([[1, 2]] * n)))[0], bt)
print(f"Bradley-Terry loss {float(bt):.6f} = logistic-regression loss {float(logreg):.6f}")

# %% [markdown]
# ## 1.7 A toy: recover rewards from judgements
#
# Invent six answers with known rewards $r^\star$. Simulate many comparisons: pick two answers at
# random and let a simulated person prefer $i$ over $j$ with probability $\sigma(r^\star_i -
# r^\star_j)$ — exactly the Bradley-Terry story. Then forget $r^\star$, start every reward at 5
# (any value; it will not matter) and run gradient descent on the mean loss, using the gradient of
# 1.4 summed over comparisons:
#
# $$\frac{\partial \bar{\mathcal{L}}}{\partial r_k} = \frac{1}{M}\sum_{c:\, w_c = k} -(1 - \sigma(\Delta_c))
#   + \frac{1}{M}\sum_{c:\, l_c = k} (1 - \sigma(\Delta_c)).$$
#
# We expect to recover $r^\star$ **up to a shift**: the mean of the fitted rewards stays at 5
# (the gradient sums to zero), so we compare after subtracting each vector's mean.

# %%
rng = np.random.default_rng(0)
r_true = np.array([-1.5, -0.6, 0.0, 0.4, 1.1, 2.0])
M = 4000
i, j = rng.integers(0, 6, M), rng.integers(0, 6, M)
i, j = i[i != j], j[i != j]
i_wins = rng.random(len(i)) < 1 / (1 + np.exp(-(r_true[i] - r_true[j])))
winners, losers = np.where(i_wins, i, j), np.where(i_wins, j, i)
best_in = (winners == 5) | (losers == 5)
print(f"{len(winners)} simulated comparisons; y5 (the best) won {np.mean(winners[best_in] == 5):.0%} "
      "of the ones it took part in")


# %%
def gradient(r: np.ndarray) -> np.ndarray:
    """Gradient of the mean Bradley-Terry loss over all comparisons, from the formula above."""
    g = 1 - 1 / (1 + np.exp(-(r[winners] - r[losers])))  # 1 - σ(Δ_c) per comparison
    grad = np.zeros_like(r)
    np.add.at(grad, winners, -g)
    np.add.at(grad, losers, g)
    return grad / len(winners)


r = np.full(6, 5.0)
check = torch.tensor(r[np.stack([winners, losers], 1).reshape(-1)], requires_grad=True)
bradley_terry_loss(check, pair_index(stub_groups([[1, 2]] * len(winners))))[0].backward()
autograd = np.zeros(6)
np.add.at(autograd, np.stack([winners, losers], 1).reshape(-1), check.grad.numpy())
assert np.allclose(gradient(r), autograd)  # our formula = autograd through rmcore's loss

history = []
for _ in range(400):
    history.append(float(np.mean(np.log1p(np.exp(-(r[winners] - r[losers]))))))
    r -= 2.0 * gradient(r)
assert math.isclose(r.mean(), 5.0)  # the shift we started with is still there
err = (r - r.mean()) - (r_true - r_true.mean())
print("fitted (centred):", np.round(r - r.mean(), 2))
print("true   (centred):", np.round(r_true - r_true.mean(), 2))
assert np.abs(err).max() < 0.2

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("mean loss during gradient descent",
                                                    "fitted against true rewards (both centred)"))
fig.add_scatter(y=history, mode="lines", name="loss", row=1, col=1)
fig.add_scatter(x=r_true - r_true.mean(), y=r - r.mean(), mode="markers+text", name="answers",
                text=[f"y{k}" for k in range(6)], textposition="top left", row=1, col=2)
fig.add_scatter(x=[-2.5, 2.5], y=[-2.5, 2.5], mode="lines", line_dash="dot", name="y = x", row=1, col=2)
fig.update_xaxes(title_text="step", row=1, col=1)
fig.update_xaxes(title_text="true r*", row=1, col=2)
fig.update_yaxes(title_text="fitted r", row=1, col=2)
fig.update_layout(height=380, showlegend=False)
fig.show()

# %% [markdown]
# The points sit on the diagonal: from nothing but "A beat B" judgements, the rewards come back,
# with their scale (the simulated people were exactly as noisy as $\sigma$ says) but not their
# zero (which the judgements never contained). The loss flattens at a positive value — about the
# entropy of the simulated judgements — not at zero, because the data disagree with themselves
# (1.5). A reward model does the same thing with $r = w^\top \phi(\text{prompt}, \text{answer})$ in
# place of one free number per answer, so it can score answers it has never seen.
#
# **Next:** [notebook 2](02_rankings_to_pairs.ipynb) — people usually rank more than two answers;
# how do rankings become the comparisons used here?
