"""Correlations across checkpoints that can tell the ratio from training time, calibrated.

Across checkpoints a metric and the massive-activation ratio both change with the training step, so
Spearman's ρ(metric, ratio) mostly says that both move with time. The partial ρ asks whether the
metric tracks the ratio *beyond* a shared trend in time:

- **Trend.** Metric and ratio are each regressed on a natural cubic spline in log(1 + step) with
  ``TREND_DF`` degrees of freedom (knots at quantiles, plus an intercept), so any smooth shared
  trend — rising then falling, saturating — is removed, not only a straight line. Six, not fewer:
  with four a peaked trend's misfit is shared by both series, and where the noise is smooth too
  (AR φ = 0.95) that misfit pulled the partial ρ down and the interval covered the truth 74% of the
  time. The partial ρ is the Pearson correlation of the two residual series. It was Spearman's ρ of
  them; ranking threw away power the method needs at 24 checkpoints with smooth noise (0.77–0.79
  with φ = 0.95, against 0.83–0.85 now) and bought no protection: the effective n below rests on the null
  variance of a Pearson correlation, and with heavy-tailed noise (t₃ innovations) the Pearson
  version still holds its error rate (bench/inference_calibration.py). Ranking the raw series
  before the fit is worse still: ranks are a non-linear mix of trend and noise that no smooth curve
  in log step separates again (a peaked trend's ranks have a cusp at the peak). The error rate holds,
  but power at 24 checkpoints falls to 0.34–0.83 from 0.83–0.93, the more the smoother the noise
  (bench/rank_first.py).
- **Inference.** The residuals stay autocorrelated from checkpoint to checkpoint, so they are not
  ``n`` independent points. The partial ρ's effective number of checkpoints is Dutilleul's modified
  t test carried through the spline: with no association, two independent Gaussian series with
  autocorrelation matrices Σ_a and Σ_b, each regressed on the basis (residual maker P), have a
  residual correlation of variance ≈ tr(M_a M_b) / (tr M_a · tr M_b), M = P Σ P, and
  n_eff = 1 + 1 / that, never above n − q (q the spline's ``TREND_DF`` columns besides the
  intercept): with white noise it is n − q, the exact test for a partial correlation. Each Σ is
  that of the AR(2) process whose residuals would show, in expectation, the series' lag-1 and lag-2
  sample autocorrelations (``residual_acf``), so the pull of the trend fit on a short series'
  autocorrelations is undone rather than read as independence. The p-value is the t test of ρ on
  n_eff − 2 degrees of freedom and the interval is Fisher's z interval with n_eff − 3.
  What it replaced, and why: Bartlett's sum Σₖ wₖ·r_a(k)·r_b(k) over the (then ranked) residuals' sample
  autocorrelations read those pulled-down autocorrelations as they were, noisily: it cost power (0.76
  at 24 checkpoints with φ = 0.95) and flagged 8–9% of null worlds with smooth AR(2) noise at 37
  checkpoints; an AR(1) fitted through the spline had the power but flagged 11–13% of those. The raw ρ's
  and the first differences, where nothing but the mean is fitted, keep Bartlett's formula
  (``effective_n``): n_eff = (n − q) / (1 + 2·Σₖ wₖ·r_a(k)·r_b(k)) over lags k ≤ L = ⌊n/3⌋ − 1 with
  the taper wₖ = 1 − k/(L + 1), q = 0. A block bootstrap was measured beside it and rejected: at 20
  to 37 checkpoints its intervals flag 15–30% of null worlds.
- **Floor.** Below ``MIN_CHECKPOINTS`` the method is not shown to hold its error rate, so it
  abstains: NaN, with the reason.
- **Second view.** ``diff_rho`` is Spearman's ρ of the step-to-step changes of the two series, with
  Bartlett's effective n; it is reported beside the partial ρ and never counted.

ρ with the ratio and ρ with the step get Fisher intervals with Bartlett's effective n (of the ranks
themselves, so trending series get wide intervals). The calibration — false positives, coverage and
power on worlds with known truth — is in bench/inference_calibration.py and docs/science.md.

**Many layers.** ``fdr`` gives Benjamini–Hochberg q-values over a family of tests (the layers of a
metric, across models too), and ``pooled_p`` one test per family: Simes' global test, which is the
smallest BH q-value and holds its level when the layers' tests are positively dependent, as adjacent
layers of one residual stream are.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.linalg import toeplitz
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t
from statsmodels.stats.multitest import multipletests
from statsmodels.tsa.stattools import acf

STATS = ("rho_ratio", "rho_step", "partial_rho", "diff_rho")
TREND_DF = 6
MIN_CHECKPOINTS = 20
ABSTAIN = f"fewer than {MIN_CHECKPOINTS} checkpoints: below the floor where the test holds its error rate"


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """NaN for a constant series (0/0)."""
    a, b = a - a.mean(), b - b.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.clip((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()), -1.0, 1.0))


def trend_basis(step: np.ndarray, df: int = TREND_DF) -> np.ndarray:
    """An intercept and a natural cubic spline basis of log(1 + step) with ``df`` columns.

    Knots: df + 1 at equally spaced quantiles of log step (the two ends included); the natural
    spline through them is linear beyond the ends. Each column is the interpolating natural spline of
    one knot's indicator (a cardinal basis), which spans the same space as any natural-spline basis."""
    x = np.log1p(np.asarray(step, dtype=float))
    knots = np.quantile(x, np.linspace(0, 1, df + 1))  # distinct: the steps are (correlations_with_ci)
    eye = np.eye(len(knots))
    cols = [CubicSpline(knots, eye[i], bc_type="natural")(x) for i in range(len(knots))]
    return np.column_stack(cols)  # the cardinal basis sums to 1, so it holds the intercept


def residual(y: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """y minus its least-squares fit on the basis."""
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return y - basis @ coef


def effective_n(a: np.ndarray, b: np.ndarray, covariates: int) -> float:
    """Bartlett's effective number of independent pairs for the correlation of two autocorrelated
    (non-constant) series, each already regressed on ``covariates`` columns besides the intercept;
    never above n − covariates."""
    n = len(a)
    lags = max(1, n // 3 - 1)  # k < n/3 (docs/science.md)
    taper = 1 - np.arange(1, lags + 1) / (lags + 1)
    inflation = 1 + 2 * float(np.sum(taper * acf(a, nlags=lags)[1:] * acf(b, nlags=lags)[1:]))
    return float(n - covariates) / max(inflation, 1.0)


@lru_cache(maxsize=8)
def _ar2_table(n: int) -> np.ndarray:
    """Autocorrelations at lags 0..n − 1 of stationary AR(2) processes, one row per point of a grid of
    partial autocorrelations (κ₁, κ₂): κ₁ dense near 1, where smooth noise lives, |κ₂| ≤ 0.9."""
    k1, k2 = (g.ravel() for g in np.meshgrid(1 - np.geomspace(0.002, 1.9, 120), np.linspace(-0.9, 0.9, 61),
                                              indexing="ij"))
    phi1, phi2 = k1 * (1 - k2), k2
    table = np.empty((len(k1), n))
    table[:, 0] = 1.0
    table[:, 1] = k1  # ρ₁ = φ₁ / (1 − φ₂) = κ₁
    for lag in range(2, n):
        table[:, lag] = phi1 * table[:, lag - 1] + phi2 * table[:, lag - 2]
    return table


def _residual_maker(basis: np.ndarray) -> np.ndarray:
    """P = I − B B⁺: P y is y less its least-squares fit on the basis."""
    return np.eye(len(basis)) - basis @ np.linalg.pinv(basis)


def _lag_sums(m: np.ndarray) -> np.ndarray:
    """Per lag k, the sum of a square matrix's entries with |i − j| = k."""
    i = np.arange(len(m))
    return np.bincount(np.abs(i[:, None] - i[None, :]).ravel(), weights=m.ravel(), minlength=len(m))


def residual_acf(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """The autocorrelations (lags 0..n − 1) of the AR(2) noise whose residuals on ``basis`` would show,
    in expectation, the lag-1 and lag-2 sample autocorrelations of ``x``, itself such a residual series.

    Fitting the trend pulls a short series' autocorrelations down (24 checkpoints less the 7-column
    spline: the residuals of AR(1) noise with φ = 0.8 have a lag-1 autocorrelation of −0.09 on
    average), so matching through the projection P undoes that: E[e′ S_k e] = tr(P S_k P Σ) with S_k
    the symmetric lag-k shift."""
    n = len(x)
    proj, table = _residual_maker(basis), _ar2_table(n)
    total = table @ _lag_sums(proj)
    misfit = np.zeros(len(table))
    for lag, sample in zip((1, 2), acf(x, nlags=2)[1:], strict=True):
        shift = np.eye(n, k=lag)
        misfit += (table @ _lag_sums(proj @ (shift + shift.T) / 2 @ proj) / total - sample) ** 2
    return table[int(np.argmin(misfit))]


def projected_n_eff(acf_a: np.ndarray, acf_b: np.ndarray, basis: np.ndarray) -> float:
    """Effective pairs for the correlation of two independent series with these autocorrelations, each
    regressed on ``basis`` (intercept included): n_eff = 1 + 1 / Var₀(r) with
    Var₀(r) = tr(M_a M_b) / (tr M_a · tr M_b), M = P Σ P, the variance of the correlation of the two
    residual vectors with no association. White noise gives 1 / (n − q − 1), so n_eff = n − q (q the
    columns besides the intercept), the exact test's; it is never above that."""
    proj = _residual_maker(basis)
    ma, mb = proj @ toeplitz(acf_a) @ proj, proj @ toeplitz(acf_b) @ proj
    variance = np.trace(ma @ mb) / (np.trace(ma) * np.trace(mb))
    return float(min(1 + 1 / variance, len(basis) - basis.shape[1] + 1))


def correlation_test(r: float, n_eff: float, level: float) -> tuple[float, float, float]:
    """(low, high, p) for a correlation ``r`` on ``n_eff`` independent pairs: Fisher's z interval
    and the two-sided t test; NaN where n_eff leaves no degrees of freedom."""
    if not n_eff > 3:  # also NaN
        return float("nan"), float("nan"), float("nan")
    with np.errstate(divide="ignore"):  # |r| = 1: z and t are infinite, the interval is the point, p is 0
        z, half = np.arctanh(r), norm.ppf((1 + level) / 2) / np.sqrt(n_eff - 3)
        t_stat = r * np.sqrt((n_eff - 2) / np.float64(1 - r * r))
    return float(np.tanh(z - half)), float(np.tanh(z + half)), float(2 * student_t.sf(abs(t_stat), n_eff - 2))


def _with_test(name: str, r: float, n_eff: Callable[[], float], level: float) -> dict[str, float]:
    n_eff = n_eff() if np.isfinite(r) else float("nan")  # r is NaN for a constant series: no autocorrelation
    low, high, p = correlation_test(r, n_eff, level)
    return {name: r, f"{name}_low": low, f"{name}_high": high, f"{name}_p": p, f"{name}_n_eff": n_eff}


def correlations_with_ci(metric: np.ndarray, ratio: np.ndarray, step: np.ndarray, n_boot: int = 1000,
                         seed: int = 0, level: float = 0.95) -> dict[str, float | str]:
    """ρ(metric, ratio), ρ(metric, step), the partial ρ beyond a smooth trend in log step and the
    first-difference ρ, each with an interval (``<stat>_low``/``_high``), a p-value (``<stat>_p``) and
    the effective n it rests on. The partial and first-difference statistics are NaN below
    ``MIN_CHECKPOINTS``, with ``reason`` saying so; every statistic is NaN for a constant series.

    ``n_boot`` and ``seed`` are kept for callers of the old bootstrap and are checked, not used: the
    inference is analytic (see the module docstring for why a resampling bootstrap was not kept)."""
    metric, ratio, step = (np.asarray(v, dtype=float) for v in (metric, ratio, step))
    if not len(metric) == len(ratio) == len(step):
        raise ValueError(f"metric, ratio and step need one value per checkpoint; got {len(metric)}, "
                         f"{len(ratio)}, {len(step)}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    if not np.isfinite(np.concatenate([metric, ratio, step])).all():
        raise ValueError("metric, ratio and step must be finite (drop the checkpoints without a value first)")
    if len(np.unique(step)) < len(step):
        raise ValueError(f"steps must be distinct, one per checkpoint; got {np.sort(step).tolist()}")
    order = np.argsort(step, kind="stable")
    metric, ratio, step = metric[order], ratio[order], step[order]
    rm, rr, rs = rankdata(metric), rankdata(ratio), rankdata(step)
    out: dict[str, float | str] = {}
    out.update(_with_test("rho_ratio", _pearson(rm, rr), lambda: effective_n(rm, rr, 0), level))
    out.update(_with_test("rho_step", _pearson(rm, rs), lambda: effective_n(rm, rs, 0), level))
    nan = float("nan")
    if len(step) < MIN_CHECKPOINTS:
        for name in ("partial_rho", "diff_rho"):
            out.update(dict.fromkeys([name, f"{name}_low", f"{name}_high", f"{name}_p", f"{name}_n_eff"], nan))
        out["reason"] = ABSTAIN
        return out
    # A series that is constant, or a smooth function of log step, is a pure time trend: nothing is left
    # beyond it to correlate. (A monotone but not smooth one still has a residual, fixed or random; the
    # test stays valid against the other series' independent noise.)
    basis = trend_basis(step)
    em, er = residual(metric, basis), residual(ratio, basis)
    trend_only = [name for name, raw, left in (("metric", metric, em), ("ratio", ratio, er))
                  if np.ptp(left) <= 1e-9 * np.abs(raw).max()]  # a constant too
    if trend_only:
        out.update(_with_test("partial_rho", nan, lambda: nan, level))
        out.update(_with_test("diff_rho", nan, lambda: nan, level))
    else:
        dm, dr = rankdata(np.diff(metric)), rankdata(np.diff(ratio))
        out.update(_with_test("partial_rho", _pearson(em, er),
                              lambda: projected_n_eff(residual_acf(em, basis), residual_acf(er, basis), basis), level))
        out.update(_with_test("diff_rho", _pearson(dm, dr), lambda: effective_n(dm, dr, 0), level))
    out["reason"] = (f"the {' and the '.join(trend_only)} {('is', 'are')[len(trend_only) - 1]} constant or "
                     "a smooth function of log step: nothing is left beyond it") if trend_only else ""
    return out


def fdr(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values; NaN p-values (abstentions) stay NaN and are not counted as tests."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        q[tested] = multipletests(p[tested], method="fdr_bh")[1]
    return q


def pooled_p(pvalues: list[float] | np.ndarray) -> float:
    """Simes' test that no test of the family has an effect: the smallest BH q-value (NaN if none tested)."""
    q = fdr(pvalues)
    return float(np.nanmin(q)) if np.isfinite(q).any() else float("nan")
