"""Onsets and their intervals against curves with known onsets, computed here on a brute-force grid."""

from __future__ import annotations

import numpy as np
import pytest

from massive_activations.fit.emergence import emergence, fit_emergence
from massive_activations.fit.onset import onset_rows
from massive_activations.sources.catalog import PYTHIA_STEPS

T = np.array(PYTHIA_STEPS, dtype=float)


def _true_onset(params: tuple[float, ...]) -> float:
    """The first step where the curve has moved half its rise from its value at step 0, by brute force."""
    dense = np.linspace(0, T.max(), 1_430_001)
    f = emergence(dense, *params)
    return float(dense[np.argmax(np.abs(f - f[0]) >= 0.5 * np.ptp(f))])


def _row(series: str, params: tuple[float, ...], seed: int, noise: float = 0.02) -> dict:
    """A fit to the curve plus Gaussian noise of sd ``noise`` × its range (the fit's own noise model)."""
    clean = emergence(T, *params)
    y = clean + noise * np.ptp(clean) * np.random.default_rng(seed).standard_normal(T.size)
    fit = fit_emergence(T, y, alternatives=False)
    return {"layer": 0, "series": series, **fit.as_row(), "steps": T.tolist(), "values": y.tolist()}


CURVES = {  # (A, λ, γ, t0, K): a late log rise, an early peak, a saturating rise
    "ratio": (120.0, 0.0, 1.1e-4, 1.5, 5.0),
    "early": (900.0, 0.3, 5e-4, 1.5, 50.0),
    "late": (300.0, 0.05, 3e-5, 1.05, 10.0),
}


@pytest.mark.parametrize("name", list(CURVES))
def test_onsets_are_recovered_and_their_intervals_cover_the_truth(name):
    """20 noisy copies of each curve: the onset within 3% of the truth (median), and the 95% interval
    holding it in at least 85% of them (measured: 100%, 90% and 100%)."""
    truth = _true_onset(CURVES[name])
    rows = [onset_rows([_row(name, CURVES[name], seed=seed)])[0] for seed in range(20)]
    assert np.median([abs(r["onset"] / truth - 1) for r in rows]) < 0.03
    assert np.mean([r["onset_low"] <= truth <= r["onset_high"] for r in rows]) >= 0.85
    assert np.median([(r["onset_high"] - r["onset_low"]) / truth for r in rows]) < 0.25  # and informative
    assert all(r["n_draws"] == 400 for r in rows)  # every drawn curve moves: each has an onset


def test_the_difference_from_the_ratio_says_which_came_first():
    rows = {r["series"]: r for r in onset_rows([_row(name, p, seed=i) for i, (name, p) in enumerate(CURVES.items())])}
    assert rows["early"]["minus_ratio_high"] < 0 < rows["late"]["minus_ratio_low"]  # before and after the ratio
    assert rows["early"]["minus_ratio"] == pytest.approx(rows["early"]["onset"] - rows["ratio"]["onset"])
    assert np.isnan(rows["ratio"]["minus_ratio"])


def test_more_noise_gives_a_wider_interval():
    params = CURVES["early"]
    quiet, loud = (onset_rows([_row("ratio", params, seed=3, noise=n)])[0] for n in (0.005, 0.08))
    assert loud["onset_high"] - loud["onset_low"] > 2 * (quiet["onset_high"] - quiet["onset_low"])
