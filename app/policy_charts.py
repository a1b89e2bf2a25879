"""Pure functions that build the Policy page's figures and tables (no Streamlit here; tested directly).

The best-of-n figure itself is rmcore.policy.best_of_n.bon_figure (the CLI's --plot draws the same one).
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.charts import GREY, _layout, plain

PROXY = "#1f77b4"
GOLD = "#d62728"
LENGTH = "#7f7f7f"


def rlhf_curves(evals: list[dict[str, Any]]) -> go.Figure:
    """Held-out results against the step: reward (proxy and gold), KL to the starting policy, answer length.

    Rewards are drawn as the change since step 0 in units of the starting policy's spread (its
    standard deviation), so the proxy and the gold judge, whose scales differ, share one axis.
    """
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=[
        "held-out reward (change, sd of the start)", "KL to the starting policy (nats)", "answer length (tokens)"])
    if evals:
        steps = [e["step"] for e in evals]
        for key, std_key, name, color in (("reward_mean", "reward_std", "proxy (optimised)", PROXY),
                                          ("gold_mean", "gold_std", "gold (judge only)", GOLD)):
            if evals[0].get(key) is None:
                continue
            unit = evals[0].get(std_key) or 1.0
            change = [(e[key] - evals[0][key]) / unit for e in evals]
            fig.add_trace(go.Scatter(x=steps, y=change, mode="lines+markers", name=name, line={"color": color},
                                     hovertemplate="step %{x}<br>%{y:+.2f} sd<extra>" + name + "</extra>"),
                          row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=[e.get("kl") for e in evals], mode="lines+markers", name="KL",
                                 line={"color": "#9467bd"}, showlegend=False,
                                 hovertemplate="step %{x}<br>KL %{y:.3f} nats<extra></extra>"), row=1, col=2)
        fig.add_trace(go.Scatter(x=steps, y=[e.get("length_mean") for e in evals], mode="lines+markers",
                                 name="length", line={"color": LENGTH}, showlegend=False,
                                 hovertemplate="step %{x}<br>%{y:.1f} tokens<extra></extra>"), row=1, col=3)
    fig.add_hline(y=0, line={"color": GREY, "dash": "dot"}, row=1, col=1)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="step", rangemode="tozero", row=1, col=col)
    return _layout(fig, 330, legend={"orientation": "h", "yanchor": "bottom", "y": -0.4, "x": 0},
                   margin={"l": 10, "r": 10, "t": 40, "b": 70})


def bon_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best-of-n curve as table rows with readable column names."""
    table = []
    for row in rows:
        item = {"n": row["n"], "KL (nats)": round(row["kl"], 3), "win rate vs one sample": round(row["win_rate"], 3),
                "proxy reward": round(row["proxy"], 3)}
        if "gold" in row:
            item["gold reward"] = round(row["gold"], 3)
        item["length (tokens)"] = round(row["length"], 1)
        if "hit_limit" in row:
            item["picks cut at the token limit"] = f"{row['hit_limit']:.0%}"
        table.append(item)
    return table


def best_and_random(record: dict[str, Any], rewards: list[float], gold: list[float] | None) -> dict[str, Any]:
    """For one prompt: the answer the proxy likes best, the one it likes least, and their rewards."""
    best = max(range(len(rewards)), key=rewards.__getitem__)
    worst = min(range(len(rewards)), key=rewards.__getitem__)
    out = {"prompt": record["prompt"] if isinstance(record["prompt"], str) else record["prompt"][-1]["content"]}
    for label, index in (("best", best), ("worst", worst)):
        out[label] = {"text": record["responses"][index], "reward": rewards[index],
                      "gold": gold[index] if gold else None}
    return out


def short(text: str, limit: int = 80) -> str:
    return plain(text, limit)
