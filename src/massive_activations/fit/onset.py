"""When each series of a layer takes off, with an interval: which of ratio, sinks, super weight and
kurtosis emerges first.

**Onset.** The first step at which the fitted emergence curve has moved ``ONSET_FRACTION`` (one half)
of its rise away from its value at the first checkpoint: the fit's ``t_half``, on a grid dense in
both linear and log step. Half the rise, not a small fraction, because the start of a curve that
begins flat is where the fit is least determined.

**Interval.** From the fit's own uncertainty, linearised at the optimum (in the fit's normalised
units, where the Jacobian J is well scaled): a draw of the data's noise ε ~ N(0, s²) moves the
least-squares parameters by δ = J⁺ε and the curve on the grid by J_grid·δ, so the drawn curves are
f(p̂) + J_grid·J⁺ε. The pseudo-inverse leaves out directions the data do not determine, so a fit on
a ridge (raw parameters not identified) still gets the spread of its *curve*, which the data do
determine, rather than draws wandering along the ridge. Each drawn curve's onset is computed the
same way and the 2.5% and 97.5% quantiles taken. The difference of two series' onsets in one layer
is drawn from the two fits independently: each series is its own fit. ``identified`` is the fit's.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

from massive_activations.fit.emergence import emergence, emergence_jacobian

ONSET_FRACTION = 0.5
N_DRAWS = 400
LEVEL = 0.95


def onset_grid(steps: np.ndarray) -> np.ndarray:
    """The steps an onset can be: dense in linear and in log step, and the checkpoints themselves."""
    lo, hi = float(steps.min()), float(steps.max())
    return np.unique(np.concatenate([np.linspace(lo, hi, 4001), np.geomspace(max(lo, 1.0), hi, 2000), steps]))


def onsets(curves: np.ndarray, grid: np.ndarray, fraction: float = ONSET_FRACTION) -> np.ndarray:
    """Onset step of each curve (rows of ``curves``, values on ``grid``); NaN for a flat curve."""
    f = np.atleast_2d(curves)
    rise = np.nanmax(f, axis=1) - np.nanmin(f, axis=1)
    away = np.abs(f - f[:, :1]) >= fraction * rise[:, None]
    return np.where((rise > 0) & np.isfinite(rise), grid[np.argmax(away, axis=1)], np.nan)


def curve_draws(steps: np.ndarray, values: np.ndarray, params: tuple[float, ...], grid: np.ndarray,
                n: int = N_DRAWS, seed: int | tuple[int, ...] = 0) -> np.ndarray:
    """Draws (n, grid) of the fitted curve from the fit's uncertainty (module docstring)."""
    t, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    t_scale, y_min, y_range = t.max(), y.min(), float(np.ptp(y))
    a, lam, gamma, t0, k = params
    norm = np.array([a / y_range, lam, gamma * t_scale, t0, (k - y_min) / y_range])
    u, v = t / t_scale, (y - y_min) / y_range
    with np.errstate(all="ignore"):
        jac = emergence_jacobian(u, *norm)
        s = math.sqrt(float(np.sum((emergence(u, *norm) - v) ** 2)) / max(t.size - 5, 1))
        shifts = np.linalg.pinv(jac) @ np.random.default_rng(seed).normal(0.0, s, size=(t.size, n))
        curves = emergence(grid / t_scale, *norm)[None, :] + (emergence_jacobian(grid / t_scale, *norm) @ shifts).T
    return curves * y_range + y_min


def _interval(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size < 10:
        return math.nan, math.nan
    return tuple(float(q) for q in np.quantile(finite, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))


def onset_rows(fits: list[dict[str, Any]], reference: str = "ratio", seed: int = 0) -> list[dict[str, Any]]:
    """Per (layer, series) of a model's fits rows: onset, its interval, and the difference from the
    ``reference`` series' onset in the same layer with its interval."""
    draws: dict[tuple[int, str], np.ndarray] = {}
    rows = []
    for fit in fits:
        steps, values = np.asarray(fit["steps"], float), np.asarray(fit["values"], float)
        grid = onset_grid(steps)
        params = (fit["A"], fit["lam"], fit["gamma"], fit["t0"], fit["K"])
        own_seed = (seed, fit["layer"] + 1, zlib.crc32(fit["series"].encode()))  # independent fits: own draws
        sampled = onsets(curve_draws(steps, values, params, grid, seed=own_seed), grid)
        draws[(fit["layer"], fit["series"])] = sampled
        low, high = _interval(sampled)
        rows.append({"layer": fit["layer"], "series": fit["series"], "onset": float(onsets(emergence(grid, *params),
                                                                                            grid)[0]),
                     "onset_low": low, "onset_high": high, "identified": bool(fit["identified"]),
                     "n_draws": int(np.isfinite(sampled).sum())})
    for row in rows:
        ref = draws.get((row["layer"], reference))
        own = draws[(row["layer"], row["series"])]
        base = next((r for r in rows if r["layer"] == row["layer"] and r["series"] == reference), None)
        if ref is None or base is None or row["series"] == reference:
            row |= {"minus_ratio": math.nan, "minus_ratio_low": math.nan, "minus_ratio_high": math.nan}
            continue
        m = min(len(ref), len(own))
        low, high = _interval(own[:m] - ref[:m])
        row |= {"minus_ratio": row["onset"] - base["onset"], "minus_ratio_low": low, "minus_ratio_high": high}
    return rows
