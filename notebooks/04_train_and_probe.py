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
# # 4. Train and probe
#
# Everything so far was mechanics. Here we train a reward model on real human rankings with
# `rmcore`, watch the loss fall, measure accuracy on prompts it never saw, and probe it: the
# matrix $\sigma(r_i - r_j)$ for one instruction, best-of-$n$ selection, per-token rewards.
#
# To run on a laptop CPU in about a minute we use `rmcore`'s **head** mode: the transformer
# is frozen, its last-token features $h_T$ are computed once (and cached on disk, so a second run
# skips them), and only the 576 weights of the reward neuron train — the logistic regression of
# notebook 1.6. The defaults below use a few dozen prompts. That is enough to see every
# mechanism, not to build a good reward model: for that, raise the numbers in the next cell on a
# GPU (or use `mode="lora"`).
#
# The training also gets a **time budget**, so the notebook does not depend on the machine being
# quiet. On a quiet 2-core machine everything fits in a fraction of it (about half a minute, less
# once the features are cached) and the budget changes nothing; on a busy one `rmcore` measures
# its speed first and plans to end in time, training on fewer prompts — its `plan:` line says how
# many — rather than running for ten minutes.

# %% tags=["parameters"]
DATA = "oasst"  # "oasst" (ranked lists, K = 2..9), "hh-helpful" or "hh-harmless" (pairs)
N_TRAIN = 80  # training prompts (None = all); fewer than ~80 stays near chance; on a GPU try None
N_EVAL = 40  # held-out prompts (None = all of the held-out quarter)
MAX_LENGTH = 96  # tokens of prompt + one answer; 512 on a GPU (here every token costs CPU time)
EPOCHS = 8  # passes over the training prompts; cheap in head mode (features are computed once)
EVAL_EVERY = 5  # steps between held-out evaluations (on cached features: free)
BATCH_SIZE = 8  # prompts per step, each with all its answers
LR = 5e-3  # None = rmcore's default for head mode (2e-3); a larger step suits our few steps
SEED = 0
TIME_BUDGET_S = 150  # the whole training call ends within this (+10%), on any machine; a quiet one needs ~30 s
OUT_DIR = None  # folder to keep the trained model in; None = a temporary folder removed at the end

# %%
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm in a kernel without ipywidgets

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from transformers.utils import logging as hf_logging

from rmcore.data import demo_data_path, read_preferences, split_groups
from rmcore.model.reward_model import RewardModel, preference_matrix
from rmcore.training.train import TrainConfig, train

hf_logging.disable_progress_bar()
ROOT = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "rmcore").is_dir()), Path.cwd())
FILES = {"oasst": "oasst/en_100_tree.jsonl", "hh-helpful": "hh-rlhf/helpful-base-test.jsonl.gz",
         "hh-harmless": "hh-rlhf/harmless-base-test.jsonl.gz"}
path = ROOT / "../shared/data" / FILES[DATA]  # real data, read in place (see ../shared/data/README.md)
if not path.is_file():
    print(f"{path} not found: using rmcore's demo set instead")
    path = demo_data_path()
data = read_preferences(path)
print("\n".join(data.report.summary_lines()[:7]))

# %% [markdown]
# ## 4.1 Hold out whole prompts
#
# A reward model is used on prompts it has never seen, so that is how we test it. The split is by
# **prompt**: all answers (and so all comparisons) of a prompt are on the same side. Splitting
# comparisons instead would put "A beat B" in training and "A beat C" in the test, and the test
# would reward memorising A.

# %%
train_all, eval_all = split_groups(data.groups, eval_fraction=0.25, seed=SEED)
train_groups, eval_groups = train_all[:N_TRAIN], eval_all[:N_EVAL]
assert not {id(g) for g in train_groups} & {id(g) for g in eval_groups}
comparisons = lambda groups: sum(len(g.pairs()) for g in groups)  # noqa: E731
print(f"train: {len(train_groups)} prompts, {comparisons(train_groups)} comparisons; "
      f"held out: {len(eval_groups)} prompts, {comparisons(eval_groups)} comparisons")

# %% [markdown]
# ## 4.2 Train
#
# `rmcore.training.train.train` does what notebooks 1-3 derived: it renders each prompt and its answers
# with the chat template (cutting over-long prompts from the left), packs each prompt's answers
# into one row, reads the neuron at each answer's true last token, and minimises the per-prompt
# mean of $-\log\sigma(r_w - r_l)$ with AdamW. It calls `on_step` after every step and every
# held-out evaluation (here once per epoch); we keep those metrics to plot.

# %%
out_dir = Path(OUT_DIR) if OUT_DIR else Path(tempfile.mkdtemp(prefix="rmcore-nb04-")) / "model"
events, started = [], time.perf_counter()


def on_step(metrics: dict) -> None:
    """Keep every metric; print the preparation phases as they happen."""
    events.append(metrics)
    if metrics["event"] == "phase" and metrics.get("progress") in (None, 1.0):
        print(f"[{time.perf_counter() - started:5.1f}s] {metrics['phase']}")


config = TrainConfig(model="embedded", mode="head", epochs=EPOCHS, batch_size=BATCH_SIZE, lr=LR,
                     max_length=MAX_LENGTH, seed=SEED, eval_every=EVAL_EVERY, time_budget_s=TIME_BUDGET_S)
result = train(config, train_groups, out_dir, eval_groups=eval_groups, on_step=on_step)
print(f"[{time.perf_counter() - started:5.1f}s] {result.steps} steps; saved to {result.out_dir}")
assert time.perf_counter() - started < 1.1 * TIME_BUDGET_S + 15  # the budget holds, on any machine
trained_on = json.loads((out_dir / "rmcore.json").read_text())["data"]["train_prompts"]  # as the model records it
if trained_on < len(train_groups):  # all of them, unless a busy machine made the plan smaller
    print(f"a busy machine: the budget fitted {trained_on} of the {len(train_groups)} training prompts")
steps = [e for e in result.history if e["event"] == "step"]
evals = [e for e in result.history if e["event"] == "eval"]
print(f"held-out accuracy {evals[0]['eval_accuracy']:.1%} untrained, {evals[-1]['eval_accuracy']:.1%} after")

# %%
fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "pairwise accuracy"))
fig.add_scatter(x=[e["step"] for e in steps], y=[e["loss"] for e in steps], name="train (per batch)",
                line_color="#1f77b4", row=1, col=1)
fig.add_scatter(x=[e["step"] for e in evals], y=[e["eval_loss"] for e in evals], name="held out",
                line_color="#d62728", mode="lines+markers", row=1, col=1)
fig.add_scatter(x=[e["step"] for e in steps], y=[e["accuracy"] for e in steps], showlegend=False,
                line_color="#1f77b4", row=1, col=2)
fig.add_scatter(x=[e["step"] for e in evals], y=[e["eval_accuracy"] for e in evals], showlegend=False,
                line_color="#d62728", mode="lines+markers", row=1, col=2)
fig.add_hline(y=math.log(2), line_dash="dot", annotation_text="log 2: a coin flip", row=1, col=1)
fig.add_hline(y=0.5, line_dash="dot", row=1, col=2)
fig.update_xaxes(title_text="step")
fig.update_layout(height=380)
fig.show()

# %% [markdown]
# Read the curves against each other. The training loss starts near $\log 2 \approx 0.69$ — the
# loss of a model that says 50% to everything — and falls: with a few hundred comparisons and 576
# free weights the neuron can nearly separate the training data, and (notebook 1.5) it keeps
# widening the gaps for as long as it is allowed to. The held-out curves are the honest ones, and
# they can disagree with each other: accuracy only asks whether $r_w > r_l$, while the loss also
# charges for confidence, $-\log\sigma(r_w - r_l)$ growing without bound on confident mistakes. A
# held-out loss that rises while held-out accuracy holds or improves is a model becoming
# **overconfident** — notebook 5.3 measures it. More prompts, fewer epochs, a smaller learning rate
# or `weight_decay` push that point later.

# %% [markdown]
# ## 4.3 Held-out accuracy in context
#
# Held-out accuracy is the share of held-out comparisons in which the winner gets the higher
# reward, $\frac{1}{|C|}\sum_{(w,l)\in C} \mathbb{1}[r_w > r_l]$. Put it next to three references.
# The untrained neuron (the first point of the curve). A rule that needs no model at all —
# *prefer the longer answer* — which is a surprisingly strong baseline on many preference sets
# (notebook 5 returns to it). And published reward models: InstructGPT's 6B model reached 72.4%
# on held-out labelers; Anthropic's HH models about 64% (10M parameters) to 71% (1B); Llama 2's
# helpfulness model 70.6%. Those trained on tens or hundreds of thousands of comparisons; ours saw
# about a hundred, through a frozen 135M trunk that reads at most `MAX_LENGTH` tokens, and its
# held-out set is small enough that each comparison moves the percentage by about a point.
# The run shows the pipeline working, not a useful reward model.

# %%
held_out = [(g.responses[w], g.responses[l]) for g in eval_groups for w, l in g.pairs()]
longer = sum(len(a) > len(b) for a, b in held_out) / len(held_out)
sampled = result.plan["eval_prompts"] < result.plan["eval_prompts_total"]  # a busy machine: a sample of them
assert len(held_out) == evals[-1]["eval_comparisons"] or sampled
print(f"held-out comparisons: {len(held_out)}" + (f" (the neuron was scored on a sample of "
      f"{evals[-1]['eval_comparisons']}, all the budget allowed)" if sampled else ""))
print(f"  untrained neuron       {evals[0]['eval_accuracy']:.1%}")
print(f"  'prefer the longer'    {longer:.1%}")
print(f"  trained neuron         {evals[-1]['eval_accuracy']:.1%}   (best during training: "
      f"{max(e['eval_accuracy'] for e in evals):.1%})")

# %% [markdown]
# ## 4.4 The preference matrix of one instruction
#
# The saved folder is a standard transformers model (safetensors, tokenizer, config) plus an
# `rmcore.json` that records how it was trained; `RewardModel.load` reads it back. For one held-out
# instruction with several ranked answers, the rewards give a full matrix of predicted
# preferences, $P_{ij} = \sigma(r_i - r_j)$ (notebook 1): row $i$ says how likely people are to
# prefer answer $i$ over each other answer. `RewardModel.score` returns it; we rebuild it from the
# rewards.

# %%
rm = RewardModel.load(out_dir)
gi = max(range(len(eval_groups)), key=lambda i: (len(eval_groups[i].responses), -i))
group = eval_groups[gi]
scored = rm.score(group.prompt, group.responses)
ours = [[1 / (1 + math.exp(-(ri - rj))) for rj in scored.rewards] for ri in scored.rewards]
assert all(math.isclose(a, b, abs_tol=1e-9)
           for row_a, row_b in zip(ours, scored.probabilities) for a, b in zip(row_a, row_b))
assert scored.probabilities == preference_matrix(scored.rewards)
print("instruction:", group.prompt_text[:200])
for k, (text, rank, r) in enumerate(zip(group.responses, group.ranks, scored.rewards)):
    print(f"  answer {k}: human rank {rank}, reward {r:+.3f}  {text[:70]!r}")
labels = [f"answer {k} (rank {r})" for k, r in enumerate(group.ranks)]
fig = go.Figure(go.Heatmap(z=scored.probabilities, x=labels, y=labels, zmin=0, zmax=1, colorscale="RdBu",
                           text=[[f"{p:.2f}" for p in row] for row in scored.probabilities],
                           texttemplate="%{text}"))
fig.update_layout(title="P(row preferred over column) = σ(r_row − r_col)", height=420,
                  yaxis_autorange="reversed")
fig.show()

# %% [markdown]
# The matrix is the ranking the model would produce, with confidence attached: sorting answers by
# reward gives its ranking, and an entry far from 0.5 is a strong claim. If the model agreed with
# people, the row of the answer ranked first would be blue (above 0.5) all along, and rows would
# turn redder as the human rank gets worse. Entries near 0 or 1 on a question where people
# themselves disagree are a warning sign of overconfidence.

# %% [markdown]
# ## 4.5 Best-of-$n$
#
# The simplest way to *use* a reward model: sample $n$ answers from a policy, keep the one with
# the highest reward. Here the $n$ candidates are the human-ranked answers of our instruction, so
# we can see whether the pick is the one people put first; a random pick would be right $1/n$ of
# the time. (Notebook 5 measures this over all held-out prompts, and shows how best-of-$n$
# against an imperfect reward can go wrong as $n$ grows.)

# %%
def best_of_n(rewards: list[float]) -> int:
    """Index of the highest-reward candidate."""
    return max(range(len(rewards)), key=rewards.__getitem__)


pick = best_of_n(scored.rewards)
assert pick == scored.best
order = sorted(range(len(scored.rewards)), key=lambda k: -scored.rewards[k])
print(f"best-of-{len(group.responses)} picks answer {pick}, which people ranked {group.ranks[pick]} "
      f"(chance of picking rank 1 at random: 1/{len(group.responses)})")
print("the model's ranking, as human ranks:", [group.ranks[k] for k in order])

# %% [markdown]
# ## 4.6 Per-token rewards of the trained neuron
#
# Notebook 3 applied an untrained neuron at every token. With the trained one, the values along an
# answer show where the score moves. They are a probe, not a decomposition: the neuron was trained
# only at the last token, and each $h_t$ mixes everything before $t$. Here are the best- and
# worst-ranked answers of the instruction above, each scored **on its own**.
#
# On its own is not quite how the matrix above scored them. When a prompt plus its longest answer
# exceeds `MAX_LENGTH`, `rmcore` cuts the *shared* prompt from the left until the longest answer
# fits — so inside a group, a short answer sees less of the prompt than it would alone, and its
# reward can differ. The last per-token value equals the answer's reward alone; compare it with
# its reward in the group.

# %%
TOL = 1e-4 if rm.device != "cuda" else 5e-2  # rmcore scores in bfloat16 on a GPU
ranked = [r for r in group.ranks if r is not None]
best, worst = group.ranks.index(min(ranked)), group.ranks.index(max(ranked))
fig = go.Figure()
for k, name in ((best, "ranked best"), (worst, "ranked worst")):
    tr = rm.token_rewards(group.prompt, group.responses[k])
    alone = rm.rewards(group.prompt, [group.responses[k]])[0]
    assert abs(tr.rewards[-1] - alone) < TOL  # the last token's value is the reward
    in_group = rm.encode(group.prompt, group.responses).prompt_ids
    print(f"{name}: reward alone {alone:+.3f} (prompt: {tr.prompt_tokens} tokens), in its group "
          f"{scored.rewards[k]:+.3f} (prompt: {len(in_group)} tokens)")
    fig.add_scatter(y=tr.rewards, mode="lines", name=f"{name} (answer {k})", hovertext=tr.tokens)
fig.update_layout(title="w · h_t along two answers (hover for the token)", xaxis_title="token of the answer",
                  yaxis_title="w · h_t", height=360)
fig.show()

# %%
if not OUT_DIR:  # the saved model is a full copy of the 135M trunk (about 540 MB): do not leave it behind
    shutil.rmtree(out_dir.parent, ignore_errors=True)

# %% [markdown]
# **Next:** [notebook 5](05_is_it_any_good.ipynb) — accuracy is one number; is the model right for
# the right reasons, and how good could it possibly be?
