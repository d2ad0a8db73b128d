"""Partial Spearman ρ given the step, with bootstrap intervals: known answers on synthetic checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from massive_activations.evals.rank_stats import correlations_with_ci, rank_stats


def _checkpoints(rng: np.random.Generator, n: int, beyond: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ratio and metric both trend with the step; the metric follows the ratio's own (non-step) part
    with weight ``beyond`` (0: it depends on the step alone)."""
    step = np.arange(n, dtype=float) * 1000
    own = rng.normal(size=n)  # the part of the ratio the step does not explain
    ratio = step / step.max() * 6 + own
    metric = -step / step.max() * 6 + beyond * own + rng.normal(size=n)
    return metric, ratio, step


def _truth(beyond: float) -> float:
    """The population partial ρ, from one very large sample."""
    metric, ratio, step = _checkpoints(np.random.default_rng(123), 200_000, beyond)
    return float(rank_stats(metric, ratio, step)["partial_rho"])


def test_a_metric_that_depends_on_step_alone_has_a_large_raw_rho_and_a_partial_rho_near_zero():
    metric, ratio, step = _checkpoints(np.random.default_rng(0), 60, beyond=0.0)
    out = correlations_with_ci(metric, ratio, step, n_boot=2000, seed=0)
    assert out["rho_ratio"] < -0.6 and out["rho_step"] < -0.75  # what the old report read causally
    assert abs(out["partial_rho"]) < 0.2 and out["partial_rho_low"] < 0 < out["partial_rho_high"]
    assert abs(_truth(0.0)) < 0.01


def test_a_metric_that_follows_the_ratio_beyond_step_has_a_clearly_nonzero_partial_rho():
    metric, ratio, step = _checkpoints(np.random.default_rng(1), 60, beyond=1.5)
    out = correlations_with_ci(metric, ratio, step, n_boot=2000, seed=0)
    assert out["partial_rho_low"] > 0.3, out
    assert out["partial_rho_low"] < _truth(1.5) < out["partial_rho_high"]


@pytest.mark.parametrize("beyond", [0.0, 1.0])
def test_bootstrap_intervals_cover_the_true_partial_rho(beyond):
    truth, rng, covered, trials = _truth(beyond), np.random.default_rng(7), 0, 200
    for trial in range(trials):
        out = correlations_with_ci(*_checkpoints(rng, 40, beyond), n_boot=400, seed=trial)
        covered += out["partial_rho_low"] <= truth <= out["partial_rho_high"]
    assert covered / trials >= 0.88, (covered, trials, truth)  # nominal 0.95; percentile intervals at n = 40


def test_undefined_statistics_are_nan_and_bad_input_is_refused():
    out = correlations_with_ci(np.ones(8), np.arange(8.0), np.arange(8.0), n_boot=50)
    assert np.isnan(out["rho_ratio"]) and np.isnan(out["partial_rho"]) and np.isnan(out["partial_rho_low"])
    with pytest.raises(ValueError, match="one value per checkpoint; got 3, 4, 4"):
        correlations_with_ci(np.ones(3), np.ones(4), np.ones(4))
