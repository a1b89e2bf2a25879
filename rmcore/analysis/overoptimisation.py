"""The functional forms of reward over-optimisation (Gao, Schulman and Hilton 2022), fitted to points.

Gao et al. found that the gold reward of a policy pushed against a proxy follows, in d = sqrt(KL)
from the starting policy,

    best-of-n:  gold(d) = d (alpha - beta d)
    RL:         gold(d) = d (alpha - beta log d)

with gold measured as the gain over the starting policy (so both pass through 0 at d = 0). Both are
linear in (alpha, beta), so ordinary (or, given each point's standard error, weighted) least squares
fits them exactly, and the parameters' covariance comes from the same normal equations: no scipy
needed. A positive beta means the curve turns; its peak is where the gold is best, the point past
which more optimisation against the proxy makes the answers worse. The peak's uncertainty is the
delta method's, from the parameters' covariance.

This module is in analysis (below policy) because it is pure numbers: the lesson in
rmcore.policy.lesson and the app draw what it returns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

FORMS = ("best_of_n", "rl")


def kl_best_of_n(n: int | np.ndarray) -> np.ndarray | float:
    """KL(best-of-n || policy) in nats: log n - (n - 1)/n (tight for continuous rewards)."""
    n = np.asarray(n, dtype=float)
    value = np.log(n) - (n - 1) / n
    return float(value) if value.ndim == 0 else value


def _design(d: np.ndarray, form: str) -> np.ndarray:
    """Columns (d, -d^2) or (d, -d log d): the model is gold = X @ (alpha, beta)."""
    if form == "best_of_n":
        return np.column_stack([d, -d * d])
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)  # d log d -> 0 as d -> 0
        return np.column_stack([d, -dlogd])
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


@dataclass
class GoldFit:
    form: str
    alpha: float
    beta: float
    alpha_se: float
    beta_se: float
    peak_d: float | None  # sqrt(KL) where the fitted gold is highest; None when the fit does not turn
    peak_d_se: float | None
    peak_kl: float | None
    peak_gold: float | None
    points: int

    def predict(self, d) -> np.ndarray:
        """The fitted gold gain at each sqrt(KL) in `d` (for drawing the curve over the points)."""
        return _design(np.atleast_1d(np.asarray(d, dtype=float)), self.form) @ np.array([self.alpha, self.beta])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_gold(d, gold, se=None, form: str = "best_of_n") -> GoldFit:
    """Least squares of gold(d) on the form's two columns; `se` (each point's standard error) weights
    the points by 1/se^2. The parameter errors scale the covariance by the residuals' reduced chi-square
    (as scipy's curve_fit does by default), so they are honest when the stated errors are off by a factor.
    Points at d = 0 carry no information on the shape but are kept (they pin nothing, they cost nothing)."""
    d = np.asarray(d, dtype=float)
    y = np.asarray(gold, dtype=float)
    if d.shape != y.shape or d.ndim != 1:
        raise ValueError("d and gold must be two lists of the same length")
    x = _design(d, form)
    informative = np.abs(x).sum(axis=1) > 0
    if informative.sum() < 2:
        raise ValueError("a fit of two parameters needs at least two points with d > 0")
    w = np.ones_like(y) if se is None else 1.0 / np.maximum(np.asarray(se, dtype=float), 1e-12) ** 2
    xtwx = x.T @ (x * w[:, None])
    params = np.linalg.solve(xtwx, x.T @ (w * y))
    dof = int(informative.sum()) - 2
    residual = y - x @ params
    scale = float((w * residual**2).sum() / dof) if dof > 0 else 1.0
    cov = np.linalg.inv(xtwx) * scale
    alpha, beta = float(params[0]), float(params[1])
    peak = _peak(alpha, beta, cov, form)
    return GoldFit(form=form, alpha=alpha, beta=beta, alpha_se=math.sqrt(max(cov[0, 0], 0.0)),
                   beta_se=math.sqrt(max(cov[1, 1], 0.0)), points=len(d), **peak)


def _peak(alpha: float, beta: float, cov: np.ndarray, form: str) -> dict[str, float | None]:
    """Where d(alpha - beta d) or d(alpha - beta log d) is highest, with the delta method's error on d.

    best-of-n: d* = alpha / (2 beta); RL: d* = exp(alpha / beta - 1). No peak when beta <= 0 (the
    curve never turns) or, for the best-of-n form, when alpha <= 0 (it falls from the start)."""
    none = {"peak_d": None, "peak_d_se": None, "peak_kl": None, "peak_gold": None}
    if beta <= 0 or (form == "best_of_n" and alpha <= 0):
        return none
    if form == "best_of_n":
        peak_d = alpha / (2 * beta)
        grad = np.array([1 / (2 * beta), -alpha / (2 * beta**2)])
        peak_gold = alpha**2 / (4 * beta)
    else:
        exponent = alpha / beta - 1
        if exponent > 50:  # the peak is far past any KL a run reaches: report none rather than overflow
            return none
        peak_d = math.exp(exponent)
        grad = peak_d * np.array([1 / beta, -alpha / beta**2])
        peak_gold = beta * peak_d
    return {"peak_d": peak_d, "peak_d_se": math.sqrt(max(float(grad @ cov @ grad), 0.0)),
            "peak_kl": peak_d**2, "peak_gold": peak_gold}


def fit_best_of_n_points(ns, gold, se=None) -> GoldFit:
    """The best-of-n form fitted to gold rewards measured at each n: d = sqrt(log n - (n-1)/n), gold taken
    as the gain over n = 1 (the first point must be n = 1: the policy itself)."""
    ns = [int(n) for n in ns]
    if not ns or ns[0] != 1:
        raise ValueError("the points must start at n = 1 (the policy's own samples)")
    d = np.sqrt(np.asarray(kl_best_of_n(np.asarray(ns)), dtype=float))
    gain = np.asarray(gold, dtype=float) - float(gold[0])
    return fit_gold(d, gain, None if se is None else np.maximum(np.asarray(se, dtype=float), 1e-12),
                    form="best_of_n")
