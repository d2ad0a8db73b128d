"""Rank correlations across checkpoints that can tell the ratio from training time.

Across checkpoints, a metric and the massive-activation ratio both change with the training step,
so Spearman's ρ(metric, ratio) mostly says that both move with time. The partial Spearman ρ of
metric and ratio given the step asks whether the metric tracks the ratio *beyond* what the step
explains: ranks of metric and ratio are each regressed linearly on the ranks of the step, and the
Pearson correlation of the two residuals is the partial ρ. (The log of the step has the same ranks
as the step, so "given log step" and "given step" are one statistic.)

Uncertainty: a percentile bootstrap over checkpoints (resampled with replacement, seeded), for ρ
with the ratio, ρ with the step and the partial ρ alike.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

STATS = ("rho_ratio", "rho_step", "partial_rho")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share a rank)."""
    return rankdata(x, axis=-1)


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, (a * b).sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)  # rounding can leave |r| a hair above 1


def _residual(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """y minus its least-squares line in z (along the last axis)."""
    zc = z - z.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    zz = (zc * zc).sum(axis=-1, keepdims=True)
    slope = np.where(zz > 0, (zc * yc).sum(axis=-1, keepdims=True) / np.where(zz > 0, zz, 1.0), 0.0)
    return yc - slope * zc


def rank_stats(metric: np.ndarray, ratio: np.ndarray, step: np.ndarray) -> dict[str, np.ndarray]:
    """ρ(metric, ratio), ρ(metric, step) and the partial ρ(metric, ratio | step), along the last axis."""
    rm, rr, rs = _ranks(metric), _ranks(ratio), _ranks(step)
    return {"rho_ratio": _pearson(rm, rr), "rho_step": _pearson(rm, rs),
            "partial_rho": _pearson(_residual(rm, rs), _residual(rr, rs))}


def correlations_with_ci(metric: np.ndarray, ratio: np.ndarray, step: np.ndarray, n_boot: int = 1000,
                         seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """The three statistics over checkpoints, each with a percentile bootstrap interval
    (``<stat>_low``/``<stat>_high``); NaN where a statistic is undefined (a constant series)."""
    metric, ratio, step = (np.asarray(v, dtype=float) for v in (metric, ratio, step))
    if not len(metric) == len(ratio) == len(step):
        raise ValueError(f"metric, ratio and step need one value per checkpoint; got {len(metric)}, "
                         f"{len(ratio)}, {len(step)}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot}, {level}")
    point = {k: float(v) for k, v in rank_stats(metric, ratio, step).items()}
    picks = np.random.default_rng(seed).integers(0, len(metric), size=(n_boot, len(metric)))
    boot = rank_stats(metric[picks], ratio[picks], step[picks])
    out: dict[str, float] = {}
    for name in STATS:
        draws = boot[name][np.isfinite(boot[name])]
        low, high = (np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]) if len(draws) and np.isfinite(point[name])
                     else (np.nan, np.nan))
        out.update({name: point[name], f"{name}_low": float(low), f"{name}_high": float(high)})
    return out
