"""The partial ρ beyond a smooth trend in log step: known answers from closed forms, scipy and hand
computation, and its error rates on synthetic worlds with known truth (the full calibration is
bench/inference_calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.linalg import toeplitz
from scipy.stats import norm, pearsonr, rankdata, spearmanr
from scipy.stats import t as student_t
from statsmodels.tsa.arima_process import arma_acf

from massive_activations.evals.rank_stats import (
    MIN_CHECKPOINTS,
    TREND_DF,
    correlation_test,
    correlations_with_ci,
    effective_n,
    fdr,
    pooled_p,
    projected_n_eff,
    residual,
    residual_acf,
    trend_basis,
)


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    out = np.empty(n)
    out[0] = rng.normal()
    for i in range(1, n):
        out[i] = phi * out[i - 1] + np.sqrt(1 - phi * phi) * rng.normal()
    return out


def _world(rng: np.random.Generator, n: int, planted: float, phi: float = 0.0):
    """Ratio and metric share a trend in log step that rises and then falls, plus AR(1) noise of their
    own; the metric's noise carries ``planted`` × the ratio's (a partial correlation beyond the step)."""
    step = np.geomspace(16, 143_000, n)
    x = np.log(step / 16) / np.log(143_000 / 16)
    peak = np.exp(-0.5 * ((x - 0.6) / 0.2) ** 2)
    own_ratio, own_metric = _ar1(rng, n, phi), _ar1(rng, n, phi)
    return (-3 * peak + planted * own_ratio + np.sqrt(1 - planted**2) * own_metric, 4 * peak + own_ratio, step)


def _flag_rate(n: int, planted: float, phi: float, reps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    return float(np.mean([correlations_with_ci(*_world(rng, n, planted, phi))["partial_rho_p"] < 0.05
                          for _ in range(reps)]))


def test_below_the_floor_the_partial_rho_abstains_with_a_reason():
    rng = np.random.default_rng(4)
    short = correlations_with_ci(*_world(rng, MIN_CHECKPOINTS - 1, 0.7))
    assert all(np.isnan(short[f"partial_rho{e}"]) for e in ("", "_low", "_high", "_p"))
    assert np.isnan(short["diff_rho"]) and "fewer than 20 checkpoints" in short["reason"]
    assert np.isfinite(short["rho_ratio"])  # the raw ρ is still reported
    enough = correlations_with_ci(*_world(rng, MIN_CHECKPOINTS, 0.7))
    assert np.isfinite(enough["partial_rho"]) and enough["reason"] == ""


def test_the_trend_basis_reproduces_any_natural_cubic_spline_on_its_knots():
    step = np.geomspace(16, 143_000, 30)
    x = np.log1p(step)
    basis = trend_basis(step)
    assert basis.shape == (30, TREND_DF + 1)
    knots = np.quantile(x, np.linspace(0, 1, TREND_DF + 1))
    curve = CubicSpline(knots, [3.0, -1.0, 4.0, 1.0, -5.0, 2.0, 0.5][: TREND_DF + 1], bc_type="natural")(x)
    assert np.abs(residual(curve + 7.0, basis)).max() < 1e-9  # intercept and curve in the span
    assert np.abs(residual(2.0 * x, basis)).max() < 1e-9  # a line in log step too
    assert np.abs(residual(np.sin(3 * x), basis)).max() > 0.05  # but not everything


def _natural_spline_by_hand(x: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The truncated-power basis of a natural cubic spline (Hastie, Tibshirani & Friedman, ESL eq. 5.4-5.5):
    1, x and d_k(x) - d_{K-1}(x), d_k = ((x - ξ_k)³₊ - (x - ξ_K)³₊) / (ξ_K - ξ_k). No CubicSpline in it."""
    def d(k):
        return (np.clip(x - knots[k], 0, None) ** 3 - np.clip(x - knots[-1], 0, None) ** 3) / (knots[-1] - knots[k])
    return np.column_stack([np.ones_like(x), x] + [d(k) - d(len(knots) - 2) for k in range(len(knots) - 2)])


def test_the_trend_removed_has_the_six_degrees_of_freedom_the_calibration_measured():
    """bench/inference_calibration.py measured the error rates with a 6-df spline (7 knots at the
    sixths of log step): a ratio that is any such spline, built by hand, is all trend; with 5 or 7
    degrees of freedom (other knots) something would be left of it."""
    rng = np.random.default_rng(4)
    step = np.geomspace(16, 143_000, 30)
    x = np.log1p(step)
    ratio = _natural_spline_by_hand(x, np.quantile(x, np.linspace(0, 1, 7))) @ np.array(
        [2.0, 0.3, -1.0, 4.0, 0.5, -2.0, 1.5])
    out = correlations_with_ci(rng.normal(size=30), ratio, step)
    assert out["reason"].startswith("the ratio is constant or a smooth function of log step"), out["reason"]
    assert np.isnan(out["partial_rho"])


def test_the_partial_rho_on_uneven_steps_is_the_correlation_of_spline_residuals_by_hand():
    """Irregular checkpoints (doubling early, uneven gaps late, unsorted): the partial ρ equals scipy's
    Pearson correlation of the two series' residuals on a natural spline built by hand in
    log(1 + step), knots at quantiles (not their Spearman ρ, 0.11 against 0.08 here)."""
    rng = np.random.default_rng(11)
    step = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 700, 1000, 1500, 3000, 4000, 9000, 13000,
                     20000, 33000, 64000, 71000, 100000, 143000], dtype=float)
    x = np.log1p(step)
    trend = np.sin(x / 2.0) * 10
    metric, ratio = trend + rng.normal(size=x.size), 3 * trend + 0.5 * x + rng.normal(size=x.size)
    knots = np.quantile(x, np.linspace(0, 1, TREND_DF + 1))
    basis = _natural_spline_by_hand(x, knots)
    def left(y):
        return y - basis @ np.linalg.lstsq(basis, y, rcond=None)[0]
    expected = pearsonr(left(metric), left(ratio)).statistic
    shuffled = rng.permutation(x.size)
    got = correlations_with_ci(metric[shuffled], ratio[shuffled], step[shuffled])
    assert got["partial_rho"] == pytest.approx(expected, abs=1e-12)
    assert abs(expected - spearmanr(left(metric), left(ratio)).statistic) > 0.01
    assert abs(expected - spearmanr(metric, ratio).statistic) > 0.3  # the trend mattered here


def _bartlett_by_hand(a: np.ndarray, b: np.ndarray, covariates: int) -> float:
    """n − covariates over 1 + 2·Σ (1 − k/(L + 1))·r_a(k)·r_b(k), k = 1..L, L = n // 3 − 1 (at least 1)."""
    n = len(a)
    a, b = a - a.mean(), b - b.mean()
    top = max(1, n // 3 - 1)
    def r(v, k):
        return float(np.dot(v[: n - k], v[k:]) / np.dot(v, v))
    return (n - covariates) / max(1.0, 1 + 2 * sum((1 - k / (top + 1)) * r(a, k) * r(b, k)
                                                   for k in range(1, top + 1)))


def test_effective_n_is_bartletts_formula():
    rng = np.random.default_rng(5)
    a, b = _ar1(rng, 30, 0.8), _ar1(rng, 30, 0.8)
    assert effective_n(a, b, 5) == pytest.approx(_bartlett_by_hand(a, b, 5), rel=1e-12)
    assert effective_n(a, b, 5) < 20  # strongly autocorrelated: fewer than the 25 left
    white = rng.normal(size=(2, 30))
    assert effective_n(*white, 0) <= 30
    short = np.array([0.0, 1.0, 3.0, 2.0, 5.0]), np.array([1.0, 0.0, 2.0, 4.0, 3.0])  # one lag below 6 points
    assert effective_n(*short, 1) == pytest.approx(_bartlett_by_hand(*short, 1), rel=1e-12)
    assert effective_n(*short, 4) == pytest.approx(_bartlett_by_hand(*short, 4), rel=1e-12)  # n − p = 1
    zero_one = np.array([0.0, 1.0, 1.0, 0.0] * 5)  # a range of exactly 1 is a series, not a constant
    assert effective_n(zero_one, white[0, :20], 1) == pytest.approx(_bartlett_by_hand(zero_one, white[0, :20], 1))
    alternating, smooth = np.array([1.0, -1.0] * 10), np.sin(np.linspace(0, 3, 20))
    assert effective_n(alternating, smooth, 1) == 19  # opposite autocorrelations: never above n − covariates


def _projected_by_hand(acf_a: np.ndarray, acf_b: np.ndarray, basis: np.ndarray) -> float:
    """1 + 1/Var₀(r), Var₀(r) = tr(M_a M_b)/(tr M_a · tr M_b), M = P Σ P, with P = I − QQ′ from a QR
    factorisation of the basis; at most n − q."""
    q, _ = np.linalg.qr(basis)
    proj = np.eye(len(basis)) - q @ q.T
    ma, mb = proj @ toeplitz(acf_a) @ proj, proj @ toeplitz(acf_b) @ proj
    return min(1 + np.trace(ma) * np.trace(mb) / np.trace(ma @ mb), len(basis) - basis.shape[1] + 1)


def test_the_partial_rhos_effective_n_is_the_variance_of_a_residual_correlation_with_no_association():
    """By hand for AR(1) and AR(2) autocorrelations (statsmodels' arma_acf); n − q for white noise, the
    exact test's; and against simulation, the variance of the correlation of two independent series,
    each less its spline fit, over 20,000 draws: exact for white noise, a little high (conservative)
    for AR(1) noise, ~20% high for smooth AR(2) noise, as Dutilleul's modified t test is known to be."""
    step = np.geomspace(16, 143_000, 24)
    basis = trend_basis(step)
    smooth, ar1 = arma_acf([1, -1.2, 0.4], [1], 24), arma_acf([1, -0.8], [1], 24)
    white = np.r_[1.0, np.zeros(23)]
    assert projected_n_eff(smooth, ar1, basis) == pytest.approx(_projected_by_hand(smooth, ar1, basis), rel=1e-10)
    assert projected_n_eff(smooth, white, basis) == pytest.approx(_projected_by_hand(smooth, white, basis), rel=1e-10)
    assert projected_n_eff(white, white, basis) == pytest.approx(24 - TREND_DF, rel=1e-10)
    alternating = arma_acf([1, 0.8], [1], 24)  # opposite to ar1: 1 + 1/Var₀ is 28.7, above n − q
    assert _projected_by_hand(alternating, ar1, basis) == projected_n_eff(alternating, ar1, basis) == 24 - TREND_DF
    rng = np.random.default_rng(21)
    for acf_, low, high in ((white, 0.97, 1.03), (ar1, 1.0, 1.12), (smooth, 1.1, 1.3)):
        chol = np.linalg.cholesky(toeplitz(acf_))
        draws = np.einsum("ij,jkl->ikl", chol, rng.normal(size=(24, 2, 20_000)))
        a, b = (residual(draws[:, i, :], basis) for i in (0, 1))
        simulated = ((a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))).var()
        assert low <= 1 / (projected_n_eff(acf_, acf_, basis) - 1) / simulated <= high  # MC sd ~1%


def test_the_noises_autocorrelation_is_recovered_through_the_trend_fit():
    """On long series less their spline fit, the fitted autocorrelations are the process's (arma_acf):
    smooth AR(2) noise (the mean over 8 series of 600 points) and AR(1) noise with φ = −0.6 (over 4).
    On 24 checkpoints the fit is pulled far less than the residuals' own: AR(1) noise with φ = 0.8
    leaves residuals whose lag-1 autocorrelation averages below 0."""
    rng = np.random.default_rng(22)
    long_basis = trend_basis(np.geomspace(16, 143_000, 600))
    chol = np.linalg.cholesky(toeplitz(arma_acf([1, -1.2, 0.4], [1], 600)))
    fitted = np.mean([residual_acf(residual(chol @ rng.normal(size=600), long_basis), long_basis)[:4]
                      for _ in range(8)], axis=0)
    assert fitted[1:] == pytest.approx(arma_acf([1, -1.2, 0.4], [1], 4)[1:], abs=0.03)
    alternating = np.linalg.cholesky(toeplitz(arma_acf([1, 0.6], [1], 600)))  # φ = −0.6
    fitted = np.mean([residual_acf(residual(alternating @ rng.normal(size=600), long_basis), long_basis)[:4]
                      for _ in range(4)], axis=0)
    assert fitted[1:] == pytest.approx(arma_acf([1, 0.6], [1], 4)[1:], abs=0.04)
    basis = trend_basis(np.geomspace(16, 143_000, 24))
    left = [residual(_ar1(rng, 24, 0.8), basis) for _ in range(200)]
    raw = np.mean([np.corrcoef(e[:-1], e[1:])[0, 1] for e in left])
    assert raw < 0.0 < 0.3 < np.mean([residual_acf(e, basis)[1] for e in left])


def test_every_fitted_noise_model_is_stationary():
    """Whatever the series (white, smooth, alternating, periodic with period 2 or 4, a jump), the
    noise model fitted to it is a stationary one: |ρ_k| ≤ 1 and a positive definite Toeplitz matrix."""
    rng = np.random.default_rng(24)
    basis = trend_basis(np.geomspace(16, 143_000, 30))
    t = np.arange(30)
    for y in (rng.normal(size=30), np.cumsum(rng.normal(size=30)), (-1.0) ** t + 0.1 * rng.normal(size=30),
              np.sin(np.pi * t / 2) + 0.1 * rng.normal(size=30), np.cos(np.pi * t / 2), (t > 14).astype(float)):
        fitted = residual_acf(residual(y, basis), basis)
        assert fitted[0] == 1.0 and np.all(np.abs(fitted) <= 1.0)
        assert np.linalg.eigvalsh(toeplitz(fitted)).min() > 0


def test_the_interval_and_p_value_are_fishers_z_and_the_t_test():
    low, high, p = correlation_test(0.5, 30.0, 0.95)
    half = norm.ppf(0.975) / np.sqrt(27)
    assert (low, high) == pytest.approx((np.tanh(np.arctanh(0.5) - half), np.tanh(np.arctanh(0.5) + half)))
    assert p == pytest.approx(2 * student_t.sf(0.5 * np.sqrt(28 / 0.75), 28))
    rng = np.random.default_rng(6)  # independent pairs: the t test is scipy's Pearson test
    a = rng.normal(size=25)
    b = 0.4 * a + rng.normal(size=25)
    r, p_scipy = pearsonr(a, b)
    assert correlation_test(float(r), 25.0, 0.95)[2] == pytest.approx(p_scipy, rel=1e-9)
    assert correlation_test(0.5, 3.0, 0.95) == pytest.approx((np.nan,) * 3, nan_ok=True)
    assert correlation_test(0.5, 2.5, 0.95) == pytest.approx((np.nan,) * 3, nan_ok=True)
    half = norm.ppf(0.975) / np.sqrt(0.5)  # just above 3 effective pairs there is an interval
    assert correlation_test(0.5, 3.5, 0.95)[:2] == pytest.approx(
        (np.tanh(np.arctanh(0.5) - half), np.tanh(np.arctanh(0.5) + half)))
    assert correlation_test(-1.0, 10.0, 0.95) == (-1.0, -1.0, 0.0)


def test_the_raw_rho_is_spearmans_with_an_autocorrelation_aware_p_value():
    rng = np.random.default_rng(7)
    metric, ratio, step = _world(rng, 30, 0.5)
    out = correlations_with_ci(metric, ratio, step)
    assert out["rho_ratio"] == pytest.approx(pearsonr(rankdata(metric), rankdata(ratio))[0])
    n_eff = _bartlett_by_hand(rankdata(metric), rankdata(ratio), 0)
    assert out["rho_ratio_n_eff"] == pytest.approx(n_eff)
    assert out["rho_ratio_p"] == pytest.approx(correlation_test(out["rho_ratio"], n_eff, 0.95)[2])


def test_each_effective_n_spends_its_own_degrees_of_freedom():
    """ρ with the ratio and with the step partial out nothing but the mean, the first differences too,
    the partial ρ the spline's TREND_DF columns besides its intercept: the first three are Bartlett's on
    their own pair of series, the partial ρ's is the projected variance through the spline, by hand."""
    rng = np.random.default_rng(11)
    metric, ratio, step = _world(rng, 26, 0.5, 0.5)
    out = correlations_with_ci(metric, ratio, step)
    rm, rs = rankdata(metric), rankdata(step)
    assert out["rho_step_n_eff"] == pytest.approx(_bartlett_by_hand(rm, rs, 0))
    assert out["diff_rho_n_eff"] == pytest.approx(
        _bartlett_by_hand(rankdata(np.diff(metric)), rankdata(np.diff(ratio)), 0))
    basis = trend_basis(step)
    def beyond(y):
        return y - basis @ np.linalg.lstsq(basis, y, rcond=None)[0]
    em, er = beyond(metric), beyond(ratio)
    assert out["partial_rho_n_eff"] == pytest.approx(
        _projected_by_hand(residual_acf(em, basis), residual_acf(er, basis), basis))
    assert out["partial_rho"] == pytest.approx(pearsonr(beyond(metric), beyond(ratio))[0])


def test_checkpoints_in_any_order_give_the_same_answer():
    rng = np.random.default_rng(8)
    metric, ratio, step = _world(rng, 25, 0.5, 0.5)
    order = rng.permutation(25)
    a, b = correlations_with_ci(metric, ratio, step), correlations_with_ci(metric[order], ratio[order], step[order])
    assert a["reason"] == b["reason"] == ""
    assert {k: v for k, v in a.items() if k != "reason"} == pytest.approx(
        {k: v for k, v in b.items() if k != "reason"})


def test_fdr_and_the_pooled_test_by_hand():
    """p = 0.01, 0.04, 0.03, 0.2 (and one abstention): BH q = min over j ≥ i of m·p_(j)/j with m = 4."""
    q = fdr([0.01, 0.04, 0.03, float("nan"), 0.2])
    assert q[:3] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3]) and np.isnan(q[3]) and q[4] == pytest.approx(0.2)
    assert pooled_p([0.01, 0.04, 0.03, float("nan"), 0.2]) == pytest.approx(0.04)  # Simes: min 4·p_(i)/i
    assert np.isnan(pooled_p([float("nan")]))


def test_bad_input_is_refused():
    for sizes in ((3, 4, 4), (5, 4, 4), (4, 3, 4), (4, 4, 3), (4, 4, 5)):
        with pytest.raises(ValueError, match="one value per checkpoint; got {}, {}, {}".format(*sizes)):
            correlations_with_ci(*(np.arange(float(k)) for k in sizes))
    with pytest.raises(ValueError, match=r"steps must be distinct, one per checkpoint; got \[0.0, 0.0, 1.0"):
        correlations_with_ci(np.arange(20.0), np.arange(20.0), np.r_[0.0, np.arange(19.0)])
    with pytest.raises(ValueError, match="finite"):
        correlations_with_ci(np.array([1.0, np.nan] * 10), np.arange(20.0), np.arange(20.0))
    assert np.isfinite(correlations_with_ci(np.arange(4.0), np.arange(4.0)[::-1], np.arange(4.0),
                                            n_boot=1)["rho_ratio"])  # n_boot = 1 is allowed (it is not used)
    for n_boot, level in ((1000, 1.5), (1000, 1.0), (1000, 0.0), (1000, -0.5), (0, 0.95)):
        with pytest.raises(ValueError, match=f"0 < level < 1, got {n_boot}, {level}"):
            correlations_with_ci(np.ones(4), np.ones(4), np.ones(4), n_boot=n_boot, level=level)


def test_the_answer_does_not_depend_on_the_metrics_scale():
    """A metric of order 1e-6 (a loss difference) or 1e6 (a ratio) is the same series: same statistics."""
    rng = np.random.default_rng(10)
    metric, ratio, step = _world(rng, 24, 0.6)
    base = correlations_with_ci(metric, ratio, step)
    for scale in (1e-6, 1e6):
        scaled = correlations_with_ci(metric * scale, ratio / scale, step)
        assert scaled["reason"] == base["reason"] == ""
        assert {k: v for k, v in scaled.items() if k != "reason"} == pytest.approx(
            {k: v for k, v in base.items() if k != "reason"})


def test_a_constant_series_or_a_pure_time_trend_gives_nan_not_a_number():
    out = correlations_with_ci(np.ones(24), np.arange(24.0), np.arange(24.0))
    assert np.isnan(out["rho_ratio"]) and np.isnan(out["partial_rho"]) and np.isnan(out["partial_rho_low"])
    assert out["reason"].startswith("the metric is constant or a smooth function of log step")
    zeros = correlations_with_ci(np.zeros(24), np.arange(24.0), np.arange(24.0))  # a metric that never moves
    assert zeros["reason"].startswith("the metric is constant") and np.isnan(zeros["partial_rho"])
    rng = np.random.default_rng(9)
    step = np.geomspace(16, 143_000, 24)
    out = correlations_with_ci(rng.normal(size=24), 3 + 2 * np.log1p(step), step)  # the ratio is all trend
    assert np.isnan(out["partial_rho"]) and np.isnan(out["diff_rho"]) and out["reason"].startswith("the ratio is")
    assert np.isfinite(out["rho_ratio"])
    both = correlations_with_ci(np.log1p(step), 3 + 2 * np.log1p(step), step)
    assert both["reason"].startswith("the metric and the ratio are constant or a smooth function of log step")


# The error rates on synthetic worlds: slower (hundreds of replicates), so last (``pytest -x`` in the
# mutation runs stops at the fast known answers first).


def test_a_shared_trend_that_rises_then_falls_is_not_an_association():
    """The old partial ρ (a line in rank(step)) flagged this null world in ~100% of replicates."""
    assert _flag_rate(24, 0.0, 0.0, reps=200, seed=0) <= 0.09  # nominal 0.05; binomial sd 0.015


def test_autocorrelated_noise_does_not_inflate_false_positives():
    assert _flag_rate(24, 0.0, 0.8, reps=200, seed=1) <= 0.09


def test_noise_that_is_not_ar1_does_not_inflate_false_positives():
    """Smooth AR(2) noise (φ = 1.2, −0.4: autocorrelations 0.86, 0.63, 0.41, …) at 37 checkpoints:
    Bartlett's sum over the ranked residuals flagged ~10% of these null worlds, an AR(1) fitted
    through the spline ~13%."""
    rng = np.random.default_rng(23)
    step = np.geomspace(16, 143_000, 37)
    x = np.log(step / 16) / np.log(143_000 / 16)
    peak = np.exp(-0.5 * ((x - 0.6) / 0.2) ** 2)
    chol = np.linalg.cholesky(toeplitz(arma_acf([1, -1.2, 0.4], [1], 37)))
    flags = [correlations_with_ci(-3 * peak + chol @ rng.normal(size=37), 4 * peak + chol @ rng.normal(size=37),
                                  step)["partial_rho_p"] < 0.05 for _ in range(400)]
    assert np.mean(flags) <= 0.08  # nominal 0.05; binomial sd 0.011


def test_a_planted_association_beyond_the_trend_is_found():
    assert _flag_rate(37, 0.7, 0.0, reps=100, seed=2) >= 0.85


def test_null_intervals_cover_zero():
    rng = np.random.default_rng(3)
    outs = [correlations_with_ci(*_world(rng, 24, 0.0, 0.5)) for _ in range(200)]
    assert np.mean([o["partial_rho_low"] <= 0 <= o["partial_rho_high"] for o in outs]) >= 0.91


def test_planted_intervals_cover_the_truth_when_trend_and_noise_are_both_smooth():
    """A peaked shared trend and AR(1) noise with φ = 0.95: the truth is the correlation of the two
    series' noises, 0.7 by construction. With a 4-df spline the trend's misfit, shared by both series,
    pulled the partial ρ down and the interval covered the truth 0.74 of the time."""
    truth = 0.7
    rng = np.random.default_rng(12)
    outs = [correlations_with_ci(*_world(rng, 24, 0.7, 0.95)) for _ in range(200)]
    assert np.mean([o["partial_rho_low"] <= truth <= o["partial_rho_high"] for o in outs]) >= 0.88
