"""The Gao-Schulman-Hilton fits: they recover known parameters and say where the gold turns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rmcore.analysis.overoptimisation import fit_best_of_n_points, fit_gold, kl_best_of_n
from rmcore.policy.best_of_n import kl_best_of_n as policy_kl


@pytest.mark.parametrize("form, alpha, beta", [("best_of_n", 1.2, 0.5), ("rl", 0.8, 0.3)])
def test_the_fit_recovers_known_parameters_from_noisy_points(form, alpha, beta):
    rng = np.random.default_rng(0)
    d = np.linspace(0.05, 3.0, 40)
    truth = d * (alpha - beta * (d if form == "best_of_n" else np.log(d)))
    noise = 0.02
    fit = fit_gold(d, truth + rng.normal(0, noise, d.size), se=np.full(d.size, noise), form=form)
    assert abs(fit.alpha - alpha) < 3 * fit.alpha_se and abs(fit.beta - beta) < 3 * fit.beta_se
    assert 0 < fit.alpha_se < 0.05 and 0 < fit.beta_se < 0.05  # small noise, tight errors
    expected_peak = alpha / (2 * beta) if form == "best_of_n" else math.exp(alpha / beta - 1)
    assert fit.peak_d == pytest.approx(expected_peak, abs=3 * fit.peak_d_se)
    assert fit.peak_kl == pytest.approx(fit.peak_d**2)
    assert float(fit.predict(fit.peak_d)[0]) == pytest.approx(fit.peak_gold)


def test_the_errors_grow_with_the_noise():
    d = np.linspace(0.1, 2.0, 12)
    truth = d * (1.0 - 0.4 * d)
    rng = np.random.default_rng(1)
    quiet = fit_gold(d, truth + rng.normal(0, 0.01, d.size))
    loud = fit_gold(d, truth + rng.normal(0, 0.2, d.size))
    assert loud.beta_se > 5 * quiet.beta_se


def test_a_curve_that_never_turns_has_no_peak():
    d = np.linspace(0.1, 2.0, 10)
    fit = fit_gold(d, 0.7 * d + 0.1 * d * d)  # beta < 0: still rising at the end
    assert fit.beta < 0 and fit.peak_d is None and fit.peak_gold is None


def test_best_of_n_points_use_the_analytic_kl():
    ns = [1, 2, 4, 8, 16, 32]
    assert np.allclose(kl_best_of_n(np.array(ns)), policy_kl(np.array(ns)))
    assert kl_best_of_n(1) == 0.0 and kl_best_of_n(2) == pytest.approx(math.log(2) - 0.5)
    d = np.sqrt(kl_best_of_n(np.array(ns)))
    gold = 3.0 + d * (1.0 - 0.6 * d)  # a gold on its own scale: the fit reads the gain over n = 1
    fit = fit_best_of_n_points(ns, gold, se=[0.01] * len(ns))
    assert fit.alpha == pytest.approx(1.0, abs=1e-6) and fit.beta == pytest.approx(0.6, abs=1e-6)
    assert fit.peak_d == pytest.approx(1.0 / 1.2)
    with pytest.raises(ValueError, match="n = 1"):
        fit_best_of_n_points([2, 4], [0.0, 0.1])
    with pytest.raises(ValueError, match="two points"):
        fit_gold([0.0, 1.0], [0.0, 0.5])
