"""The best-of-n curve: what picking the reward model's favourite of n samples buys, and what it costs.

Best-of-n is the simplest policy a reward model makes: sample n answers, keep the one with the
highest reward. From N samples per prompt we compute, for every n <= N, the *exact* expectation
over all C(N, n) ways of drawing n of them (no resampling noise): sort the proxy rewards
r_(1) <= ... <= r_(N); the i-th smallest is the maximum of a random n-subset with probability

    w_i = C(i - 1, n - 1) / C(N, n)

(the other n - 1 members must come from the i - 1 smaller ones). So E[best-of-n reward] = sum_i
w_i r_(i), and any other quantity of the picked answer (its gold reward, its length) is averaged
with the same weights in proxy order.

Its price, in KL from the policy, is known in closed form: KL(best-of-n || policy) = log n -
(n - 1)/n (the bound is tight for continuous rewards); and a best-of-n answer beats one fresh
sample of the policy with probability n/(n + 1). When the gold curve flattens or falls while the
proxy keeps rising, the policy is being pushed into what the proxy over-rates (Goodhart's law).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rmcore.data.prompts import as_messages


def order_statistic_weights(total: int, n: int) -> np.ndarray:
    """w[i] = P(the (i+1)-th smallest of `total` values is the max of a random n-subset); sums to 1."""
    if not 1 <= n <= total:
        raise ValueError(f"n must be between 1 and the number of samples ({total}), got {n}")
    denominator = math.comb(total, n)
    return np.array([math.comb(i, n - 1) / denominator for i in range(total)])  # i = rank - 1


def best_of_n_expectation(proxy: np.ndarray, n: int, values: np.ndarray | None = None) -> float:
    """E[value of the best-of-n pick by `proxy`] over all n-subsets of the samples (values default: proxy)."""
    proxy = np.asarray(proxy, dtype=float)
    order = np.argsort(proxy, kind="stable")
    values = proxy if values is None else np.asarray(values, dtype=float)
    return float(order_statistic_weights(len(proxy), n) @ values[order])


def kl_best_of_n(n: int | np.ndarray) -> np.ndarray | float:
    """KL(best-of-n || policy) in nats: log n - (n - 1)/n."""
    n = np.asarray(n, dtype=float)
    value = np.log(n) - (n - 1) / n
    return float(value) if value.ndim == 0 else value


def win_rate_bound(n: int | np.ndarray) -> np.ndarray | float:
    """P(best-of-n answer beats one policy sample by the proxy) = n/(n + 1), for continuous rewards."""
    n = np.asarray(n, dtype=float)
    value = n / (n + 1)
    return float(value) if value.ndim == 0 else value


def powers_of_two(total: int) -> list[int]:
    """1, 2, 4, ... up to `total`, and `total` itself when it is not a power of two."""
    ns = [2**k for k in range(int(math.log2(total)) + 1)] if total >= 1 else []
    return ns + ([total] if ns and ns[-1] != total else [])


@dataclass
class BonCurve:
    ns: list[int]
    prompts: int
    samples_per_prompt: int
    proxy_mean: list[float]  # E[proxy reward of the pick], averaged over prompts
    proxy_se: list[float]  # standard error over prompts
    length_mean: list[float]  # E[answer tokens of the pick]
    kl: list[float]
    win_rate: list[float]
    gold_mean: list[float] | None = None  # E[gold reward of the proxy's pick]
    gold_se: list[float] | None = None
    proxy_std: float = 0.0  # spread of one policy sample's proxy reward (all samples); the unit of gain
    gold_std: float | None = None
    hit_limit_share: list[float] = field(default_factory=list)  # share of picks that ran into the token limit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per n, for a table."""
        rows = []
        for i, n in enumerate(self.ns):
            row = {"n": n, "kl": self.kl[i], "win_rate": self.win_rate[i], "proxy": self.proxy_mean[i],
                   "proxy_se": self.proxy_se[i]}
            if self.gold_mean is not None:
                row.update(gold=self.gold_mean[i], gold_se=self.gold_se[i])
            row.update(length=self.length_mean[i], hit_limit=self.hit_limit_share[i] if self.hit_limit_share else 0.0)
            rows.append(row)
        return rows


def bon_curve(proxy: list[list[float]], lengths: list[list[float]], gold: list[list[float]] | None = None,
              hit_limit: list[list[bool]] | None = None, ns: list[int] | None = None) -> BonCurve:
    """The best-of-n curve from per-prompt samples: rewards (and gold rewards, lengths) of N answers each.

    Prompts with more samples than the fewest are used in full for their own expectation; n runs up
    to the fewest samples any prompt has.
    """
    if not proxy:
        raise ValueError("no prompts with samples")
    total = min(len(r) for r in proxy)
    if total < 1:
        raise ValueError("a prompt has no samples")
    ns = ns or powers_of_two(total)
    per_prompt = {"proxy": [], "gold": [], "length": [], "hit": []}
    for p, rewards in enumerate(proxy):
        rewards = np.asarray(rewards, dtype=float)
        order = np.argsort(rewards, kind="stable")
        weights = [order_statistic_weights(len(rewards), n) for n in ns]
        per_prompt["proxy"].append([w @ rewards[order] for w in weights])
        per_prompt["length"].append([w @ np.asarray(lengths[p], dtype=float)[order] for w in weights])
        if gold is not None:
            per_prompt["gold"].append([w @ np.asarray(gold[p], dtype=float)[order] for w in weights])
        if hit_limit is not None:
            per_prompt["hit"].append([w @ np.asarray(hit_limit[p], dtype=float)[order] for w in weights])

    def mean_se(key: str) -> tuple[list[float], list[float]]:
        table = np.asarray(per_prompt[key])  # (prompts, len(ns))
        se = table.std(axis=0, ddof=1) / math.sqrt(len(table)) if len(table) > 1 else np.zeros(len(ns))
        return table.mean(axis=0).tolist(), se.tolist()

    proxy_mean, proxy_se = mean_se("proxy")
    gold_mean, gold_se = mean_se("gold") if gold is not None else (None, None)
    all_proxy = np.concatenate([np.asarray(r, dtype=float) for r in proxy])
    all_gold = np.concatenate([np.asarray(r, dtype=float) for r in gold]) if gold is not None else None
    return BonCurve(
        ns=list(ns), prompts=len(proxy), samples_per_prompt=total, proxy_mean=proxy_mean, proxy_se=proxy_se,
        length_mean=mean_se("length")[0], kl=[kl_best_of_n(n) for n in ns], win_rate=[win_rate_bound(n) for n in ns],
        gold_mean=gold_mean, gold_se=gold_se, proxy_std=float(all_proxy.std()),
        gold_std=float(all_gold.std()) if all_gold is not None else None,
        hit_limit_share=mean_se("hit")[0] if hit_limit is not None else [],
    )


def brute_force_best_of_n(proxy: np.ndarray, n: int, draws: int, rng: np.random.Generator,
                          values: np.ndarray | None = None) -> tuple[float, float]:
    """(mean, standard error) of the best-of-n pick's value by drawing n-subsets at random: the slow check."""
    proxy = np.asarray(proxy, dtype=float)
    values = proxy if values is None else np.asarray(values, dtype=float)
    picks = np.empty(draws)
    for d in range(draws):
        subset = rng.choice(len(proxy), size=n, replace=False)
        picks[d] = values[subset[np.argmax(proxy[subset])]]
    return float(picks.mean()), float(picks.std(ddof=1) / math.sqrt(draws))


# ----------------------------------------------------------------------------- reading and scoring samples


def score_proxy_and_gold(records: list[dict[str, Any]], proxy_model, gold_model=None, batch_size: int = 8,
                         on_progress=None) -> tuple[list[list[float]], list[list[float]] | None]:
    """The proxy's and the gold judge's rewards of every samples record. Two head-mode models of one base
    model share a single trunk pass (half the time); otherwise each scores on its own.

    `on_progress(prompts_done, prompts)` counts up once over all the scoring: with two passes, a prompt
    is half done once the proxy has scored it."""
    if gold_model is None:
        return score_samples(records, proxy_model, batch_size, on_progress), None
    if not proxy_model.shares_trunk_with(gold_model):
        proxy = score_samples(records, proxy_model, batch_size, _half(on_progress, 0))
        return proxy, score_samples(records, gold_model, batch_size, _half(on_progress, 1))
    proxy, gold = [], []
    if on_progress is not None:
        on_progress(0, len(records))
    for first in range(0, len(records), batch_size):
        part = records[first : first + batch_size]
        encoded = [proxy_model.encode(as_messages(r["prompt"]), r["responses"]) for r in part]
        part_proxy, part_gold = proxy_model.rewards_with_heads(encoded, [gold_model], batch_size)
        proxy.extend(part_proxy)
        gold.extend(part_gold)
        if on_progress is not None:
            on_progress(first + len(part), len(records))
    return proxy, gold


def _half(on_progress, half: int):
    """The progress of one of two passes over the records, reported as part of both."""
    if on_progress is None:
        return None
    return lambda done, total: on_progress((half * total + done) / 2, total)


def score_samples(records: list[dict[str, Any]], reward_model, batch_size: int = 8, on_progress=None
                  ) -> list[list[float]]:
    """Rewards of every response of every samples record, scored a prompt (one packed pass) at a time."""
    rewards: list[list[float]] = []
    chunk = batch_size  # prompts per progress report (each prompt's answers share one packed pass)
    if on_progress is not None:
        on_progress(0, len(records))
    for first in range(0, len(records), chunk):
        part = records[first : first + chunk]
        encoded = [reward_model.encode(as_messages(r["prompt"]), r["responses"]) for r in part]
        rewards.extend(reward_model.rewards_for(encoded, batch_size=batch_size))
        if on_progress is not None:
            on_progress(first + len(part), len(records))
    return rewards


def curve_from_records(records: list[dict[str, Any]], proxy: list[list[float]],
                       gold: list[list[float]] | None = None) -> BonCurve:
    """The curve of a samples file's records with their rewards (lengths: answer tokens as sampled)."""
    lengths = [r.get("num_tokens") or [len(text.split()) for text in r["responses"]] for r in records]
    hit = [r.get("hit_limit") or [False] * len(r["responses"]) for r in records]
    return bon_curve(proxy, lengths, gold, hit)


# ----------------------------------------------------------------------------- the figure


def bon_figure(curve: BonCurve):
    """Three panels: reward gain against n (log scale), against KL, and the pick's length against n.

    Rewards are shown as gain over one policy sample in units of that sample's spread (standard
    deviations), so the proxy and the gold model, whose scales differ, share an axis.
    """
    # plotly is not a dependency of the rmcore package (requirements.txt adds it, for the app and --plot)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "reward of the pick vs n", "reward of the pick vs KL from the policy", "length of the pick (tokens)"))
    series = [("proxy (the reward model)", curve.proxy_mean, curve.proxy_se, curve.proxy_std, "#1f77b4")]
    if curve.gold_mean is not None:
        series.append(("gold (independent judge)", curve.gold_mean, curve.gold_se, curve.gold_std or 0.0, "#d62728"))
    for name, mean, se, std, color in series:
        unit = std if std > 0 else 1.0
        gain = [(m - mean[0]) / unit for m in mean]
        band = [s / unit for s in se]
        for col, xs in ((1, curve.ns), (2, curve.kl)):
            fig.add_trace(go.Scatter(
                x=xs, y=gain, mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                line={"color": color}, error_y={"type": "data", "array": band, "visible": True},
                customdata=curve.ns, hovertemplate="n=%{customdata}<br>gain %{y:.2f} sd<extra>" + name + "</extra>",
            ), row=1, col=col)
    fig.add_trace(go.Scatter(x=curve.ns, y=curve.length_mean, mode="lines+markers", name="length of the pick",
                             line={"color": "#7f7f7f"}), row=1, col=3)
    for col in (1, 3):  # ticks at the n drawn, not plotly's 2, 3, 5 ... of a log axis
        fig.update_xaxes(type="log", title_text="n (log scale)", tickvals=curve.ns, row=1, col=col)
    fig.update_xaxes(title_text="KL(best-of-n || policy), nats", row=1, col=2)
    fig.update_yaxes(title_text="gain over one sample (sd)", row=1, col=1)
    fig.update_layout(height=360, margin={"l": 50, "r": 20, "t": 40, "b": 50}, legend={"orientation": "h", "y": -0.25})
    return fig
