"""Pure functions that build plotly figures from rmcore results (no Streamlit here; tested directly).

Plotly reads a few HTML-like tags (<b>, <br>, <a>) in labels and hover text, so every piece of
user text goes through `plain()` first: escaped, on one line, shortened. User text never goes into
a hovertemplate itself (where "%{...}" would be interpolated), only into customdata.
"""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from rmcore.data.ranking import pair_loss, preference_probability

TRAIN = "#4C78A8"
HELD_OUT = "#F58518"
GOOD = "#54A24B"
BAD = "#E45756"
GREY = "#9D9D9D"
MAX_POINTS = 2000  # curves are thinned to this many points so a long run still draws quickly


def plain(text: Any, limit: int = 60) -> str:
    """User text made safe and short for a chart label: escaped, one line, cut at `limit` chars."""
    one_line = " ".join(str(text).split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1].rstrip() + "…"
    return html.escape(one_line, quote=False)


def token_label(token: str) -> str:
    """A token as people can read it: spaces as '·', newlines as '⏎', escaped."""
    shown = token.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥")
    return html.escape(shown or "∅", quote=False)


def candidate_labels(candidates: list[str], limit: int = 40, numbers: list[int] | None = None) -> list[str]:
    """"#n text" for each candidate; `numbers` are the form's own numbers when some were left out."""
    numbers = numbers or list(range(1, len(candidates) + 1))
    return [f"#{n} {plain(c, limit)}" for n, c in zip(numbers, candidates, strict=True)]


def _layout(fig: go.Figure, height: int = 320, **kwargs) -> go.Figure:
    """Common layout. Plotly's toolbar stands upright in a right margin of its own, so it never
    covers a title (drawn across the top, it hid the end of long ones)."""
    kwargs.setdefault("margin", dict(l=10, r=10, t=40, b=10))
    kwargs["margin"] = {**kwargs["margin"], "r": max(kwargs["margin"].get("r", 0), 44)}
    fig.update_layout(height=height, modebar=dict(orientation="v"), **kwargs)
    return fig


def _thin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) <= MAX_POINTS:
        return rows
    stride = math.ceil(len(rows) / MAX_POINTS)
    return rows[::stride] + ([rows[-1]] if (len(rows) - 1) % stride else [])


def smooth(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), debiased at the start."""
    out, avg = [], 0.0
    for i, value in enumerate(values):
        avg = weight * avg + (1 - weight) * value
        out.append(avg / (1 - weight ** (i + 1)))
    return out


# ----------------------------------------------------------------------------- Data


def k_distribution(k_distribution: dict[Any, int]) -> go.Figure:
    ks = sorted(k_distribution, key=lambda k: int(k))
    fig = go.Figure(
        go.Bar(
            x=[int(k) for k in ks],
            y=[k_distribution[k] for k in ks],
            marker_color=TRAIN,
            hovertemplate="K = %{x}: %{y} instructions<extra></extra>",
        )
    )
    fig.update_xaxes(title="responses per instruction (K)", dtick=1)
    few = max(k_distribution.values(), default=0) <= 8  # whole instructions: no "0.5" ticks on a small file
    fig.update_yaxes(title="instructions", tickformat="d", dtick=1 if few else None)
    return _layout(fig, 260, title="Responses per instruction")


# ----------------------------------------------------------------------------- Train


CURVES = (
    ("loss", "eval_loss", "Bradley-Terry loss"),
    ("accuracy", "eval_accuracy", "Pairwise accuracy"),
    ("margin", "eval_margin", "Reward margin r<sub>w</sub> − r<sub>l</sub>"),
)


def training_curves(steps: list[dict[str, Any]], evals: list[dict[str, Any]]) -> go.Figure:
    """Loss, pairwise accuracy and margin against the step: train (raw and smoothed) and held-out."""
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=[title for _, _, title in CURVES], horizontal_spacing=0.07
    )
    steps = _thin(steps)
    x = [s["step"] for s in steps]
    for col, (key, eval_key, _) in enumerate(CURVES, start=1):
        for trace in _curve_traces(key, eval_key, steps, evals, first=col == 1):
            fig.add_trace(trace, row=1, col=col)
        few = max(x + [e["step"] for e in evals], default=0) <= 8  # no "step 0.5" ticks on a short run
        fig.update_xaxes(title_text="step", row=1, col=col, rangemode="tozero", dtick=1 if few else None)
    fig.update_yaxes(range=[-0.02, 1.02], row=1, col=2)
    fig.add_hline(y=0.5, line=dict(color=GREY, dash="dot"), row=1, col=2)
    fig.add_hline(y=math.log(2), line=dict(color=GREY, dash="dot"), row=1, col=1)
    fig.add_trace(  # a legend entry for the dotted lines: what a model that knows nothing scores
        go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=GREY, dash="dot"),
                   name="chance (loss log 2, accuracy 0.5)", hoverinfo="skip"),
        row=1,
        col=1,
    )
    return _layout(
        fig,
        340,
        legend=dict(orientation="h", yanchor="bottom", y=-0.35, x=0),
        margin=dict(l=10, r=10, t=40, b=70),
    )


def _curve_traces(key: str, eval_key: str, steps: list[dict[str, Any]], evals: list[dict[str, Any]],
                  first: bool) -> list[go.Scatter]:
    """One panel's curves: train at each step and smoothed, then held-out (the legend comes from the first panel)."""
    x = [s["step"] for s in steps]
    values = [s.get(key) for s in steps]
    traces = []
    if steps:
        traces.append(go.Scatter(
            x=x, y=values, mode="lines", line=dict(color=TRAIN, width=1), opacity=0.35, name="train (each step)",
            legendgroup="raw", showlegend=first,
            hovertemplate=f"step %{{x}}<br>train {key} %{{y:.3f}}<extra></extra>",
        ))
        traces.append(go.Scatter(
            x=x, y=smooth(values), mode="lines", line=dict(color=TRAIN, width=2.5), name="train (smoothed)",
            legendgroup="smooth", showlegend=first,
            hovertemplate=f"step %{{x}}<br>smoothed {key} %{{y:.3f}}<extra></extra>",
        ))
    if evals:
        traces.append(go.Scatter(
            x=[e["step"] for e in evals], y=[e.get(eval_key) for e in evals], mode="lines+markers",
            line=dict(color=HELD_OUT, width=2.5), marker=dict(size=7), name="held-out", legendgroup="eval",
            showlegend=first, hovertemplate=f"step %{{x}}<br>held-out {key} %{{y:.3f}}<extra></extra>",
        ))
    return traces


# ----------------------------------------------------------------------------- Probe


def reward_bars(candidates: list[str], rewards: list[float], best: int | None = None,
                numbers: list[int] | None = None, spread: list[float] | None = None) -> go.Figure:
    """Rewards as horizontal bars, highest on top; the best candidate in green. With `spread` (an
    ensemble's), each bar is the members' mean and its error bar one standard deviation across them."""
    order = sorted(range(len(rewards)), key=lambda i: rewards[i])  # plotly draws the first bar at the bottom
    labels = candidate_labels(candidates, numbers=numbers)
    colors = [GOOD if i == best else TRAIN for i in order]
    bar = go.Bar(
        x=[rewards[i] for i in order],
        y=[labels[i] for i in order],
        orientation="h",
        marker_color=colors,
        text=[f"{rewards[i]:+.3f}" for i in order],
        textposition="auto",
        customdata=[plain(candidates[i], 200) for i in order],
        hovertemplate="reward %{x:.4f}<br>%{customdata}<extra></extra>",
    )
    if spread is not None:
        bar.update(
            error_x=dict(type="data", array=[spread[i] for i in order], color="#333333", thickness=2, width=6),
            text=[f"{rewards[i]:+.3f} ± {spread[i]:.3f}" for i in order],
            textposition="inside",
            insidetextanchor="start",  # at the bar's base, clear of the error bar at its end
            customdata=[[plain(candidates[i], 200), spread[i]] for i in order],
            hovertemplate="mean reward %{x:.4f} ± %{customdata[1]:.4f} (members' spread)<br>"
                          "%{customdata[0]}<extra></extra>",
        )
    fig = go.Figure(bar)
    title = "Rewards, sorted" if spread is None else "Mean reward of the members, sorted (error bar: their spread)"
    fig.update_xaxes(title="reward r (one number per response)", zeroline=True, zerolinecolor=GREY)
    fig.update_yaxes(automargin=True)
    return _layout(fig, 90 + 42 * len(rewards), title=title)


def preference_heatmap(probabilities: list[list[float]], candidates: list[str],
                       numbers: list[int] | None = None) -> go.Figure:
    """P[i][j] = sigma(r_i - r_j) with the value in each cell and the meaning in words on hover."""
    n = len(probabilities)
    numbers = numbers or list(range(1, n + 1))
    names = [f"#{k}" for k in numbers]
    hover = [
        [f"P({names[i]} preferred over {names[j]}) = {probabilities[i][j]:.3f}" for j in range(n)]
        for i in range(n)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=probabilities,
            x=names,
            y=names,
            zmin=0,
            zmax=1,
            colorscale="RdBu",
            reversescale=False,
            text=[[f"{p:.2f}" for p in row] for row in probabilities],
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorbar=dict(title=dict(text="P(i ≻ j)"), thickness=12),
        )
    )
    fig.update_xaxes(title="j (column)", side="bottom", type="category")
    fig.update_yaxes(title="i (row)", autorange="reversed", type="category")
    return _layout(
        fig, 120 + 48 * n, title="P(row i preferred over column j) = σ(r<sub>i</sub> − r<sub>j</sub>)"
    )


def token_trace(tokens: list[str], rewards: list[float]) -> go.Figure:
    """The reward head applied after every token: top, the reward if the answer ended there;
    bottom, its change at each token.

    The last point is the real reward: the model reads it at the final token of the rendered text (for
    SmolLM2's template the line break after `<|im_end|>`).
    """
    x = list(range(1, len(tokens) + 1))
    deltas = [rewards[0]] + [b - a for a, b in zip(rewards, rewards[1:], strict=False)] if rewards else []
    labels = [token_label(t) for t in tokens]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.06)
    fig.add_trace(
        go.Scatter(
            x=x, y=rewards, mode="lines+markers", line=dict(color=TRAIN, width=2), marker=dict(size=5),
            name="reward if the answer ended here", customdata=labels,
            hovertemplate="token %{x} '%{customdata}'<br>reward %{y:.3f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    if rewards:
        fig.add_trace(
            go.Scatter(
                x=[x[-1]], y=[rewards[-1]], mode="markers", marker=dict(size=13, color=GOOD),
                name="the reward (read at the last token)", hovertemplate="final reward %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Bar(
            x=x, y=deltas, marker_color=[GOOD if d >= 0 else BAD for d in deltas], name="change at this token",
            customdata=labels, showlegend=False,
            hovertemplate="token %{x} '%{customdata}'<br>change %{y:+.3f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    _token_axes(fig, x, labels)
    return _layout(
        fig,
        460,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
        margin=dict(l=10, r=10, t=40, b=10),
    )


def _token_axes(fig: go.Figure, x: list[int], labels: list[str]) -> None:
    """Each token under its bar (a long answer gets plain numbers), and the axes' titles."""
    show_ticks = len(labels) <= 80
    fig.update_xaxes(
        tickmode="array" if show_ticks else "auto",
        tickvals=x if show_ticks else None,
        ticktext=labels if show_ticks else None,
        tickangle=-60,
        row=2,
        col=1,
    )
    fig.update_xaxes(title_text="token of the answer", row=2, col=1)
    fig.update_yaxes(title_text="reward", row=1, col=1)
    fig.update_yaxes(title_text="change", zeroline=True, zerolinecolor=GREY, row=2, col=1)


# ----------------------------------------------------------------------------- Evaluate


def rank_gap_accuracy(by_rank_gap: dict[str, dict[str, float]]) -> go.Figure:
    gaps = sorted(by_rank_gap, key=int)
    acc = [by_rank_gap[g]["accuracy"] for g in gaps]
    counts = [by_rank_gap[g]["comparisons"] for g in gaps]
    fig = go.Figure(
        go.Bar(
            x=[int(g) for g in gaps],
            y=acc,
            marker_color=TRAIN,
            customdata=counts,
            text=[f"{a:.2f}<br>n={n}" for a, n in zip(acc, counts, strict=True)],
            textposition="inside",
            textangle=0,
            hovertemplate="rank gap %{x}: accuracy %{y:.3f} on %{customdata} pairs<extra></extra>",
        )
    )
    fig.add_hline(y=0.5, line=dict(color=GREY, dash="dot"))
    fig.update_xaxes(title="rank gap (rank of loser − rank of winner)", dtick=1)
    fig.update_yaxes(title="pairwise accuracy", range=[0, 1.05])
    return _layout(fig, 300, title="Accuracy by rank gap (dotted line: chance)")


def calibration(bins: list[dict[str, Any]]) -> go.Figure:
    used = [b for b in bins if b["count"]]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line=dict(color=GREY, dash="dash"),
            name="perfectly calibrated",
            hoverinfo="skip",
        )
    )
    sizes = [max(6.0, min(30.0, 4 * math.sqrt(b["count"]))) for b in used]
    fig.add_trace(
        go.Scatter(
            x=[b["predicted"] for b in used],
            y=[b["observed"] for b in used],
            mode="lines+markers",
            marker=dict(size=sizes, color=HELD_OUT),
            line=dict(color=HELD_OUT),
            name="this model",
            customdata=[b["count"] for b in used],
            hovertemplate="predicted %{x:.2f}, observed %{y:.2f}<br>%{customdata} comparisons<extra></extra>",
        )
    )
    fig.update_xaxes(title="predicted P(a preferred over b) = σ(r_a − r_b)", range=[-0.03, 1.03])
    fig.update_yaxes(title="how often people preferred a", range=[-0.05, 1.05])
    return _layout(fig, 320, title="Calibration (every pair both ways; marker size: comparisons)",
                   legend=dict(orientation="h", y=-0.3))


def reward_histograms(responses: list[dict[str, Any]]) -> go.Figure:
    """Rewards of responses people ranked best against those they ranked lower."""
    best = [r["reward"] for r in responses if r["rank"] == 1]
    rest = [r["reward"] for r in responses if r["rank"] is not None and r["rank"] > 1]
    fig = go.Figure()
    fig.add_trace(
        go.Histogram(
            x=best, name=f"preferred (ranked best, {len(best)})", marker_color=GOOD, opacity=0.65, nbinsx=30
        )
    )
    fig.add_trace(
        go.Histogram(
            x=rest, name=f"rejected (ranked lower, {len(rest)})", marker_color=BAD, opacity=0.65, nbinsx=30
        )
    )
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="reward")
    fig.update_yaxes(title="responses")
    return _layout(fig, 320, title="Rewards: preferred vs rejected", legend=dict(orientation="h", y=-0.3))


def reward_vs_length(responses: list[dict[str, Any]], correlation: float | None) -> go.Figure:
    xs = [r["tokens"] for r in responses]
    ys = [r["reward"] for r in responses]
    fig = go.Figure()
    kinds = [("ranked best", GOOD, lambda rank: rank == 1), ("ranked lower", BAD, lambda rank: rank not in (1, None)),
             ("unranked", GREY, lambda rank: rank is None)]
    for name, color, belongs in kinds:  # one trace per kind, so the legend says what the colours mean
        chosen = [r for r in responses if belongs(r["rank"])]
        if not chosen:
            continue
        fig.add_trace(
            go.Scatter(
                x=[r["tokens"] for r in chosen],
                y=[r["reward"] for r in chosen],
                mode="markers",
                marker=dict(color=color, size=7, opacity=0.7),
                name=name,
                customdata=[[plain(r["response"], 80), r["rank"] if r["rank"] is not None else "unranked"]
                            for r in chosen],
                hovertemplate="%{x} tokens, reward %{y:.3f}, rank %{customdata[1]}<br>%{customdata[0]}"
                "<extra></extra>",
            )
        )
    if len(xs) >= 2 and len(set(xs)) >= 2:
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=False)) / var
        lo, hi = min(xs), max(xs)
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[mean_y + slope * (lo - mean_x), mean_y + slope * (hi - mean_x)],
                mode="lines",
                line=dict(color=GREY, dash="dash"),
                hoverinfo="skip",
                name="least-squares line",
            )
        )
    corr = "n/a" if correlation is None else f"{correlation:+.2f}"
    fig.update_xaxes(title="response length (tokens)")
    fig.update_yaxes(title="reward")
    return _layout(fig, 340, title=f"Reward vs length (Pearson r = {corr})", legend=dict(orientation="h", y=-0.3))


def accuracy_with_baselines(summary: dict[str, Any]) -> go.Figure:
    """The model's accuracy beside what length alone gets, each with ± one standard error."""
    rows = [("this model, every pair", summary.get("accuracy"), summary.get("accuracy_se"), TRAIN)]
    controlled = summary.get("length_controlled") or {}
    similar = controlled.get("comparisons", 0)
    rows.append((f"this model, {similar} pair{'' if similar == 1 else 's'} of similar length",
                 controlled.get("accuracy"), controlled.get("se"), TRAIN))
    base = summary.get("length_baseline") or {}
    rows.append(("“the longer answer wins”", base.get("accuracy"), base.get("se"), GREY))
    logistic = summary.get("length_logistic") or {}
    rows.append(("a logistic model on length alone", logistic.get("accuracy"), logistic.get("se"), GREY))
    rows = [r for r in rows if r[1] is not None]
    fig = go.Figure(
        go.Bar(
            y=[r[0] for r in rows][::-1],
            x=[r[1] for r in rows][::-1],
            orientation="h",
            marker_color=[r[3] for r in rows][::-1],
            error_x=dict(type="data", array=[r[2] or 0.0 for r in rows][::-1], color="#444"),
            text=[f"{r[1]:.3f}" for r in rows][::-1],
            textposition="inside",
            insidetextanchor="middle",  # clear of the error bar at the end
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=0.5, line=dict(color=GREY, dash="dot"))
    fig.update_xaxes(title="pairwise accuracy (bars: ± one standard error; dotted: chance)", range=[0, 1.05])
    return _layout(fig, 240, title="Accuracy against length alone")


def accuracy_by_disagreement(bins: list[dict[str, Any]], overall: float | None = None) -> go.Figure:
    """An ensemble's accuracy in bins of how much its members disagree on a pair, least disputed first
    (rmcore.training.ensemble.accuracy_by_disagreement): a useful spread falls from left to right."""
    labels = [f"{b['low']:.2f}–{b['high']:.2f}" for b in bins]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[b["accuracy"] for b in bins],
            marker_color=TRAIN,
            customdata=[b["comparisons"] for b in bins],
            text=[f"{b['accuracy']:.2f}<br>n={b['comparisons']}" for b in bins],
            textposition="inside",
            textangle=0,
            hovertemplate="members' spread of r_w − r_l %{x}: accuracy %{y:.3f} on %{customdata} pairs"
                          "<extra></extra>",
        )
    )
    fig.add_hline(y=0.5, line=dict(color=GREY, dash="dot"))
    if overall is not None:
        fig.add_hline(y=overall, line=dict(color=HELD_OUT, dash="dash"),
                      annotation_text=f"all pairs {overall:.3f}", annotation_position="top left")
    fig.update_xaxes(title="how much the members disagree on the pair (spread of their margins r_w − r_l)",
                     type="category")
    fig.update_yaxes(title="pairwise accuracy of the mean", range=[0, 1.05])
    return _layout(fig, 320, title="By how much the members disagree (dotted line: chance; dashed: all pairs)")


def accuracy_difference(comparison: dict[str, Any]) -> go.Figure:
    """B − A with its bootstrap interval, against zero (no difference)."""
    diff, low, high = comparison["difference"], comparison["difference_low"], comparison["difference_high"]
    fig = go.Figure(
        go.Scatter(
            x=[diff],
            y=["B − A"],
            mode="markers",
            marker=dict(size=12, color=HELD_OUT),
            error_x=dict(type="data", symmetric=False, array=[high - diff], arrayminus=[diff - low], color=HELD_OUT),
            hovertemplate=f"B − A = %{{x:+.3f}} ({comparison['confidence']:.0%} interval {low:+.3f} to {high:+.3f})"
            "<extra></extra>",
        )
    )
    fig.add_vline(x=0, line=dict(color=GREY, dash="dot"))
    span = max(0.05, abs(low), abs(high)) * 1.2
    fig.update_xaxes(title="difference in pairwise accuracy (dotted: no difference)", range=[-span, span])
    return _layout(fig, 170, title=f"Accuracy of B minus A, {comparison['confidence']:.0%} bootstrap interval")


def probe_deltas(rows: list[dict[str, Any]], unit_label: str) -> go.Figure:
    """Reward change from each counterfactual edit, in units of the reward's spread on some data."""
    rows = sorted(rows, key=lambda r: r["delta_units"])
    fig = go.Figure(
        go.Bar(
            x=[r["delta_units"] for r in rows],
            y=[plain(r["label"], 50) for r in rows],
            orientation="h",
            marker_color=[GOOD if r["delta_units"] > 0 else BAD for r in rows],
            customdata=[[r["delta"], r["reward"]] for r in rows],
            text=[f"{r['delta_units']:+.2f}" for r in rows],
            textposition="auto",
            hovertemplate="%{y}: %{x:+.2f} spreads (reward %{customdata[1]:+.3f}, "
            "change %{customdata[0]:+.3f})<extra></extra>",
        )
    )
    fig.add_vline(x=0, line=dict(color=GREY))
    fig.update_xaxes(title=f"change in reward, in {unit_label}")
    return _layout(fig, 60 + 36 * max(1, len(rows)), title="What each edit does to the reward")


# ----------------------------------------------------------------------------- Learn


def sigmoid_explainer(r1: float, r2: float) -> go.Figure:
    """σ(d) and the loss −log σ(d) against d = r1 − r2, with the sliders' point marked."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["P(1 ≻ 2) = σ(r₁ − r₂)", "loss if 1 was preferred: −log σ(r₁ − r₂)"]
    )
    _curve_and_point(fig, 1, preference_probability, r1 - r2, TRAIN, ("σ(d)", "σ(d)", "P"), name="your r₁ − r₂")
    _curve_and_point(fig, 2, pair_loss, r1 - r2, BAD, ("−log σ(d)", "loss", "loss"), showlegend=False)
    for col in (1, 2):
        fig.update_xaxes(title_text="d = r₁ − r₂", row=1, col=col)
    fig.update_yaxes(range=[-0.02, 1.02], row=1, col=1)
    return _layout(fig, 330, showlegend=False)


def _curve_and_point(fig: go.Figure, col: int, curve, d_now: float, color: str, words: tuple[str, str, str],
                     **point) -> None:
    """`curve(d)` over the sliders' reach (r1 - r2 = +-12), and the point at the sliders' d. `words`: the
    curve's legend name, its value on hover, the point's value on hover."""
    curve_name, hover, point_hover = words
    ds = [x / 10 for x in range(-120, 121)]
    fig.add_trace(
        go.Scatter(
            x=ds, y=[curve(d) for d in ds], mode="lines", line=dict(color=color, width=2.5), name=curve_name,
            hovertemplate=f"d = %{{x:.1f}}<br>{hover} = %{{y:.3f}}<extra></extra>",
        ),
        row=1,
        col=col,
    )
    fig.add_trace(
        go.Scatter(
            x=[d_now], y=[curve(d_now)], mode="markers", marker=dict(size=14, color=HELD_OUT), **point,
            hovertemplate=f"d = %{{x:.2f}}<br>{point_hover} = %{{y:.3f}}<extra></extra>",
        ),
        row=1,
        col=col,
    )
