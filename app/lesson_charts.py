"""The over-optimisation lesson's chart and tables (rmcore.policy.lesson's result, as a dict).

The x-axis is d = sqrt(KL), the one Gao, Schulman and Hilton (2022) use: on it best-of-n's gold
follows d(alpha - beta d), a parabola whose top is where more optimisation starts to hurt. The
y-axis is each judge's gain over the policy's own answers (n = 1), the quantity the form fits: the
two judges' scales differ (the proxy's rewards sit near 7, the gold's near 0), and on gains the
gold's turn is not flattened by the proxy's offset.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PROXY_COLOUR, GOLD_COLOUR, TRAIT_COLOUR = "#1f77b4", "#d62728", "#7f7f7f"


def fitted_curve(fit: dict[str, Any], d: np.ndarray) -> np.ndarray:
    """The fitted best-of-n form at `d`: the gain over n = 1, d(alpha - beta d)."""
    return d * (fit["alpha"] - fit["beta"] * d)


def lesson_figure(result: dict[str, Any]) -> go.Figure:
    """Proxy and gold of the pick against sqrt(KL), with standard errors, their fitted forms, the gold's
    fitted peak, and the share of picks carrying the trait on a second axis."""
    points = result["points"]
    d = np.array([p["d"] for p in points])
    grid = np.linspace(0.0, float(d.max()) * 1.05, 60)
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for key, name, colour in (("proxy", "proxy", PROXY_COLOUR), ("gold", "gold", GOLD_COLOUR)):
        figure.add_trace(go.Scatter(
            x=d, y=[p[key] - points[0][key] for p in points], mode="markers", name=f"{name} (measured)",
            marker={"color": colour, "size": 9}, text=[f"n = {p['n']}" for p in points],
            error_y={"type": "data", "array": [p[f"{key}_se"] for p in points], "visible": True}))
        figure.add_trace(go.Scatter(
            x=grid, y=fitted_curve(result[f"{key}_fit"], grid), mode="lines",
            name=f"{name} fit d(α − βd)", line={"color": colour, "dash": "dot"}))
    _add_peak(figure, result["gold_fit"])
    figure.add_trace(go.Scatter(
        x=d, y=[100 * p["trait_share"] for p in points], mode="lines+markers", name="picks with the trait (%)",
        line={"color": TRAIT_COLOUR, "dash": "dash"}), secondary_y=True)
    figure.update_layout(height=430, margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": -0.2})
    figure.update_xaxes(title_text="sqrt(KL to the policy), nats^½  (best of n = 1, 2, 4, …)")
    figure.update_yaxes(title_text="reward of the pick, change from n = 1", secondary_y=False, zeroline=True)
    figure.update_yaxes(title_text="picks with the trait", secondary_y=True, rangemode="tozero", ticksuffix="%",
                        tickformat=".0f", showgrid=False)
    return figure


def _add_peak(figure: go.Figure, fit: dict[str, Any]) -> None:
    """A star where the fitted gold is highest (only when the fit turns: beta > 0)."""
    if fit.get("peak_d") is None:
        return
    figure.add_trace(go.Scatter(
        x=[fit["peak_d"]], y=[fit["peak_gold"]], mode="markers", name="gold's fitted peak",
        marker={"symbol": "star", "size": 16, "color": GOLD_COLOUR, "line": {"color": "black", "width": 1}},
        text=[f"KL {fit['peak_kl']:.2f} nats"]))


def fit_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The fitted parameters with their standard errors, one row per judge."""
    rows = []
    for key in ("proxy", "gold"):
        fit = result[f"{key}_fit"]
        peak = "no turn (β ≤ 0)" if fit.get("peak_kl") is None else f"KL {fit['peak_kl']:.2f} nats"
        rows.append({"judge": key, "α": f"{fit['alpha']:.3f} ± {fit['alpha_se']:.3f}",
                     "β": f"{fit['beta']:.3f} ± {fit['beta_se']:.3f}", "fitted peak": peak})
    return rows


def criteria_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The three criteria of a lesson that shows the turn (and the fourth, its shape), each met or not."""
    turn = result["turn"]
    drop = f"{turn['gold_drop']:.3f} ± {turn['gold_drop_se']:.3f}"
    said = [
        ("the proxy rises at every n", turn["proxy_rises"], ""),
        ("the gold's last point is two standard errors below its peak", turn["gold_turns"],
         f"peak at n = {turn['gold_peak_n']}, drop {drop}"),
        ("the share of picks with the trait rises", turn["trait_rises"],
         f"{result['points'][0]['trait_share']:.0%} → {result['points'][-1]['trait_share']:.0%}"),
        ("the gold first rises (the proxy helped before it was gamed)", turn["gold_rises_first"], ""),
    ]
    return [{"criterion": text, "met": "yes" if met else "no", "measured": detail} for text, met, detail in said]


__all__ = ["criteria_rows", "fit_rows", "fitted_curve", "lesson_figure"]
