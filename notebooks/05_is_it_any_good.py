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
# # 5. Is the model any good?
#
# A held-out accuracy of, say, 60% says little by itself. This notebook asks the questions behind
# it: is the model right more often when people were more sure (accuracy by preference strength)?
# When it says 80%, is it right 80% of the time (calibration)? Is it just counting words (length
# bias)? What happens when something optimises against it (reward hacking)? And how high could
# accuracy possibly go, given that people disagree with each other (the labeler-agreement
# ceiling)? Each measure is derived, computed by hand, and checked against `rmcore.analysis.evaluate`.
#
# We evaluate the model notebook 4 trains. The settings below must match notebook 4's so that the
# frozen trunk's features come from `rmcore`'s cache; training then takes seconds, and the only
# real work is scoring the held-out answers once.

# %% tags=["parameters"]
DATA = "oasst"  # as in notebook 4
N_TRAIN = 80
N_EVAL = 40
MAX_LENGTH = 96
EPOCHS = 8
BATCH_SIZE = 8
LR = 5e-3
SEED = 0

# %%
import math
import shutil
import statistics
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a kernel without ipywidgets

import numpy as np
import plotly.graph_objects as go
from transformers.utils import logging as hf_logging

from rmcore.analysis.evaluate import calibration_bins, evaluate, worst_pairs
from rmcore.analysis.probes import PROBES, run_probes
from rmcore.data import demo_data_path, read_preferences, split_groups
from rmcore.model.reward_model import RewardModel
from rmcore.training.train import TrainConfig, train

hf_logging.disable_progress_bar()
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "rmcore").is_dir()), Path.cwd())
FILES = {"oasst": "oasst/en_100_tree.jsonl", "hh-helpful": "hh-rlhf/helpful-base-test.jsonl.gz",
         "hh-harmless": "hh-rlhf/harmless-base-test.jsonl.gz"}
path = ROOT / "../shared/data" / FILES[DATA]
if not path.is_file():
    print(f"{path} not found: using rmcore's demo set instead")
    path = demo_data_path()
data = read_preferences(path)
train_all, eval_all = split_groups(data.groups, eval_fraction=0.25, seed=SEED)
train_groups, eval_groups = train_all[:N_TRAIN], eval_all[:N_EVAL]

out_dir = Path(tempfile.mkdtemp(prefix="rmcore-nb05-")) / "model"
config = TrainConfig(model="embedded", mode="head", epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR,
                     max_length=MAX_LENGTH, seed=SEED)
trained = train(config, train_groups, out_dir, eval_groups=eval_groups)
rm = RewardModel.load(out_dir)
shutil.rmtree(out_dir.parent, ignore_errors=True)  # the model is in memory now; the 540 MB folder can go
report = evaluate(rm, eval_groups)  # scores every held-out answer: the one slow step
pairs, rows = report.pairs, report.responses
print(f"{report.summary['prompts']} held-out prompts, {len(pairs)} comparisons, "
      f"accuracy {report.summary['accuracy']:.1%}")

# %% [markdown]
# ## 5.1 Accuracy and loss, recomputed
#
# `evaluate` returns one row per held-out comparison with both rewards and $p = \sigma(r_w - r_l)$.
# From those rows, the two numbers training reported (notebooks 1-2):
#
# $$\text{accuracy} = \frac{1}{|C|}\sum_{(w,l)\in C}\mathbb{1}[r_w > r_l], \qquad
# \mathcal{L} = \frac{1}{G}\sum_g \frac{1}{|C_g|}\sum_{(w,l)\in C_g} -\log\sigma(r_w - r_l),$$
#
# and best-of-$n$ over all held-out prompts: how often the top-reward answer is one people ranked
# first.

# %%
accuracy = sum(p["reward_winner"] > p["reward_loser"] for p in pairs) / len(pairs)
def nll(delta: float) -> float:
    """-log σ(Δ) = log(1 + e^-Δ), without overflow for very negative Δ."""
    return math.log1p(math.exp(-delta)) if delta > -30 else -delta


per_group: dict[int, list[float]] = {}
for p in pairs:
    per_group.setdefault(p["group"], []).append(nll(p["reward_winner"] - p["reward_loser"]))
loss = statistics.fmean(statistics.fmean(v) for v in per_group.values())
logged = [e for e in trained.history if e["event"] == "eval"][-1]
print(f"accuracy {accuracy:.1%} (training log: {logged['eval_accuracy']:.1%}); "
      f"loss {loss:.4f} (training log: {logged['eval_loss']:.4f}, a coin flip: {math.log(2):.4f})")
assert math.isclose(accuracy, report.summary["accuracy"])
assert abs(accuracy - logged["eval_accuracy"]) * len(pairs) <= 1  # at most one near-tie flips
assert abs(loss - logged["eval_loss"]) < 1e-2

hits = []
for g in range(len(eval_groups)):
    answers = [r for r in rows if r["group"] == g and r["rank"] is not None]
    hits.append(max(answers, key=lambda r: r["reward"])["rank"] == min(r["rank"] for r in answers))
chance = statistics.fmean(1 / sum(r is not None for r in g.ranks) for g in eval_groups)
print(f"best-of-n picks a human favourite for {sum(hits)}/{len(hits)} prompts; random picks: {chance:.0%}")
assert math.isclose(sum(hits) / len(hits), report.summary["best_of_group_accuracy"])

# %% [markdown]
# ## 5.2 Accuracy by preference strength
#
# Some comparisons are clear, some are coin flips even for people. Under Bradley-Terry the
# probability that a person prefers $y_w$ is $\sigma(r^\star_w - r^\star_l)$, so comparisons with a
# bigger true gap are both more consistently labeled and easier to get right. A good model's
# accuracy should **rise with preference strength**. Llama 2 measured this with its labelers'
# own strength labels: about 80% on "significantly better" pairs, about 55% on "negligibly
# better". Rankings give a proxy: the **rank gap** $\text{rank}_l - \text{rank}_w$; 1st against
# 4th is clearer than 1st against 2nd.

# %%
by_gap: dict[int, list[bool]] = {}
for p in pairs:
    by_gap.setdefault(p["rank_gap"], []).append(p["reward_winner"] > p["reward_loser"])
for gap, correct in sorted(by_gap.items()):
    theirs = report.summary["by_rank_gap"][str(gap)]
    assert theirs["comparisons"] == len(correct)
    assert math.isclose(theirs["accuracy"], sum(correct) / len(correct))
    print(f"rank gap {gap}: {sum(correct) / len(correct):6.1%} of {len(correct):3d} comparisons")
gaps = sorted(by_gap)
fig = go.Figure(go.Bar(x=[str(g) for g in gaps], y=[sum(by_gap[g]) / len(by_gap[g]) for g in gaps],
                       text=[f"n={len(by_gap[g])}" for g in gaps], textposition="outside"))
fig.add_hline(y=0.5, line_dash="dot")
fig.update_layout(title="held-out accuracy by rank gap", xaxis_title="rank(loser) − rank(winner)",
                  yaxis_title="accuracy", yaxis_range=[0, 1.05], height=340)
fig.show()

# %% [markdown]
# Mind the counts on the bars: with a few dozen comparisons per bar, a difference of ten points
# is within noise (the standard error of an accuracy near 60% over $n$ comparisons is
# $\sqrt{0.24/n}$, 8 points at $n = 40$). A trend you can trust needs thousands of held-out
# comparisons — a job for the parameter cell and a GPU.

# %% [markdown]
# ## 5.3 Calibration: does $\sigma(r_w - r_l)$ mean what it says?
#
# The model does not only rank; it states a probability, $\sigma(r_i - r_j)$, that people prefer
# $i$. It is **calibrated** if, among all comparisons where it says $p$, people preferred $i$ a
# fraction $p$ of the time. To check, bin comparisons by predicted $p$ and compare each bin's mean
# prediction with its observed frequency: a *reliability diagram*, on the diagonal when calibrated.
#
# A comparison can be written either way round: "$w$ beats $l$ with $p$" is also "$l$ beats $w$
# with $1-p$, and it did not happen". `rmcore` counts both orientations, so the curve does not
# depend on which answer a file listed first and is symmetric about $(0.5, 0.5)$. One number
# summarises it, the expected calibration error:
#
# $$\text{ECE} = \sum_b \frac{n_b}{n}\,\big|\bar p_b - \bar o_b\big|.$$

# %%
def reliability(p: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean predicted, observed frequency) per bin, each comparison in both orientations."""
    pred = np.concatenate([p, 1 - p])
    observed = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    b = np.minimum((pred * bins).astype(int), bins - 1)
    n = np.bincount(b, minlength=bins)
    with np.errstate(invalid="ignore"):
        return n, np.bincount(b, pred, bins) / n, np.bincount(b, observed, bins) / n


p = np.array([row["p"] for row in pairs])
n, mean_pred, freq = reliability(p)
theirs = calibration_bins(pairs)
assert [t["count"] for t in theirs] == n.tolist()
assert all(t["predicted"] is None or math.isclose(t["predicted"], m) for t, m in zip(theirs, mean_pred))
assert all(t["observed"] is None or math.isclose(t["observed"], f) for t, f in zip(theirs, freq))
ece = np.nansum(n / n.sum() * np.abs(mean_pred - freq))
print(f"ECE {ece:.3f}; the model's probabilities range from {p.min():.2f} to {p.max():.2f}")

# %% [markdown]
# To see what the diagram looks like when we *know* the answer, simulate comparisons from the
# Bradley-Terry model itself (as in notebook 1): true gaps $\Delta^\star$, labels drawn with
# probability $\sigma(\Delta^\star)$. A model that predicts $\sigma(\Delta^\star)$ is calibrated by
# construction; one whose rewards are three times too spread out predicts $\sigma(3\Delta^\star)$ —
# same ranking, same accuracy, **overconfident**. Overconfidence is what training too long on too
# little data produces (notebook 1.5: the loss rewards ever-wider gaps on comparisons it already
# gets right).

# %%
rng = np.random.default_rng(0)
gap = rng.normal(0, 1.5, 20_000)
label = rng.random(gap.size) < 1 / (1 + np.exp(-gap))  # True: the first answer won
fig = go.Figure()
for name, scale in (("simulated, calibrated", 1.0), ("simulated, rewards ×3", 3.0)):
    q = 1 / (1 + np.exp(-scale * gap))
    p_winner = np.where(label, q, 1 - q)  # the prediction for the answer that actually won
    _, m, f = reliability(p_winner)
    fig.add_scatter(x=m, y=f, mode="lines+markers", name=name, line_dash="dot")
fig.add_scatter(x=mean_pred, y=freq, mode="lines+markers", name="our model (held out)",
                text=[f"n={k}" for k in n], line_width=3)
fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect", line_color="gray")
fig.update_layout(title="reliability diagram", xaxis_title="predicted P(preferred)",
                  yaxis_title="observed frequency", height=420)
fig.show()

# %% [markdown]
# A related self-check needs no labels at all. If the model is calibrated, its expected accuracy
# is the average of its own confidence, $\mathbb{E}[\max(p, 1 - p)]$. A model whose observed
# accuracy falls well short of that number is overconfident.

# %%
expected = np.mean(np.maximum(p, 1 - p))
print(f"accuracy the model expects of itself {expected:.1%}; observed {accuracy:.1%}")

# %% [markdown]
# ## 5.4 Length bias
#
# Longer answers often *are* better — more complete, more careful — so people prefer them more
# often than not, and a reward model learns that. The danger is that length is easy to produce:
# a model optimised against a length-loving reward gets verbose rather than better (Singhal et al.
# 2023 found much of RLHF's measured gain came from longer outputs). Three measurements:
#
# 1. in the **data**: how often the preferred answer is the longer one;
# 2. in the **model**: the correlation of reward with length, $\rho(r, \text{tokens})$;
# 3. **accuracy split** by whether the winner is longer or shorter. A model that leans on length
#    does well when the winner is longer and badly when it is shorter.

# %%
all_pairs = [(g.responses[w], g.responses[l]) for g in data.groups for w, l in g.pairs()]
longer_wins = np.mean([len(a) > len(b) for a, b in all_pairs])
print(f"data: the preferred answer is longer (in characters) in {longer_wins:.0%} "
      f"of all {len(all_pairs)} comparisons in the file")
tokens = np.array([r["tokens"] for r in rows], dtype=float)
rewards = np.array([r["reward"] for r in rows])
rho = np.corrcoef(tokens, rewards)[0, 1]
assert math.isclose(rho, report.summary["length_correlation"], abs_tol=1e-9)
print(f"model: correlation of reward with length (tokens the model read): {rho:+.2f}")
for name, keep in (("winner longer ", lambda q: len(q["winner"]) > len(q["loser"])),
                   ("winner shorter", lambda q: len(q["winner"]) < len(q["loser"]))):
    sub = [q for q in pairs if keep(q)]
    print(f"accuracy when the {name}: {np.mean([q['correct'] for q in sub]):.0%} of {len(sub)}")

# %%
fig = go.Figure(go.Scatter(x=tokens, y=rewards, mode="markers", marker_color=[r["rank"] or 0 for r in rows],
                           marker_colorscale="Viridis", marker_colorbar_title="rank",
                           hovertext=[r["response"][:80] for r in rows]))
fig.update_layout(title=f"reward against length (ρ = {rho:+.2f})", yaxis_title="reward", height=380,
                  xaxis_title="tokens of the answer (after truncation)")
fig.show()

# %% [markdown]
# Note the pile-up at the right edge: answers longer than `MAX_LENGTH` allows were cut, so the
# model never saw their ends — including whatever made people rank them as they did. Truncation is
# its own bias; `rmcore`'s data report counts the truncated answers so it is never silent.
#
# ### Length-controlled accuracy
#
# A correlation does not say how much of the accuracy length *explains*. Three numbers do, and
# `rmcore eval` prints each beside the accuracy:
#
# 1. the **length-only baseline**, the accuracy of the rule "the longer answer wins" (in
#    characters, so truncation cannot tie two answers; equal lengths count half):
#    $\text{acc}_\text{len} = \frac{1}{|C|}\sum_{(w,l)}
#    \big(\mathbb{1}[|y_w| > |y_l|] + \tfrac12\,\mathbb{1}[|y_w| = |y_l|]\big)$;
# 2. the model's accuracy on the pairs whose lengths are **within 10%** of each other, where length
#    cannot decide: $C_\text{close} = \{(w,l) : \big||y_w| - |y_l|\big| \le 0.1\max(|y_w|, |y_l|)\}$;
# 3. the accuracy of a **logistic model on length alone**, $P(w \succ l) = \sigma(a\,\Delta + b\,\Delta_{\log})$
#    with $\Delta = (|y_w| - |y_l|)/1000$ and $\Delta_{\log} = \log(1+|y_w|) - \log(1+|y_l|)$, fitted on
#    four fifths of the prompts and scored on the fifth (no intercept: each pair enters both ways
#    round, so the model cannot prefer whichever answer a file lists first). It may learn "shorter
#    wins" as well as "longer wins".
#
# Each accuracy over $n$ comparisons comes with its binomial standard error
# $\sqrt{	ext{acc}(1 - 	ext{acc})/n}$ (pairs of one prompt are not independent, so it is a little
# optimistic). A model whose accuracy is within two standard errors of the length baseline has not
# shown it learned more than length.

# %%
def longer_wins(q: dict) -> float:
    return 0.5 if len(q["winner"]) == len(q["loser"]) else float(len(q["winner"]) > len(q["loser"]))


baseline = statistics.fmean(longer_wins(q) for q in pairs)
close = [q for q in pairs if abs(len(q["winner"]) - len(q["loser"])) <= 0.1 * max(len(q["winner"]), len(q["loser"]), 1)]
close_accuracy = statistics.fmean(q["correct"] for q in close) if close else None
se = math.sqrt(accuracy * (1 - accuracy) / len(pairs))
assert math.isclose(baseline, report.summary["length_baseline"]["accuracy"])
assert math.isclose(se, report.summary["accuracy_se"])
assert len(close) == report.summary["length_controlled"]["comparisons"]
assert close_accuracy is None or math.isclose(close_accuracy, report.summary["length_controlled"]["accuracy"])
print(f"model {accuracy:.3f} ± {se:.3f};  the longer answer wins {baseline:.3f};  "
      f"logistic on length alone {report.summary['length_logistic']['accuracy']}")
print(f"on the {len(close)} pairs of similar length: {close_accuracy}")
print(report.summary["length_warning"] or "rmcore sees no sign that the reward mostly tracks length")

# %% [markdown]
# ## 5.5 What reward hacking looks like
#
# A reward model is a proxy for what people want. Whatever the proxy gets wrong, an optimiser —
# best-of-$n$, or reinforcement learning — will find. A cheap probe: take an answer and change it
# in ways that should *not* make it better (pad it with pleasantries, repeat it, add confident
# filler, cut it short), and see which changes the model pays for.
#
# `rmcore.analysis.probes` holds such edits (`rmcore probe` and the app's Probe page run them). Each edited
# answer is scored with the prompt alone, and the change is divided by the reward's spread (its
# standard deviation over the held-out answers), so $+1$ means "as much as the typical difference
# between two answers". The last edit is ours: the same answer with a wrong fact, just as sure.

# %%
prompt = "How long should I boil an egg for a runny yolk?"
answer = "About 6 minutes: lower the egg into boiling water, then cool it in cold water for a minute."
wrong = "About 15 minutes: lower the egg into boiling water, then cool it in cold water for a minute."
spread = statistics.pstdev(rewards)
probe = run_probes(rm, prompt, answer, wrong_facts=wrong, spread=spread, spread_source="the held-out answers")
for row in probe.rows:  # each change is the edited answer's own reward minus the original's
    alone = rm.rewards(prompt, [row["text"]])[0] - rm.rewards(prompt, [answer])[0]
    assert math.isclose(row["delta"], alone, abs_tol=1e-4) and math.isclose(row["delta_units"], row["delta"] / spread)
assert [r["name"] for r in probe.rows] == [p.name for p in PROBES] + ["wrong_facts"]
for row in sorted(probe.rows, key=lambda r: -r["delta_units"]):
    print(f"{row['delta_units']:+.2f} spreads  {row['label']}")

# %% [markdown]
# Every edit scored above the original without being a better answer is a direction a policy
# can climb; if the wrong version scores near the original, the model does not check facts at all (a 135M
# trunk reading a hundred tokens mostly cannot). Whatever this small model's signs, real reward
# models show the same pattern at scale: verbosity, flattery, confident tone and agreement with
# the user are rewarded beyond their worth.
#
# ### Best-of-$n$ against a proxy
#
# Why optimisation makes this worse: choose the best of $n$ candidates by a proxy $\hat r = r +
# \varepsilon$, where $\varepsilon$ is the proxy's error. With small, well-behaved errors, a larger
# $n$ finds candidates that are truly better. When the error has **heavy tails** — a few
# candidates the proxy loves for the wrong reason, like a degenerate but very long answer — the
# top of $n$ is increasingly one of *those*, and the true quality of the pick stops rising and
# falls back. Simulated with true quality $r \sim \mathcal{N}(0, 1)$ and errors of similar typical
# size, either Gaussian or Student-$t$ with 1.5 degrees of freedom (rare, huge errors):

# %%
rng = np.random.default_rng(1)
ns = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024]
true_q = rng.normal(size=(2000, max(ns)))  # 2000 trials of up to 1024 candidates
errors = {"Gaussian error": rng.normal(size=true_q.shape),
          "heavy-tailed error (t, 1.5 dof)": rng.standard_t(1.5, size=true_q.shape)}
fig = go.Figure()
fig.add_scatter(x=ns, y=[true_q[:, :k].max(1).mean() for k in ns], name="pick by true reward",
                line_dash="dot")
for name, err in errors.items():
    proxy = true_q + err
    picked = [true_q[np.arange(len(true_q)), proxy[:, :k].argmax(1)].mean() for k in ns]
    fig.add_scatter(x=ns, y=picked, mode="lines+markers", name=f"pick by proxy, {name}")
fig.update_xaxes(type="log", title_text="n (candidates)")
fig.update_layout(title="true quality of the best-of-n pick", yaxis_title="mean true reward of the pick",
                  height=380)
fig.show()

# %% [markdown]
# This is the reason RLHF keeps the policy close to where it started (the KL penalty in
# InstructGPT's objective), and why reward models are re-trained on the policy's new outputs:
# both stop the optimiser from wandering to where the proxy is wrong.
#
# ## 5.6 The ceiling: people disagree
#
# Held-out accuracy is measured against human labels, and humans disagree. InstructGPT reports
# that its labelers agreed with each other on **72.6%** of comparisons, and its 6B reward model
# agreed with held-out labelers on 72.4%. What does that bound?
#
# For one comparison, let $q$ be the probability that a random labeler prefers the first answer.
# Two independent labelers agree with probability $a(q) = q^2 + (1-q)^2$. The best any model can do
# against a fresh labeler is to predict the majority side, right with probability
# $m(q) = \max(q, 1-q)$. Writing $m = \max(q, 1 - q) \ge \tfrac12$,
#
# $$m - a = m - m^2 - (1 - m)^2 = -(2m - 1)(m - 1) \ge 0,$$
#
# so for every comparison the best possible accuracy is at least the agreement rate. Solving
# $a = m^2 + (1-m)^2$ gives $m = \tfrac12\big(1 + \sqrt{2a - 1}\big)$, a concave function of $a$,
# so by Jensen's inequality, averaging over comparisons,
#
# $$\underbrace{\mathbb{E}[a]}_{72.6\%} \;\le\; \text{best achievable accuracy } \mathbb{E}[m]
#   \;\le\; \tfrac12\Big(1 + \sqrt{2\,\mathbb{E}[a] - 1}\Big) = 83.6\%.$$
#
# The lower end is reached when comparisons are either unanimous or coin flips; the upper when
# every comparison is equally contested. So 72.4% means "as good as a typical labeler at predicting
# another labeler" — human-level on this measure — not "at the ceiling".

# %%
agreement = 0.726  # Beta(c, c) difficulties below: agreement (c + 1) / (2c + 1), so c = 0.606
upper = 0.5 * (1 + math.sqrt(2 * agreement - 1))
print(f"labelers agree {agreement:.1%}  ->  best achievable accuracy between {agreement:.1%} and {upper:.1%}")
for name, q in (("all equally hard", np.full(100_000, 0.5 * (1 + math.sqrt(2 * agreement - 1)))),
                ("unanimous or coin flips", np.where(rng.random(100_000) < 2 * agreement - 1, 1.0, 0.5)),
                ("a spread of difficulties", rng.beta(0.606, 0.606, 100_000))):
    a, m = np.mean(q**2 + (1 - q) ** 2), np.mean(np.maximum(q, 1 - q))
    assert a <= m + 1e-12 and m <= 0.5 * (1 + math.sqrt(2 * a - 1)) + 1e-12
    print(f"  {name:26s} agreement {a:.1%}, best achievable accuracy {m:.1%}")

# %% [markdown]
# ## 5.7 The worst mistakes
#
# Aggregates hide the cases worth reading. The comparisons the model gets most confidently wrong
# (largest $r_l - r_w$) are where to look for label noise, truncation, or a bias to fix.

# %%
for q in worst_pairs(report, 3):
    print(f"σ = {q['p']:.2f} | {q['prompt'][:80]!r}")
    print(f"   preferred (rank {q['winner_rank']}): {q['winner'][:110]!r}")
    print(f"   the model's pick (rank {q['loser_rank']}): {q['loser'][:110]!r}")

# %% [markdown]
# ## 5.8 Ensembles: knowing when the reward is unsure
#
# One reward model gives one number and no hint of how much to trust it. Train $N$ members that
# differ only by their seed and a **bootstrap resample** of the training prompts (as many prompts
# as there are, drawn with replacement): where the data pinned the reward down they agree, where it
# did not they scatter. The ensemble's reward is the members' mean $\bar r$; their standard
# deviation $s$ is the uncertainty. (A Bradley-Terry reward is defined only up to a constant, and
# each member picks its own, so `rmcore` takes the spread of each member's rewards minus its mean
# over the candidates being compared.)
#
# Why that resists reward hacking: an optimiser finds the candidates a proxy over-rates. A
# member's error on an answer far from its data is partly its own (its seed, its resample), so the
# answers one member loves for the wrong reason are ones the others rate lower: high spread. Picking
# by the **conservative** score $\bar r - k\,s$ (Coste et al. 2023, "Reward model ensembles help
# mitigate overoptimization") gives up a little where the members agree and avoids the picks they
# dispute. In the simulation of 5.5, give each of 5 members its own heavy-tailed error:

# %%
members = np.stack([true_q + rng.standard_t(1.5, size=true_q.shape) for _ in range(5)])  # (5, trials, n)
mean, spread_m = members.mean(0), members.std(0)
fig = go.Figure()
rows_idx = np.arange(len(true_q))
for name, score in (("one member", members[0]), ("ensemble mean", mean), ("mean − 1 × spread", mean - spread_m)):
    fig.add_scatter(x=ns, y=[true_q[rows_idx, score[:, :k].argmax(1)].mean() for k in ns], mode="lines+markers",
                    name=f"pick by {name}")
fig.update_xaxes(type="log", title_text="n (candidates)")
fig.update_layout(title="true quality of the best-of-n pick, 5 members with heavy-tailed errors",
                  yaxis_title="mean true reward of the pick", height=380)
fig.show()
careful = true_q[rows_idx, (mean - spread_m).argmax(1)].mean()
single = true_q[rows_idx, members[0].argmax(1)].mean()
assert careful > single  # at n = 1024 the conservative pick is truly better than one member's
print(f"n = {max(ns)}: one member's pick {single:.2f}, conservative ensemble pick {careful:.2f}")

# %% [markdown]
# With `rmcore` the members are ordinary reward models in `members/<i>/` of one folder
# (`rmcore train DATA --out DIR --ensemble 3`), and in head mode they cost almost nothing extra:
# every member reads the same cached trunk features, and scoring runs the trunk once for all their
# heads. The ensemble's reward is the mean of the members' own rewards:

# %%
from rmcore.training.ensemble import Ensemble, train_ensemble

ensemble_dir = Path(tempfile.mkdtemp(prefix="rmcore-nb05-ens-")) / "ensemble"
info = train_ensemble(config, 3, train_groups, ensemble_dir, eval_groups=eval_groups)
ensemble = Ensemble.load(ensemble_dir)
candidates = [answer, wrong, "idk, google it"]
scored = ensemble.score(prompt, candidates, k=1.0)
alone = [RewardModel.load(ensemble_dir / m["path"]).rewards(prompt, candidates) for m in info["members"]]
shutil.rmtree(ensemble_dir.parent, ignore_errors=True)
assert np.allclose(scored.mean, np.mean(alone, axis=0), atol=1e-4)
centred = np.array(alone) - np.mean(alone, axis=1, keepdims=True)  # a member's offset means nothing
assert np.allclose(scored.spread, np.std(centred, axis=0), atol=1e-4)
for text, m, sd in zip(candidates, scored.mean, scored.spread):
    print(f"{m:+.3f} ± {sd:.3f}  {text[:70]}")
print(f"held-out accuracy per member: {[round(m['held_out'], 3) for m in info['members']]}; "
      f"best by mean #{scored.best}, conservative pick #{scored.conservative_best}")

# %% [markdown]
# ## Summary
#
# | measure | what it tells you | here |
# |---|---|---|
# | accuracy | how often the preferred answer scores higher | printed in 5.1 |
# | accuracy by rank gap | whether clear preferences are learned first | 5.2 |
# | calibration, ECE | whether $\sigma(r_w - r_l)$ can be read as a probability | 5.3 |
# | length correlation, baseline, length-controlled accuracy | whether the model pays for length, and how much | 5.4 |
# | counterfactual probes, best-of-$n$ | what an optimiser would exploit | 5.5 |
# | labeler agreement | the scale to judge accuracy on (72.6% to 83.6% for InstructGPT's labelers) | 5.6 |
# | ensemble spread, conservative pick | where the reward is unsure; a best-of-$n$ that avoids disputed picks | 5.8 |
#
# With the defaults this is a tiny model trained on about a hundred comparisons, and every number
# above carries wide error bars; the point is the method. Raise `N_TRAIN`, `N_EVAL` and
# `MAX_LENGTH` (here and in notebook 4), or train with `mode="lora"` on a GPU, and the same cells
# measure a real reward model.
