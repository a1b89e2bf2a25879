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
# # 6. From reward to policy
#
# A reward model is a means: it exists to make a **policy** (the LLM that writes answers) better.
# This notebook derives the three ways rmcore turns a reward into a better policy, and what each
# one costs in distance from the policy we started with:
#
# 1. **best-of-$n$**: sample $n$ answers, keep the reward model's favourite. It is a policy of its
#    own, and its distance from the starting policy has a closed form, $\log n - (n-1)/n$.
# 2. the **best-of-$n$ curve** from a fixed pool of $N$ samples, computed exactly with order
#    statistics rather than by resampling;
# 3. **fine-tuning with a KL leash**: maximise reward minus $\beta$ times the KL divergence to the
#    starting policy. Its optimum is known in closed form, $\pi^* \propto \pi_\text{ref}\, e^{r/\beta}$;
#    rejection sampling and GRPO are two ways of moving toward it, and GRPO's "group-normalised
#    advantage" is the baseline that makes it work without a value network.
#
# Each result is checked numerically and asserted against `rmcore` (and, for GRPO, against TRL's
# `GRPOTrainer`, which rmcore drives). Everything runs on small discrete examples and a tiny random
# model: the notebook takes seconds, and no model is downloaded.

# %%
import math
import os
import tempfile
import warnings
from itertools import combinations
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renamed-argument notices
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from rmcore.policy.best_of_n import (
    best_of_n_expectation,
    brute_force_best_of_n,
    kl_best_of_n,
    order_statistic_weights,
    win_rate_bound,
)

rng = np.random.default_rng(0)

# %% [markdown]
# ## 6.1 Best-of-$n$ is a policy
#
# Fix a prompt $x$. The policy $\pi$ gives each answer $y$ a probability $\pi(y)$ and the reward
# model a reward $r(y)$. Assume for now that no two answers have the same reward, and let
# $F(t) = P_{y \sim \pi}(r(y) \le t)$ be the distribution function of the reward of one sample.
#
# Best-of-$n$ draws $y_1, \dots, y_n \sim \pi$ independently and returns the one with the highest
# reward. The returned reward is at most $t$ exactly when all $n$ rewards are, so its distribution
# function is $F(t)^n$. For a single answer $y$ (a jump of $F$ from $F^-(y)$ to $F(y)$,
# with $F(y) - F^-(y) = \pi(y)$):
#
# $$\pi_n(y) = F(y)^n - F^-(y)^n .$$
#
# When every answer is rare ($\pi(y)$ small, the usual case for a language model), the difference
# is a derivative: $\pi_n(y) \approx n\,F(y)^{n-1}\,\pi(y)$. Best-of-$n$ *reweights* the policy by
# $n F^{n-1}$: answers in the top of the reward distribution get up to $n$ times their
# probability, answers in the bottom almost none.

# %%
def best_of_n_policy(pi: np.ndarray, rewards: np.ndarray, n: int) -> np.ndarray:
    """Exact best-of-n distribution over a finite set of answers with distinct rewards."""
    order = np.argsort(rewards)
    cdf = np.cumsum(pi[order])
    below = np.concatenate([[0.0], cdf[:-1]])
    out = np.empty_like(pi)
    out[order] = cdf**n - below**n
    return out


# a "language model" over 2,000 answers with random rewards
answers = 2000
pi = rng.dirichlet(np.ones(answers))
rewards = rng.normal(size=answers)
pi_4 = best_of_n_policy(pi, rewards, 4)
assert abs(pi_4.sum() - 1) < 1e-12

# the same thing by simulation: draw 4, keep the best, many times
draws = rng.choice(answers, size=(200_000, 4), p=pi)
picked = draws[np.arange(len(draws)), rewards[draws].argmax(axis=1)]
simulated = np.bincount(picked, minlength=answers) / len(picked)
print(f"largest difference between exact and simulated best-of-4 probabilities: "
      f"{np.abs(simulated - pi_4).max():.4f}")
assert np.abs(simulated - pi_4).max() < 5e-3

# %% [markdown]
# ### Its distance from the policy: $\mathrm{KL}(\pi_n \,\|\, \pi) = \log n - \frac{n-1}{n}$
#
# With $\pi_n = n F^{n-1} \pi$, the log-ratio is $\log \pi_n(y)/\pi(y) = \log n + (n-1) \log F(y)$,
# so
#
# $$\mathrm{KL}(\pi_n \| \pi) = \mathbb{E}_{y \sim \pi_n}\big[\log n + (n-1)\log F(y)\big]
#   = \log n + (n-1)\, \mathbb{E}[\log U],$$
#
# where $U = F(r(y))$ for $y \sim \pi_n$. Under $\pi$, $F(r(y))$ is uniform on $[0, 1]$, so under
# best-of-$n$ it is the maximum of $n$ uniforms, with density $n u^{n-1}$. Then
# $\mathbb{E}[\log U] = \int_0^1 n u^{n-1} \log u \, du = -1/n$ (integrate by parts), and
#
# $$\boxed{\mathrm{KL}(\pi_n \| \pi) = \log n - \frac{n-1}{n}}$$
#
# It does not depend on the policy, the prompt or the reward model: best-of-16 is always
# $\log 16 - 15/16 \approx 1.84$ nats from the policy. With ties or answers that are not rare, the
# exact KL is smaller, so the formula is an **upper bound** (Beirami et al., 2024). The same
# argument gives the win rate: the best of $n$ beats one fresh sample of $\pi$ when it is the best
# of $n+1$, which happens with probability $n/(n+1)$.

# %%
def kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


ns = np.array([1, 2, 4, 8, 16, 32])
exact = np.array([kl(best_of_n_policy(pi, rewards, n), pi) for n in ns])
for n, value in zip(ns, exact):
    print(f"n = {n:>2}: exact KL {value:.4f}   log n - (n-1)/n = {kl_best_of_n(n):.4f}")
assert np.all(exact <= kl_best_of_n(ns) + 1e-9)  # an upper bound ...
assert np.allclose(exact, kl_best_of_n(ns), atol=0.02)  # ... tight when every answer is rare

# the win rate n/(n+1), from the exact distributions: P(best-of-n reward > one sample's reward)
for n in (1, 4, 16):
    pick = best_of_n_policy(pi, rewards, n)
    order = np.argsort(rewards)
    cdf_below = np.concatenate([[0.0], np.cumsum(pi[order])[:-1]])  # P(one sample has a lower reward)
    win = float(pick[order] @ cdf_below)
    assert abs(win - win_rate_bound(n)) < 0.01, (n, win)

# %% [markdown]
# ## 6.2 The best-of-$n$ curve from $N$ samples, exactly
#
# In practice we do not know $F$; we have $N$ sampled answers per prompt and their rewards
# (`rmcore sample`, then `rmcore bon`). What would best-of-$n$ give, for every $n \le N$? The
# obvious answer is to resample: draw $n$ of the $N$ many times and average the winner's reward.
# That is noisy and slow. There is an exact answer.
#
# Sort the rewards, $r_{(1)} \le \dots \le r_{(N)}$. A random $n$-subset has its maximum at the
# $i$-th smallest exactly when it contains item $i$ and its other $n-1$ members come from the
# $i-1$ smaller ones: $\binom{i-1}{n-1}$ of the $\binom{N}{n}$ equally likely subsets. So
#
# $$\mathbb{E}[\text{reward of the best of } n] = \sum_{i=1}^{N} w_i\, r_{(i)}, \qquad
#   w_i = \frac{\binom{i-1}{n-1}}{\binom{N}{n}} .$$
#
# The weights sum to one (Vandermonde's "hockey stick" identity
# $\sum_i \binom{i-1}{n-1} = \binom{N}{n}$). For $n=1$ every $w_i = 1/N$ (the mean); for $n=N$ only
# $w_N = 1$ (the maximum). Any other property of the picked answer (its *gold* reward from an
# independent judge, its length) is averaged with the same weights, in the proxy's order: that is
# how `rmcore bon` draws the gold and length curves.

# %%
N = 8
sample_rewards = rng.normal(size=N)
for n in range(1, N + 1):
    w = order_statistic_weights(N, n)
    by_hand = np.array([math.comb(i - 1, n - 1) / math.comb(N, n) for i in range(1, N + 1)])
    assert np.allclose(w, by_hand) and abs(w.sum() - 1) < 1e-12
    # every one of the C(N, n) subsets, enumerated
    enumerated = np.mean([max(sample_rewards[list(s)]) for s in combinations(range(N), n)])
    assert abs(best_of_n_expectation(sample_rewards, n) - enumerated) < 1e-12
assert abs(best_of_n_expectation(sample_rewards, 1) - sample_rewards.mean()) < 1e-12
assert best_of_n_expectation(sample_rewards, N) == sample_rewards.max()
print("order statistics == enumeration of all subsets, for every n <= 8")

# %% [markdown]
# Against brute-force resampling on a larger pool ($N = 32$, as in the curves): the
# resampled estimate scatters around the exact value by its standard error, and the exact value
# costs one sort.

# %%
N = 32
proxy = rng.normal(size=N)
gold = 0.6 * proxy + 0.8 * rng.normal(size=N)  # a judge that agrees only partly with the proxy
rows = []
for n in (1, 2, 4, 8, 16, 32):
    mean, se = brute_force_best_of_n(proxy, n, draws=4000, rng=rng)
    exact_value = best_of_n_expectation(proxy, n)
    gold_mean, gold_se = brute_force_best_of_n(proxy, n, draws=4000, rng=rng, values=gold)
    exact_gold = best_of_n_expectation(proxy, n, values=gold)
    rows.append((n, exact_value, mean, se, exact_gold, gold_mean))
    assert abs(mean - exact_value) <= 4 * se + 1e-12, (n, mean, exact_value, se)
    assert abs(gold_mean - exact_gold) <= 4 * gold_se + 1e-12
print(" n   exact   resampled (se)    gold: exact  resampled")
for n, e, m, s, eg, mg in rows:
    print(f"{n:>2}  {e:6.3f}   {m:6.3f} ({s:.3f})        {eg:6.3f}   {mg:6.3f}")

fig = make_subplots(rows=1, cols=2, subplot_titles=("reward of the pick against n",
                                                    "against KL(best-of-n || policy)"))
ns_curve = list(range(1, N + 1))
proxy_curve = [best_of_n_expectation(proxy, n) for n in ns_curve]
gold_curve = [best_of_n_expectation(proxy, n, values=gold) for n in ns_curve]
for values, name in ((proxy_curve, "proxy (the reward model)"), (gold_curve, "gold (an independent judge)")):
    fig.add_trace(go.Scatter(x=ns_curve, y=values, name=name, mode="lines"), row=1, col=1)
    fig.add_trace(go.Scatter(x=kl_best_of_n(np.array(ns_curve)), y=values, name=name, mode="lines",
                             showlegend=False), row=1, col=2)
fig.update_xaxes(type="log", title_text="n", row=1, col=1)
fig.update_xaxes(title_text="KL (nats)", row=1, col=2)
fig.update_layout(height=340, margin=dict(t=40, b=10))
fig.show()

# %% [markdown]
# The proxy curve rises by construction (the pick is chosen by it). The gold curve rises more
# slowly here because the judge agrees only partly; with a real reward model, a gold curve that
# **flattens or falls** while the proxy keeps rising is over-optimisation: the policy is being
# pushed toward what the proxy over-rates (longer answers, flattery). Goodhart's law: when a
# measure becomes a target, it ceases to be a good measure.

# %% [markdown]
# ## 6.3 The KL-regularised objective and its optimum
#
# Fine-tuning the policy (rather than sampling $n$ times at every use) optimises
#
# $$J(\pi) = \mathbb{E}_{y \sim \pi}[r(y)] - \beta\, \mathrm{KL}(\pi \,\|\, \pi_\text{ref}),$$
#
# the reward minus a leash to the starting policy $\pi_\text{ref}$ ($\beta$ is `--kl-coef`). Define
#
# $$\pi^*(y) = \frac{1}{Z}\, \pi_\text{ref}(y)\, e^{r(y)/\beta}, \qquad
#   Z = \sum_y \pi_\text{ref}(y)\, e^{r(y)/\beta}.$$
#
# Then $r(y) = \beta \log \frac{\pi^*(y)}{\pi_\text{ref}(y)} + \beta \log Z$, and substituting,
#
# $$J(\pi) = \mathbb{E}_{\pi}\Big[\beta \log \tfrac{\pi^*}{\pi_\text{ref}} + \beta\log Z
#   - \beta \log \tfrac{\pi}{\pi_\text{ref}}\Big]
#   = \beta \log Z - \beta\, \mathrm{KL}(\pi \,\|\, \pi^*).$$
#
# KL is never negative and is zero only at $\pi = \pi^*$: **the optimum is $\pi^*$**, with
# $J(\pi^*) = \beta \log Z$. Small $\beta$ puts all the mass on the best answer (best-of-$\infty$);
# large $\beta$ keeps $\pi_\text{ref}$. This is also why a reward model's rewards are only defined
# up to a constant (notebook 1): adding $c$ to every $r$ multiplies $Z$ by $e^{c/\beta}$ and leaves
# $\pi^*$ unchanged. (DPO starts from the same identity, solved for $r$.)
#
# We check it on six answers: gradient ascent on $J$ over all policies (softmax logits) finds
# $\pi^*$.

# %%
pi_ref = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
r = np.array([0.0, 0.5, -0.3, 1.2, 2.0, 0.7])
beta = 0.5

pi_star = pi_ref * np.exp(r / beta)
Z = pi_star.sum()
pi_star /= Z


def objective(p: torch.Tensor) -> torch.Tensor:
    """J(pi) = E_pi[r] - beta KL(pi || pi_ref)."""
    ref, rew = torch.tensor(pi_ref), torch.tensor(r)
    return (p * rew).sum() - beta * (p * (p / ref).log()).sum()


logits = torch.zeros(6, dtype=torch.float64, requires_grad=True)
optimizer = torch.optim.Adam([logits], lr=0.05)
for _ in range(3000):
    optimizer.zero_grad()
    (-objective(torch.softmax(logits, 0))).backward()
    optimizer.step()
found = torch.softmax(logits, 0).detach().numpy()
print("pi_ref ", np.round(pi_ref, 3))
print("pi*    ", np.round(pi_star, 3))
print("ascent ", np.round(found, 3))
assert np.allclose(found, pi_star, atol=1e-4)
assert abs(objective(torch.tensor(pi_star)).item() - beta * math.log(Z)) < 1e-12
assert np.allclose(pi_ref * np.exp((r + 3.0) / beta) / (pi_ref * np.exp((r + 3.0) / beta)).sum(), pi_star)

# %% [markdown]
# ### Measuring the KL of a trained policy
#
# During a run rmcore reports $\mathrm{KL}(\pi \,\|\, \pi_\text{ref})$ on held-out prompts. Over
# millions of possible answers it cannot be summed; it is estimated from the policy's own samples:
# $\mathrm{KL} = \mathbb{E}_{y\sim\pi}[\log \pi(y) - \log \pi_\text{ref}(y)]$, averaged over
# answers (in nats per answer). The log-probability of an answer is the sum of its tokens'
# log-probabilities, and with LoRA the reference is the same network with its adapters switched
# off. On the six answers, the sample mean converges to the exact KL:

# %%
exact_kl = kl(pi_star, pi_ref)
draws = rng.choice(6, size=100_000, p=pi_star)
log_ratio = np.log(pi_star[draws] / pi_ref[draws])
estimate, se = log_ratio.mean(), log_ratio.std() / math.sqrt(len(draws))
print(f"exact KL(pi* || pi_ref) = {exact_kl:.4f}, Monte Carlo {estimate:.4f} +- {se:.4f}")
assert abs(estimate - exact_kl) < 4 * se

# %% [markdown]
# The same sum of token log-probabilities, on a tiny random language model, against rmcore's
# `answer_log_probs` (what the held-out KL and rejection sampling's KL-regularised pick use). A
# freshly added LoRA adapter is the identity, so the policy starts at exactly zero KL.

# %%
from rmcore.model.tiny import build_tiny_model, build_tiny_reward_model
from rmcore.policy.config import RLHFConfig
from rmcore.policy.evaluation import answer_log_probs, log_ratio_to_reference
from rmcore.policy.models import add_lora, load_policy
from rmcore.policy.sampling import prompt_token_ids

workdir = Path(tempfile.mkdtemp(prefix="nb06-"))
policy_dir = build_tiny_model(workdir / "policy", seed=3)
model, tokenizer, _ = load_policy(policy_dir, device="cpu")
prompt = prompt_token_ids(tokenizer, "Name a prime number")
answer = tokenizer("7, or 11.<|im_end|>", add_special_tokens=False)["input_ids"]

with torch.no_grad():
    lm_logits = model(torch.tensor([prompt + answer])).logits[0].double()  # (T, vocab)
token_log_probs = torch.log_softmax(lm_logits[:-1], -1)[torch.arange(len(prompt + answer) - 1),
                                                      torch.tensor((prompt + answer)[1:])]
by_hand = token_log_probs[len(prompt) - 1:].sum().item()  # the answer's tokens only
from_rmcore = answer_log_probs(model, [prompt], [answer]).item()
print(f"log pi(answer | prompt): by hand {by_hand:.5f}, rmcore {from_rmcore:.5f}")
assert abs(by_hand - from_rmcore) < 1e-4

lora_policy = add_lora(model, RLHFConfig(reward_model="unused"))
assert log_ratio_to_reference(lora_policy, [prompt], [answer]).abs().max().item() == 0.0

# %% [markdown]
# ## 6.4 GRPO's group-normalised advantage
#
# A policy-gradient step raises $\log \pi(y)$ in proportion to how much better $y$ was than
# expected: the **advantage** $A(y) = r(y) - b$, where the baseline $b$ can be anything that does
# not depend on $y$ (it leaves the expected gradient unchanged, since
# $\mathbb{E}_\pi[\nabla \log \pi] = \nabla \sum_y \pi(y) = 0$) but should be close to
# $\mathbb{E}_\pi[r]$ to keep the variance low. PPO learns $b$ with a value network as big as the
# policy. **GRPO** (Shao et al., 2024) samples a *group* of $G$ answers per prompt and uses the
# group itself:
#
# $$A_i = \frac{r_i - \operatorname{mean}(r_1, \dots, r_G)}{\operatorname{std}(r_1, \dots, r_G) + \varepsilon}
#   \qquad (\varepsilon = 10^{-4}\text{ in TRL, std with Bessel's } G-1).$$
#
# Three consequences worth seeing:
# - the advantages of a group sum to zero: some answers are pushed up, others down;
# - adding a constant to every reward of a prompt, or scaling them, changes nothing: a
#   Bradley-Terry reward model's arbitrary offset (notebook 1) is harmless, and prompts whose
#   rewards differ in scale weigh the same;
# - a group whose answers all get the same reward has $A = 0$: no signal (TRL logs the share of
#   such groups as `frac_reward_zero_std`). This is why $G \ge 2$, and why G = 8 or more helps.
#
# The reward of each answer comes from rmcore's `RewardFunction`, which scores the $G$ answers of
# a prompt in one packed pass (the prompt computed once). We run one real GRPO step of TRL's
# `GRPOTrainer` on the tiny model and recompute its advantages from the rewards it logged.

# %%
def group_advantages(rewards: np.ndarray, G: int, eps: float = 1e-4) -> np.ndarray:
    grouped = rewards.reshape(-1, G)  # (prompts, G)
    mean = grouped.mean(axis=1, keepdims=True)
    std = grouped.std(axis=1, ddof=1, keepdims=True)
    return ((grouped - mean) / (std + eps)).reshape(-1)


demo = np.array([1.0, 2.0, 4.0, 1.0, -3.0, -2.0, -2.0, -1.0])
A = group_advantages(demo, G=4)
assert np.allclose(A.reshape(2, 4).sum(axis=1), 0)
shifted = demo + np.repeat([10.0, -7.0], 4)  # a different constant added to each prompt's rewards
assert np.allclose(group_advantages(shifted, G=4), A)
assert np.allclose(group_advantages(np.array([3.0, 3.0, 3.0, 3.0]), G=4), 0)

# %%
from datasets import Dataset
from transformers import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from rmcore.model.reward_model import RewardModel
from rmcore.policy.reward_function import RewardFunction

G = 4
reward_function = RewardFunction(RewardModel.load(build_tiny_reward_model(workdir / "rm"), device="cpu"))
prompts = ["How do I boil an egg?", "Name a prime number"]
trainer = GRPOTrainer(
    model=str(policy_dir), reward_funcs=reward_function, train_dataset=Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p}]} for p in prompts]),
    args=GRPOConfig(output_dir=str(workdir / "trl"), num_generations=G, per_device_train_batch_size=2 * G,
                    max_completion_length=8, max_steps=1, report_to="none", use_cpu=True, bf16=False,
                    gradient_checkpointing=False, disable_tqdm=True, logging_steps=1, seed=0),
)
trainer.remove_callback(PrinterCallback)  # TRL's raw log lines; we print what we check below
trainer.train()
logged_rewards = np.array(trainer._logs["rewards"]["rmcore_reward"])  # TRL's record of the step
logged_advantages = np.array(trainer._logs["advantages"])
ours = group_advantages(logged_rewards, G)
print("rewards    ", np.round(logged_rewards, 4))
print("TRL's A    ", np.round(logged_advantages, 3))
print("group_adv. ", np.round(ours, 3))
assert np.allclose(ours, logged_advantages, atol=1e-4)

# %% [markdown]
# The random tiny model's rewards are tiny numbers, yet the advantages are of order one: the
# normalisation makes the step size independent of the reward model's scale (and a group of
# identical rewards would make it 0). `rmcore rlhf --method grpo` runs exactly this trainer, with
# LoRA on the policy, $\beta$ = `--kl-coef` for the KL term (TRL's per-token estimate against the
# adapters-off reference), and a held-out evaluation (proxy reward, gold reward, KL, length)
# before training and after every pass over the prompts.
#
# **What to take away.** Best-of-$n$ and KL-regularised fine-tuning both trade distance from the
# starting policy for reward, and both are only as good as the reward model: past some KL, the
# proxy keeps rising while an independent judge does not. Measure the gold reward and the length
# of what you get, not only the reward you optimised.

# %% [markdown]
# ## 6.5 When the proxy is gamed: why the proxy must rise and when the gold must turn
#
# Everything so far scores answers with the reward model we optimise, the **proxy**. The
# over-optimisation lesson (`rmcore lesson goodhart`, and the Best-of-n & RLHF page) shows what an
# independent **gold** judge says meanwhile: its proxy learned from a labeler who liked answers that
# end on an exclamation mark, its gold judge from data that penalises them, and best-of-$n$ over the
# embedded policy pushes the proxy up at every $n$ while the gold first rises and then falls. Here
# is why that shape is not an accident of one run.
#
# **The proxy of the pick always rises.** For any draw of $n + 1$ answers,
# $\max(R_1, \dots, R_{n+1}) \ge \max(R_1, \dots, R_n)$, so $E[r_p(y_{n+1})] \ge E[r_p(y_n)]$, with
# equality only if the reward never varies. Nothing in this argument knows what the reward means:
# best-of-$n$ pushes *any* score up, flaws included.
#
# **The gold of the pick.** Give each answer an honest quality $g$ that both judges see and a trait
# $t \in \{0, 1\}$ that a share $q$ of the policy's answers carries, with proxy $r_p = g + a\,t$ and
# gold $r_g = g - c\,t$ ($a, c > 0$: the lesson's two labelers agree on everything but the trait).
# Then $r_g = r_p - (a + c)\,t$ for every answer, and so for the pick $y_n$:
#
# $$E[r_g(y_n)] = E[r_p(y_n)] - (a + c)\, s(n), \qquad s(n) = P\big(t(y_n) = 1\big).$$
#
# The gold falls from $n$ to $2n$ exactly when $(a + c)\,[s(2n) - s(n)] > E[r_p(y_{2n})] - E[r_p(y_n)]$:
# when the extra picks that carry the trait cost more than the honest gain is worth.
#
# **Exact curves.** With $g \sim N(0, 1)$ the proxy's distribution is the mixture
# $F(x) = (1 - q)\,\Phi(x) + q\,\Phi(x - a)$. The best of $n$ has CDF $F^n$, so
# $E[r_p(y_n)] = \int x \, d F(x)^n$; and the pick carries the trait when the largest of the $n$ is a
# trait answer, which by symmetry is $n$ times the chance that answer 1 is one and beats the other
# $n - 1$: $s(n) = n\,q \int \varphi(x - a)\, F(x)^{n-1}\, dx$.

# %%
x = np.linspace(-9.0, 16.0, 20001)
dx = x[1] - x[0]


def Phi(z):
    return torch.special.ndtr(torch.as_tensor(z, dtype=torch.float64)).numpy()


def phi(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def exact_curves(a: float, c: float, q: float, ns) -> dict[str, np.ndarray]:
    """E[proxy of the pick], the trait's share s(n) and E[gold of the pick] for each n, by quadrature."""
    F = (1 - q) * Phi(x) + q * Phi(x - a)
    density = (1 - q) * phi(x) + q * phi(x - a)
    proxy = np.array([(x * n * F ** (n - 1) * density).sum() * dx for n in ns])
    share = np.array([(n * q * phi(x - a) * F ** (n - 1)).sum() * dx for n in ns])
    return {"proxy": proxy, "share": share, "gold": proxy - (a + c) * share}


ns = [1, 2, 4, 8, 16, 32]
a, c, q = 2.0, 2.0, 0.08  # about the lesson's: the trait is rare in the policy's answers
exact = exact_curves(a, c, q, ns)

# Monte Carlo check: 200,000 draws of 32 answers
draws = 200_000
g = rng.normal(size=(draws, 32))
t = (rng.random((draws, 32)) < q).astype(float)
proxy_draws, gold_draws = g + a * t, g - c * t
for i, n in enumerate(ns):
    pick = proxy_draws[:, :n].argmax(axis=1)
    rows = np.arange(draws)
    assert abs(proxy_draws[rows, pick].mean() - exact["proxy"][i]) < 0.02
    assert abs(t[rows, pick].mean() - exact["share"][i]) < 0.01
    assert abs(gold_draws[rows, pick].mean() - exact["gold"][i]) < 0.03
assert np.all(np.diff(exact["proxy"]) > 0)  # the proxy rises at every n
peak = int(np.argmax(exact["gold"]))
assert 0 < peak < len(ns) - 1  # the gold first rises, then falls
print("n      ", ns)
print("proxy  ", np.round(exact["proxy"], 3))
print("share  ", np.round(exact["share"], 3))
print("gold   ", np.round(exact["gold"], 3), f"(peak at n = {ns[peak]})")

# %% [markdown]
# **Why the flaw must be rare and discrete for the gold to *turn*.** Suppose instead the flaw were a
# continuous score $t \sim N(0, 1)$ independent of $g$. Then $(r_p, r_g)$ are jointly Gaussian, and
# $E[r_g \mid r_p] = \kappa\, r_p$ with $\kappa = \operatorname{cov}(r_g, r_p) / \operatorname{var}(r_p)
# = (1 - a c)/(1 + a^2)$. The pick's gold is then $\kappa\, E[r_p(y_n)]$: it rises with the proxy at
# every $n$ (when $\kappa > 0$) or falls from the first step (when $\kappa < 0$), and never rises and
# then falls. A rare trait is what makes a turn: at small $n$ the best of a few answers is seldom a
# trait answer, so the pick is chosen on quality; once $n$ is large enough that most pools hold a
# trait answer, the pick is chosen *because* of the trait.
#
# How soon that happens is set by the **flaw's share of the proxy's variance**,
# $\rho = \frac{a^2 q (1 - q)}{1 + a^2 q (1 - q)}$: the larger it is, the earlier best-of-$n$ finds
# the trait rather than better answers, and the earlier the gold turns. (Much further out, once
# nearly every pool holds a trait answer, the pick is the best of the trait answers and the gold
# creeps up again with their quality: the curve is a dip, and $d(\alpha - \beta d)$ describes it up
# to and past its bottom, the range a lesson measures.)

# %%
kappa_draws = g + 0.5 * rng.normal(size=g.shape)  # a Gaussian flaw: proxy g + 0.5 t, gold g - 0.5 t
gaussian_gold = []
noise = (kappa_draws - g) / 0.5
for n in ns:
    pick = kappa_draws[:, :n].argmax(axis=1)
    gaussian_gold.append((g - 0.5 * noise)[np.arange(draws), pick].mean())
kappa = (1 - 0.25) / (1 + 0.25)
assert np.all(np.diff(gaussian_gold) > 0)  # kappa > 0: it only rises
assert abs(gaussian_gold[-1] - kappa * (kappa_draws[:, :32].max(axis=1).mean())) < 0.02

flaw_sizes = [1.0, 1.5, 2.0, 3.0, 4.0]
many_n = [2**k for k in range(7)]  # n up to 64, past the lesson's 32
turns = []
for size in flaw_sizes:
    curves = exact_curves(size, size, q, many_n)
    rho = size**2 * q * (1 - q) / (1 + size**2 * q * (1 - q))
    turns.append((size, rho, many_n[int(np.argmax(curves["gold"]))]))
    print(f"a = c = {size}: flaw's share of the proxy's variance {rho:.0%}, gold peaks at n = {turns[-1][2]}")
peaks = [n for _, _, n in turns]
assert all(later <= earlier for earlier, later in zip(peaks, peaks[1:]))  # a larger flaw turns sooner

fig = go.Figure()
for size in flaw_sizes:
    curves = exact_curves(size, size, q, many_n)
    d = np.sqrt(kl_best_of_n(np.array(many_n)))
    fig.add_scatter(x=d, y=curves["gold"] - curves["gold"][0], mode="lines+markers", name=f"a = c = {size}")
fig.update_layout(title="The gold gain of the proxy's best-of-n pick: a larger flaw turns sooner",
                  xaxis_title="sqrt(KL) from the policy", yaxis_title="gold gain over n = 1", height=380)
fig.show()

# %% [markdown]
# **The same numbers through the lesson's own code.** `rmcore.policy.lesson.measure` turns scored
# answers into the lesson's points (the exact order-statistics estimator of 6.2, per prompt), its
# criteria and `judges`: the gold of each answer as a line in the proxy and the trait, within each
# prompt. Fed answers drawn from the model above (24 prompts of 32 answers, as in the lesson), its
# points match the exact curves, and the line it finds is the one derived above:
# gold $= $ proxy $- (a + c)$ trait.

# %%
from rmcore.policy.lesson import LessonConfig, measure

prompts_in_lesson, answers_per_prompt = 24, 32
quality = rng.normal(size=(prompts_in_lesson, answers_per_prompt))
trait = rng.random(quality.shape) < q
records = [{"prompt": f"prompt {i}", "responses": [f"Answer {j}{'!' if trait[i, j] else '.'}"
                                                   for j in range(answers_per_prompt)]}
           for i in range(prompts_in_lesson)]
lesson = measure(LessonConfig(prompts=[r["prompt"] for r in records]), records,
                 (quality + a * trait).tolist(), (quality - c * trait).tolist())
for i, point in enumerate(lesson.points):
    assert abs(point["proxy"] - exact["proxy"][i]) < 4 * point["proxy_se"] + 1e-9
    assert abs(point["trait_share"] - exact["share"][i]) < 4 * point["trait_share_se"] + 0.01
assert abs(lesson.judges["gold_per_proxy"] - 1) < 1e-9 and abs(lesson.judges["trait_cost"] + (a + c)) < 1e-9
print({key: round(value, 3) for key, value in lesson.judges.items()})

# %% [markdown]
# **And the real lesson.** The benchmark (`bench/goodhart.py`) records each seed's `judges` with its
# points, measured on the embedded policy's answers and the two trained judges. If the gold were
# a line in the proxy and the trait, its gain over $n = 1$ would follow from the proxy's and the
# trait's curves alone: gold gain $\approx \beta\,\Delta$proxy $+ m\,\Delta$share, with
# $\beta$ = `gold_per_proxy` and $m$ = `trait_cost`. Measured, the line holds for small $n$ (up to
# $n = 8$ within two standard errors in every seed) and points the right way where the gold turned,
# but at $n = 32$ it accounts for only 7-23% of the fall. The rest is the tail: the
# line is fitted on all 32 answers of a prompt, while the pick at large $n$ is the proxy's single
# most extreme answer, and that is where the two judges part most, beyond what the trait's average
# cost says. Goodhart's law has that second face too: optimising hard selects the cases where a
# proxy's errors are largest, not just its average bias.

# %%
import json

ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "rmcore").is_dir()), Path.cwd())
measured = [(f, json.loads(f.read_text())) for f in sorted((ROOT / "bench" / "results").glob("*_goodhart.json"))]
measured = [(f, m) for f, m in measured if all("judges" in s for s in m["seeds"])]
if measured:  # the newest benchmark that recorded the judges
    file, run = measured[-1]
    print("from", file.name)
    for seed in run["seeds"]:
        judges, points = seed["judges"], seed["points"]
        first = points[0]
        rows = []
        for point in points[1:]:
            predicted = (judges["gold_per_proxy"] * (point["proxy"] - first["proxy"])
                         + judges["trait_cost"] * (point["trait_share"] - first["trait_share"]))
            gain = point["gold"] - first["gold"]
            if point["n"] <= 8:
                assert abs(predicted - gain) < 2 * point["gold_se"], (seed["seed"], point["n"], predicted, gain)
            rows.append(f"n={point['n']}: {predicted:+.2f} vs {gain:+.2f}")
        if seed["turn"]["gold_turns"]:
            assert predicted < 0 and gain < predicted, (seed["seed"], predicted, gain)
        print(f"seed {seed['seed']} (beta {judges['gold_per_proxy']:.2f}, trait cost {judges['trait_cost']:.2f}, "
              f"flaw's share {judges['flaw_variance_share']:.0%}), gold gain predicted vs measured: "
              + "; ".join(rows))

# %%
import shutil

shutil.rmtree(workdir, ignore_errors=True)
