"""The emergence fit against known answers: synthetic series from known parameters, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import signal

from massive_activations.fit.emergence import (
    AMPLITUDE_SCALE,
    DECAY,
    DIP,
    EARLY_PEAK,
    LAM_MAX,
    LOG_INCREASE,
    PARAMS,
    SCALE_MAX,
    SeriesError,
    check_series,
    classify,
    descriptors,
    emergence,
    emergence_jacobian,
    fit_emergence,
    identification,
    peak_step,
    step2_decay,
)
from massive_activations.sources.catalog import PYTHIA_STEPS

T = np.array(PYTHIA_STEPS, dtype=float)
# Regimes: λ from 0 (pure log) to large; γ·t_max from ~4 to ~70; t0 near and above 1; the curve's
# own swing M of 100 or 1000 above an offset K (ratios in Pythia rise by hundreds to thousands).
GRID = list(itertools.product([100, 1000], [0.0, 0.02, 0.1, 0.3, 1.0, 2.0], [3e-5, 1.1e-4, 5e-4],
                              [1.05, 2.0], [5.0]))
K_TOL = 0.05  # |K − K_true| within 5% of the curve's range, where the data show the asymptote
T_PEAK_TOL = 0.15  # relative error of t_peak, for peaks between 2% and 80% of the run


def _synthetic(swing, lam, gamma, t0, k, seed):
    amplitude = swing / np.abs(emergence(T, 1.0, lam, gamma, t0, 0.0)).max()
    clean = emergence(T, amplitude, lam, gamma, t0, k)
    noisy = clean * (1 + 0.03 * np.random.default_rng(seed).standard_normal(T.size))
    return clean, noisy


@pytest.mark.parametrize("case", range(len(GRID)))
def test_parameter_recovery(case):
    swing, lam, gamma, t0, k = GRID[case]
    clean, noisy = _synthetic(swing, lam, gamma, t0, k, seed=case)
    fit = fit_emergence(T, noisy, alternatives=False)
    pred = fit.predict(T)
    assert 1 - np.sum((pred - clean) ** 2) / np.sum((clean - clean.mean()) ** 2) >= 0.995  # README's claim
    assert fit.lam >= 0 and fit.gamma > 0 and fit.t0 > 0
    if math.exp(-lam * gamma * T.max()) < 0.1:  # decayed within the run: K is identifiable
        assert abs(fit.K - k) <= K_TOL * np.ptp(clean)
    true_peak = peak_step(lam, gamma, t0)
    if 0.02 * T.max() < true_peak < 0.8 * T.max():
        assert abs(fit.t_peak - true_peak) <= T_PEAK_TOL * true_peak
        assert fit.peak_class == EARLY_PEAK
    if lam == 0.0:
        assert fit.peak_class == LOG_INCREASE
    # the descriptors hold whatever the parameterisation: compare with the noise-free curve's own
    assert fit.y_last == pytest.approx(clean[-1], abs=0.05 * np.ptp(clean))  # 3% noise on each point
    assert fit.rise == pytest.approx(np.ptp(clean), rel=0.1)


# (A, λ, γ, t0, K, class): a maximum inside the run, a pure log, a maximum before the first step
# (t0 beyond x* = exp(W(1/λ)) ≈ 1.76 for λ = 1), and a minimum (A < 0) inside the run.
CLASS_CASES = [(500.0, 0.3, 1.1e-4, 1.5, 50.0, EARLY_PEAK), (80.0, 0.0, 1.1e-4, 1.5, 5.0, LOG_INCREASE),
               (500.0, 1.0, 1e-4, 3.0, 50.0, DECAY), (-500.0, 0.3, 1.1e-4, 1.5, 500.0, DIP)]


@pytest.mark.parametrize("A, lam, gamma, t0, K, expected", CLASS_CASES)  # noqa: N803
def test_peak_classes_of_known_curves(A, lam, gamma, t0, K, expected):  # noqa: N803
    assert classify(A, lam, peak_step(lam, gamma, t0), T) == expected
    noisy = emergence(T, A, lam, gamma, t0, K) * (1 + 0.01 * np.random.default_rng(0).standard_normal(T.size))
    fit = fit_emergence(T, noisy, alternatives=False)
    assert fit.peak_class == expected
    assert math.isfinite(fit.t_peak) == (expected == EARLY_PEAK)  # t_peak only for a peak inside the run
    if expected == DECAY:
        assert fit.t_stationary < 0 and fit.y_first > fit.y_last
    if expected in (EARLY_PEAK, DIP):  # a stationary point inside the run, 1% noise: identified here
        assert fit.identified, fit.identification
        assert fit.K_identified == pytest.approx(K, abs=0.05 * np.ptp(noisy))


def test_a_ridge_fit_is_flagged_and_its_descriptors_still_hold():
    """A saturating rise from a dip at the start, made with A = −2e18 and λ = 32 (offline-suite layers
    fit so). Only A·exp(−λ·t0) is set by the data: the fit lands elsewhere on that ridge (A ≈ −5700,
    λ ≈ 1.4 with this noise), with standard errors larger than A, λ and γ themselves, so the raw
    parameters are flagged as not identified; the fitted curve's value at the last step, its rise and
    t_half still match the curve that made the data."""
    A, lam, gamma, t0, K = -2e18, 32.0, 2e-4, 1.03, 400.0  # noqa: N806 - rises from ~113 to 400
    clean = emergence(T, A, lam, gamma, t0, K)
    noisy = clean * (1 + 0.01 * np.random.default_rng(3).standard_normal(T.size))
    fit = fit_emergence(T, noisy, alternatives=False)
    assert not fit.identified
    assert {"SE of A larger than A", "SE of lam larger than lam"} <= set(fit.identification.split("; "))
    assert math.isnan(fit.K_identified)
    assert fit.y_last == pytest.approx(clean[-1], rel=0.02)
    assert fit.rise == pytest.approx(np.ptp(clean), rel=0.05)
    dense = np.linspace(0, T.max(), 143001)
    curve = emergence(dense, A, lam, gamma, t0, K)
    true_half = dense[np.argmax(np.abs(curve - curve[0]) >= np.ptp(curve) / 2)]
    assert fit.t_half == pytest.approx(true_half, rel=0.1)


TMAX, RANGE = 143_000.0, 100.0
GOOD = {"A": 10.0, "lam": 0.5, "gamma": 1e-4, "t0": 1.5, "K": 3.0}  # γ·t_max = 14.3, |A| ≪ 10⁴ × range


@pytest.mark.parametrize("change, expected", [
    ({}, []),
    ({"lam": 0.95 * LAM_MAX}, ["λ = 47.5 at its bound 50"]),  # within 5% of the bound: flagged
    ({"lam": 0.949 * LAM_MAX}, []),
    ({"gamma": 0.95 * SCALE_MAX / TMAX}, ["γ·t_max or t0 at its bound"]),
    ({"gamma": 0.949 * SCALE_MAX / TMAX}, []),
    ({"gamma": SCALE_MAX / TMAX}, ["γ·t_max or t0 at its bound"]),  # at the bound itself too
    ({"t0": SCALE_MAX}, ["γ·t_max or t0 at its bound"]),
    ({"t0": 0.95 * SCALE_MAX}, ["γ·t_max or t0 at its bound"]),
    ({"t0": 0.949 * SCALE_MAX}, []),
    ({"A": AMPLITUDE_SCALE * RANGE * 1.001}, ["|A| = 1e+06 beyond 10000 × the data's range"]),
    ({"A": -AMPLITUDE_SCALE * RANGE * 1.001}, ["|A| = 1e+06 beyond 10000 × the data's range"]),
    ({"A": AMPLITUDE_SCALE * RANGE}, []),  # exactly at the scale: not beyond it
    ({"se_A": 10.0}, []),  # an error as large as the value: still identified
    ({"se_A": 10.001}, ["SE of A larger than A"]),
    ({"se_lam": 0.51}, ["SE of lam larger than lam"]),
    ({"se_gamma": float("nan")}, ["SE of gamma larger than gamma"]),  # no error at all: not identified
    ({"se_t0": float("inf")}, ["SE of t0 larger than t0"]),
    ({"lam": 0.0, "se_lam": 1.0}, []),  # λ = 0 is the pure-log boundary, not a ridge
    ({"lam": -0.1, "se_lam": 1.0}, []),  # (as is any λ ≤ 0 a caller passes)
    ({"t0": 0.0, "se_t0": 0.1}, ["SE of t0 larger than t0"]),  # only λ is exempt at 0
    ({"lam": 0.0, "se_lam": 1.0, "se_gamma": 1.0}, ["SE of gamma larger than gamma"]),  # and the rest still judged
    ({"se_K": 1e9}, []),  # K is judged by the descriptors, not its error
    ({"lam": 49.0, "A": -2e18, "se_t0": 2.0}, ["λ = 49 at its bound 50", "|A| = 2e+18 beyond 10000 × the data's range",
                                                 "SE of t0 larger than t0"]),
])
def test_each_identification_reason_fires_exactly_at_its_rule(change, expected):
    """Each reason of ``identification`` on parameters built to sit just on either side of its rule."""
    values = {**GOOD, **{k: v for k, v in change.items() if not k.startswith("se_")}}
    se = {name: 0.1 * abs(values[name]) for name in PARAMS} | {k[3:]: v for k, v in change.items()
                                                                if k.startswith("se_")}
    assert identification(tuple(values[n] for n in PARAMS), se, RANGE, TMAX) == expected


def test_a_flat_series_is_judged_against_a_floor_not_a_zero_range():
    """A constant series has range 0: |A| is compared with 10⁴ × 1e-12, so any real amplitude is flagged."""
    se = dict.fromkeys(PARAMS, 1e-12)
    assert identification((1e-7, 0.5, 1e-4, 1.5, 3.0), se, 0.0, TMAX) == ["|A| = 1e-07 beyond 10000 × the data's range"]
    assert identification((1e-9, 0.5, 1e-4, 1.5, 3.0), se, 0.0, TMAX) == []


def test_the_boundaries_of_the_classes_and_descriptors():
    """A = 0 is a (flat) maximum, not a dip; a flat or undefined curve has no t_half; K is only
    identified for a curve that decays (λ > 0); a λ too small to compute never peaks."""
    inside = 1000.0
    assert classify(0.0, 0.3, inside, T) == EARLY_PEAK
    assert classify(-0.5, 0.3, inside, T) == DIP
    assert classify(100.0, -0.5, inside, T) == classify(100.0, 0.0, inside, T) == LOG_INCREASE  # λ ≤ 0 never turns
    assert classify(100.0, 0.3, T.max(), T) == classify(100.0, 0.3, T.min(), T) == EARLY_PEAK  # the ends count
    assert peak_step(-0.1, 1e-4, 1.5) == math.inf
    flat = descriptors((0.0, 0.3, 1e-4, 1.5, 5.0), T, EARLY_PEAK, inside, True)
    assert flat["rise"] == 0 and math.isnan(flat["t_half"])
    assert math.isnan(descriptors((math.nan, 0.3, 1e-4, 1.5, 5.0), T, EARLY_PEAK, inside, True)["t_half"])
    pure_log = descriptors((80.0, 0.0, 1.1e-4, 1.5, 5.0), T, LOG_INCREASE, math.inf, True)
    assert math.isnan(pure_log["K_identified"]) and math.isnan(pure_log["peak_value"])
    assert math.isnan(pure_log["t_peak"])
    assert math.isnan(descriptors((80.0, -0.1, 1.1e-4, 1.5, 5.0), T, LOG_INCREASE, math.inf, True)["K_identified"])
    small = descriptors((0.01, 0.3, 1.1e-4, 1.5, 5.0), T, EARLY_PEAK, inside, True)  # a rise well below 1
    assert 0 < small["rise"] < 1 and 0 < small["t_half"] < T.max()
    peaked = descriptors((500.0, 0.3, 1.1e-4, 1.5, 50.0), T, EARLY_PEAK, inside, True)
    assert peaked["t_peak"] == inside
    assert peaked["peak_value"] == emergence(np.array([inside]), 500.0, 0.3, 1.1e-4, 1.5, 50.0)[0]
    assert descriptors((500.0, 0.3, 1.1e-4, 1.5, 50.0), T, EARLY_PEAK, inside, True)["K_identified"] == 50.0
    assert peak_step(1e-300, 1e-4, 1.5) == math.inf
    params = (500.0, 0.3, 1.1e-4, 1.5, 50.0)
    ends = descriptors(params, T, EARLY_PEAK, inside, True)
    assert (ends["y_first"], ends["y_last"]) == tuple(emergence(T[[0, -1]], *params))  # at the first and last step


def test_t_half_resolves_an_onset_between_the_first_checkpoints():
    """A curve that moves half its rise between steps 1 and 2: t_half on the log grid, within 1% of the
    crossing found by brute force."""
    params = (100.0, 0.3, 0.3, 1.0, 0.0)  # 0 at step 0, a peak near step 7.7, then back towards 0
    dense = np.linspace(0, 50, 5_000_001)
    f = emergence(dense, *params)
    crossing = dense[np.argmax(f >= f.max() / 2)]
    assert 1 < crossing < 2
    got = descriptors(params, T, EARLY_PEAK, peak_step(0.3, 0.3, 1.0), True)["t_half"]
    assert got == pytest.approx(crossing, rel=0.01)


def test_peak_formula():
    lam, gamma, t0 = 0.3, 1e-4, 1.5
    t_peak = peak_step(lam, gamma, t0)
    x = gamma * t_peak + t0
    assert lam * x * math.log(x) == pytest.approx(1.0)
    dense = np.linspace(0, 143000, 200001)
    assert dense[np.argmax(emergence(dense, 1.0, lam, gamma, t0, 0.0))] == pytest.approx(t_peak, abs=1)
    assert peak_step(0.0, gamma, t0) == math.inf


def test_jacobian_matches_finite_differences():
    p = np.array([2.0, 0.4, 3.0, 1.3, 0.5])
    u = np.linspace(0, 1, 30)
    jac = emergence_jacobian(u, *p)
    for i in range(5):
        h = np.zeros(5)
        h[i] = 1e-6
        fd = (emergence(u, *(p + h)) - emergence(u, *(p - h))) / 2e-6
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-5, atol=1e-7)


def test_scores_and_errors_are_reported():
    clean, noisy = _synthetic(500, 0.1, 1.1e-4, 1.5, 6.0, seed=1)
    fit = fit_emergence(T, noisy)
    row = fit.as_row()
    for key in ("A", "lam", "gamma", "t0", "K", "se_A", "se_lam", "se_gamma", "se_t0", "se_K", "r2", "adj_r2",
                "rmse", "aic", "bic", "n_points", "converged", "message", "t_peak", "peak_class",
                "alt_log_r2", "alt_step_aic", "alt_step2_r2", "alt_step2_aic", "alt_logistic_r2", "best_by_aic",
                "t_stationary", "identified", "identification", "y_first", "y_last", "rise", "t_half",
                "peak_value", "K_identified"):
        assert key in row, key
    assert fit.n_points == 154 and fit.converged and fit.adj_r2 < fit.r2
    assert all(np.isfinite(v) and v >= 0 for v in fit.se.values())
    assert row["best_by_aic"] == "emergence"


# Identifiable parameters per shape, counted by hand: the pure log A·log(γt + t0) + K is
# A·log(t + t0/γ) + (K + A·log γ), three.
HAND_COUNTS = {"emergence": 5, "log": 3, "step": 3, "step2": 4, "logistic": 4}


def _suite_like(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """37 log-spaced checkpoints to step 1440 of an early peak with 3% noise, the curve written out here."""
    steps = np.round(np.geomspace(10, 1440, 37))
    x = 2e-3 * steps + 1.5
    clean = 40.0 * np.exp(-0.3 * x) * np.log(x) + 6.0
    return steps, clean * (1 + 0.03 * np.random.default_rng(seed).standard_normal(steps.size))


@pytest.mark.parametrize("shape", list(HAND_COUNTS))
def test_aic_and_aicc_count_each_shapes_identifiable_parameters(shape):
    """AIC = n·ln(RSS/n) + 2k and AICc = AIC + 2k(k+1)/(n−k−1), computed here from each fit's RSS, with k
    from the table above, on 37 checkpoints (the suite's count, where AICc's correction matters)."""
    steps, noisy = _suite_like(seed=3)
    fit = fit_emergence(steps, noisy)
    n, k = steps.size, HAND_COUNTS[shape]
    if shape == "emergence":
        rss = float(np.sum((noisy - fit.predict(steps)) ** 2))
        aic, aicc = fit.aic, fit.aicc
    else:
        alt = fit.alternatives[shape]
        rss, aic, aicc = alt.rss, alt.aic, alt.aicc
    assert n == 37
    assert aic == pytest.approx(n * math.log(rss / n) + 2 * k, rel=1e-9, abs=1e-9)
    assert aicc == pytest.approx(n * math.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1), rel=1e-9, abs=1e-9)


def test_akaike_weights_are_the_relative_likelihoods_of_the_shapes_aicc():
    steps, noisy = _suite_like(seed=4)
    row = fit_emergence(steps, noisy).as_row()
    aicc = {s: row["aicc" if s == "emergence" else f"alt_{s}_aicc"] for s in HAND_COUNTS}
    low = min(aicc.values())
    hand = {s: math.exp(-(v - low) / 2) for s, v in aicc.items()}
    total = sum(hand.values())
    for shape in HAND_COUNTS:
        weight = row["akaike_weight" if shape == "emergence" else f"alt_{shape}_weight"]
        assert weight == pytest.approx(hand[shape] / total, rel=1e-9, abs=1e-12)
    assert row["best_by_aicc"] == min(aicc, key=aicc.get)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_step_response_wins_on_its_own_data(seed):
    """A first-order step response with 1% noise: the 5-parameter model and the second-order response
    fit it as closely, but AIC charges their extra parameters, so the first-order shape wins."""
    rng = np.random.default_rng(seed)
    y = (80 - 70 * np.exp(-T / 9000)) * (1 + 0.01 * rng.standard_normal(T.size))
    fit = fit_emergence(T, y)
    assert fit.alternatives["step"].r2 > 0.99
    assert fit.best_alternative == "step"


@pytest.mark.parametrize("zeta, omega_t", [(0.4, 12.0), (0.7, 30.0), (2.0, 40.0)])
def test_second_order_step_response_recovers_its_own_parameters(zeta, omega_t):
    """Under-, near-critically and over-damped responses with 1% noise: R² ≥ 0.99 against the
    noise-free curve, ζ and ω within 5%, and the second-order shape wins on AIC where it oscillates."""
    omega = omega_t / T.max()
    clean = 100 - 90 * step2_decay(T, zeta, omega)
    noisy = clean * (1 + 0.01 * np.random.default_rng(0).standard_normal(T.size))
    fit = fit_emergence(T, noisy)
    alt = fit.alternatives["step2"]
    pred = alt.params["K"] - alt.params["A"] * step2_decay(T, alt.params["zeta"], alt.params["omega"])
    assert 1 - np.sum((pred - clean) ** 2) / np.sum((clean - clean.mean()) ** 2) >= 0.99
    assert alt.params["zeta"] == pytest.approx(zeta, rel=0.05)
    assert alt.params["omega"] == pytest.approx(omega, rel=0.05)
    if zeta < 1:
        assert fit.best_alternative == "step2"


@pytest.mark.parametrize("zeta", [0.2, 0.7, 1.0, 1.5, 4.0])
def test_step2_decay_is_one_minus_scipys_second_order_step_response(zeta):
    """The known answer from outside: scipy.signal.step of ω² / (s² + 2ζωs + ω²)."""
    omega = 3.0
    t = np.linspace(0, 6, 300)
    _, response = signal.step(signal.TransferFunction([omega ** 2], [1.0, 2 * zeta * omega, omega ** 2]), T=t)
    np.testing.assert_allclose(step2_decay(t, zeta, omega), 1 - response, atol=1e-9)


def test_step2_decay_is_continuous_across_critical_damping():
    t = np.linspace(0, 5, 50)
    for zeta in (1 - 1e-4, 1 + 1e-4):
        np.testing.assert_allclose(step2_decay(t, zeta, 2.0), step2_decay(t, 1.0, 2.0), atol=1e-3)
    assert step2_decay(np.array([0.0]), 0.3, 2.0)[0] == pytest.approx(1.0)


def test_unsorted_steps_are_sorted_for_the_user():
    clean, _ = _synthetic(100, 0.1, 1.1e-4, 1.5, 6.0, seed=0)
    order = np.random.default_rng(0).permutation(T.size)
    a = fit_emergence(T[order], clean[order], alternatives=False)
    b = fit_emergence(T, clean, alternatives=False)
    assert a.params == pytest.approx(b.params, rel=1e-6)


@pytest.mark.parametrize("steps, values, message", [
    ([0, 1, 2, 4, 8], [1, 2, 3, 4, 5], "at least 6 points, got 5"),
    ([0, 1, 2, 4, 8, 16], [1, 2, np.nan, 4, 5, 6], r"non-finite values at steps \[2.0\]"),
    ([0, 1, 2, 2, 8, 16], [1, 2, 3, 4, 5, 6], r"duplicate steps \[2.0\]"),
    ([0, 1, 2, 4, 8], [1, 2, 3, 4, 5, 6], "differ in length"),
    ([0, -1, 2, 4, 8, 16], [1, 2, 3, 4, 5, 6], "steps must be >= 0"),
])
def test_bad_series_are_explained(steps, values, message):
    with pytest.raises(SeriesError, match=message):
        check_series(steps, values)
