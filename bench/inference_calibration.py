"""Is the partial ρ beyond training time calibrated? False positives, coverage and power on worlds
with known truth, for the project's method and for the baselines it replaced, side by side.

A world: checkpoints log-spaced over Pythia's 16..143,000 steps; the ratio and the metric share a
trend in log step (peaked: rises then falls; saturating: a logistic rise), 4 and −3 noise sds high,
plus each one's own AR(1) noise of unit variance (φ = 0, 0.5, 0.8, 0.95). In the null worlds the two
noises are independent (no association beyond the step); in the planted worlds the metric's noise is
0.7·(the ratio's noise) + √0.51·(its own), a partial correlation of 0.7 beyond the step. Beside them,
null worlds whose noise is not AR(1), which no method here models: smooth AR(2) noise (φ = 1.2, −0.4),
MA(3) noise (the mean of four consecutive white draws) and heavy-tailed AR(1) noise (φ = 0.8, Student
t₃ innovations), at 24 and 37 checkpoints.

Methods:
- ``ours``: rank_stats.correlations_with_ci (the Pearson correlation of each series less a spline in
  log step; Dutilleul's effective n through the spline, each series' noise an AR(2) fitted through
  it; flags p < 0.05);
- ``ranked``: what ours was until this entry, Spearman's ρ of the same residuals (their ranks) with
  the same effective n;
- ``diff``: its first-difference view, diff_rho (same test);
- ``block``: the same residuals with arch's stationary bootstrap, block length by Politis and White's
  rule (flags when the 95% percentile interval excludes 0);
- ``old``: the method this replaced, a straight line in rank(step) and an iid percentile bootstrap.

Coverage: how often the 95% interval holds the truth (0 in the null worlds; in the planted worlds the
method's own limit on 20,000 iid checkpoints). Bars (issue 25): in every world with ≥ 20 checkpoints
``ours`` has FPR ≤ 0.07 and coverage ≥ 0.90; power ≥ 0.8 at 24 checkpoints; at 7 it abstains.

    .venv/bin/python bench/inference_calibration.py [--reps 2000] [--baseline-reps 400] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length
from joblib import Parallel, delayed
from scipy.linalg import toeplitz
from scipy.stats import rankdata
from statsmodels.tsa.arima_process import arma_acf

from massive_activations.evals.rank_stats import (
    MIN_CHECKPOINTS,
    correlation_test,
    correlations_with_ci,
    projected_n_eff,
    residual,
    residual_acf,
    trend_basis,
)

TRENDS = ("peaked", "saturating")
PHIS = (0.0, 0.5, 0.8, 0.95)
SIZES = (7, 20, 24, 37)
PLANTED = 0.7
NOISES = ("ar1", "ar2", "ma3", "t3")  # ar2, ma3, t3: null worlds only, φ unused (t3 has its own)
METHODS = ("ours", "ranked", "diff", "block", "old")


def trend(kind: str, step: np.ndarray) -> np.ndarray:
    x = (np.log(step) - np.log(step[0])) / (np.log(step[-1]) - np.log(step[0]))
    return np.exp(-0.5 * ((x - 0.6) / 0.2) ** 2) if kind == "peaked" else 1 / (1 + np.exp(-(x - 0.4) / 0.08))


def ar1(rng: np.random.Generator, n: int, phi: float, draw: Callable[[], float] | None = None) -> np.ndarray:
    """Stationary AR(1) with unit marginal variance; innovations from ``draw`` (unit variance, normal
    by default)."""
    draw = draw or rng.normal
    out = np.empty(n)
    out[0] = draw()
    for i in range(1, n):
        out[i] = phi * out[i - 1] + np.sqrt(1 - phi * phi) * draw()
    return out


def noise(rng: np.random.Generator, kind: str, n: int, phi: float) -> np.ndarray:
    """Stationary noise of unit marginal variance: AR(1) with ``phi``, smooth AR(2), MA(3), or AR(1)
    with φ = 0.8 and Student t₃ innovations (heavy tails: a few checkpoints far off the trend)."""
    if kind == "ar1":
        return ar1(rng, n, phi)
    if kind == "t3":
        return ar1(rng, n, 0.8, lambda: rng.standard_t(3) / np.sqrt(3.0))  # t₃ has variance 3
    if kind == "ar2":
        return np.linalg.cholesky(toeplitz(arma_acf([1, -1.2, 0.4], [1], n))) @ rng.normal(size=n)
    white = rng.normal(size=n + 3)
    return (white[3:] + white[2:-1] + white[1:-2] + white[:-3]) / 2


def world(rng: np.random.Generator, kind: str, n: int, phi: float, planted: float, noise_kind: str = "ar1"):
    step = np.geomspace(16, 143_000, n)
    g, own_ratio, own_metric = trend(kind, step), noise(rng, noise_kind, n, phi), noise(rng, noise_kind, n, phi)
    ratio = 4 * g + own_ratio
    metric = -3 * g + planted * own_ratio + np.sqrt(1 - planted**2) * own_metric
    return metric, ratio, step


def old_method(metric, ratio, step, n_boot=1000, seed=0):
    """The replaced method: residuals on a line in rank(step); iid percentile bootstrap."""
    def partial(m, r, s):
        rm, rr, rs = (rankdata(v, axis=-1) for v in (m, r, s))
        def res(y):
            zc, yc = rs - rs.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
            zz = (zc * zc).sum(-1, keepdims=True)
            return yc - np.where(zz > 0, (zc * yc).sum(-1, keepdims=True) / np.where(zz > 0, zz, 1), 0) * zc
        a, b = res(rm), res(rr)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    picks = np.random.default_rng(seed).integers(0, len(metric), size=(n_boot, len(metric)))
    draws = partial(metric[picks], ratio[picks], step[picks])
    low, high = np.nanquantile(draws, [0.025, 0.975])
    return float(partial(metric, ratio, step)), float(low), float(high)


def ranked_method(metric, ratio, step):
    """Ours until this entry: Spearman's ρ of the same residuals, with the same effective n."""
    basis = trend_basis(step)
    em, er = residual(metric, basis), residual(ratio, basis)
    r = float(np.corrcoef(rankdata(em), rankdata(er))[0, 1])
    n_eff = projected_n_eff(residual_acf(rankdata(em), basis), residual_acf(rankdata(er), basis), basis)
    low, high, _ = correlation_test(r, n_eff, 0.95)
    return r, low, high


def block_method(metric, ratio, step, n_boot=300, seed=0):
    """Our spline residuals; stationary bootstrap of the pairs, Politis–White block length."""
    basis = trend_basis(step)
    em, er = residual(metric, basis), residual(ratio, basis)
    block = float(np.clip(optimal_block_length(np.column_stack([em, er]))["stationary"].mean(), 1, len(em) / 2))
    boot = StationaryBootstrap(block, em, er, seed=seed)
    draws = boot.apply(lambda a, b: np.array([np.corrcoef(a, b)[0, 1]]), n_boot)[:, 0]
    low, high = np.nanquantile(draws, [0.025, 0.975])
    return float(np.corrcoef(em, er)[0, 1]), float(low), float(high)


def limits() -> dict[str, dict[str, float]]:
    """Each method's planted truth: its statistic on 20,000 iid checkpoints of each trend."""
    out = {}
    for kind in TRENDS:
        m, r, s = world(np.random.default_rng(12345), kind, 20_000, 0.0, PLANTED)
        basis = trend_basis(s)
        em, er = residual(m, basis), residual(r, basis)
        dm, dr = rankdata(np.diff(m)), rankdata(np.diff(r))
        out[kind] = {"ours": float(np.corrcoef(em, er)[0, 1]), "block": float(np.corrcoef(em, er)[0, 1]),
                     "ranked": float(np.corrcoef(rankdata(em), rankdata(er))[0, 1]),
                     "diff": float(np.corrcoef(dm, dr)[0, 1]), "old": old_method(m, r, s, n_boot=2)[0]}
    return out


def one_world(kind: str, n: int, phi: float, planted: float, reps: int, baseline_reps: int,
              truth: dict[str, float], noise_kind: str = "ar1") -> dict:
    """``reps`` replicates of ours (its diff view and the ranked version beside it); the slower
    baselines on the first ``baseline_reps`` of them."""
    seed = [SIZES.index(n), PHIS.index(phi), TRENDS.index(kind), int(planted * 10)]
    rng = np.random.default_rng(seed + ([NOISES.index(noise_kind)] if noise_kind != "ar1" else []))
    flags = {m: 0 for m in METHODS}
    cover, count = dict.fromkeys(flags, 0), dict.fromkeys(flags, 0)
    abstained = 0
    for rep in range(reps):
        metric, ratio, step = world(rng, kind, n, phi, planted, noise_kind)
        baseline = rep < baseline_reps
        res = {"old": old_method(metric, ratio, step, seed=rep)} if baseline else {}
        ours = correlations_with_ci(metric, ratio, step)
        if not np.isfinite(ours["partial_rho"]):
            abstained += 1
        else:
            res["ours"] = (ours["partial_rho"], ours["partial_rho_low"], ours["partial_rho_high"])
            res["diff"] = (ours["diff_rho"], ours["diff_rho_low"], ours["diff_rho_high"])
            res["ranked"] = ranked_method(metric, ratio, step)
            if baseline:
                res["block"] = block_method(metric, ratio, step, seed=rep)
        for m, (_, low, high) in res.items():
            count[m] += 1
            flags[m] += not low <= 0 <= high
            cover[m] += low <= (truth[m] if planted else 0.0) <= high
    rate = {m: flags[m] / count[m] if count[m] else float("nan") for m in flags}
    coverage = {m: cover[m] / count[m] if count[m] else float("nan") for m in cover}
    return {"trend": kind, "n": n, "phi": phi, "planted": planted, "rate": rate, "coverage": coverage,
            "abstained": abstained / reps, "noise": noise_kind}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000,
                        help="replicates per world for ours (Monte Carlo sd of a 0.05 rate: 0.005)")
    parser.add_argument("--baseline-reps", type=int, default=400,
                        help="of those, how many also run the slower block and old baselines")
    parser.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    truth = limits()
    jobs = [(k, n, phi, planted, "ar1") for planted in (0.0, PLANTED) for k in TRENDS for phi in PHIS for n in SIZES]
    jobs += [(k, n, 0.0, 0.0, kind) for kind in NOISES[1:] for k in TRENDS for n in SIZES if n >= 24]
    base = min(args.baseline_reps, args.reps)
    everything = Parallel(n_jobs=2)(delayed(one_world)(k, n, phi, p, args.reps, base, truth[k], kind)
                                    for k, n, phi, p, kind in jobs)
    results = [r for r in everything if r["noise"] == "ar1"]
    other = [r for r in everything if r["noise"] != "ar1"]
    lines = [f"`.venv/bin/python bench/inference_calibration.py --reps {args.reps} --baseline-reps "
             f"{base}` "
             f"({time.perf_counter() - start:.0f} s; planted truth: "
             + ", ".join(f"{k} {truth[k]['ours']:.3f}" for k in TRENDS) + ")", ""]
    for planted, title, what in ((0.0, "Null worlds: false-positive rate at nominal 5%", "rate"),
                                 (PLANTED, "Planted partial correlation 0.7: power", "rate"),
                                 (0.0, "Null worlds: 95% interval coverage", "coverage"),
                                 (PLANTED, "Planted worlds: 95% interval coverage", "coverage")):
        lines += [f"**{title}** ({' / '.join(METHODS)}; '—' where ours abstains)", "",
                  "| trend | φ | " + " | ".join(f"n = {n}" for n in SIZES) + " |",
                  "|---|---|" + "---|" * len(SIZES)]
        for kind in TRENDS:
            for phi in PHIS:
                cells = []
                for n in SIZES:
                    v = next(x for x in results
                             if (x["trend"], x["n"], x["phi"], x["planted"]) == (kind, n, phi, planted))[what]
                    cells.append(" / ".join("—" if not np.isfinite(v[m]) else f"{v[m]:.2f}" for m in METHODS))
                lines.append(f"| {kind} | {phi} | " + " | ".join(cells) + " |")
        lines.append("")
    sizes = sorted({r["n"] for r in other})
    lines += [f"**Null worlds with noise that is not AR(1): false-positive rate at nominal 5%** "
              f"({' / '.join(METHODS)})", "", "| trend | noise | " + " | ".join(f"n = {n}" for n in sizes) + " |",
              "|---|---|" + "---|" * len(sizes)]
    for kind in TRENDS:
        for noise_kind in NOISES[1:]:
            cells = [" / ".join(f"{r['rate'][m]:.2f}" for m in METHODS)
                     for n in sizes for r in other if (r["trend"], r["noise"], r["n"]) == (kind, noise_kind, n)]
            lines.append(f"| {kind} | {noise_kind} | " + " | ".join(cells) + " |")
    lines.append("")
    calibrated = [r for r in results if r["n"] >= MIN_CHECKPOINTS]
    fpr = max(r["rate"]["ours"] for r in calibrated if r["planted"] == 0)
    cov = min(r["coverage"]["ours"] for r in calibrated)
    power = {(r["trend"], r["phi"]): r["rate"]["ours"] for r in results if r["planted"] and r["n"] == 24}
    abstain = min(r["abstained"] for r in results if r["n"] < MIN_CHECKPOINTS)
    lines += [f"Bars for ours: worst FPR at n ≥ {MIN_CHECKPOINTS}: {fpr:.3f} (bar ≤ 0.07); worst coverage: "
              f"{cov:.3f} (bar ≥ 0.90); power at n = 24: "
              + ", ".join(f"{k} φ={p}: {v:.2f}" for (k, p), v in sorted(power.items()))
              + f" (bar ≥ 0.8); abstains below {MIN_CHECKPOINTS} checkpoints: {abstain:.0%} of replicates. "
              f"Worst FPR with noise that is not AR(1): {max(r['rate']['ours'] for r in other):.3f}.", ""]
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(Path(__file__).resolve().parent / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Inference calibration — {datetime.date.today()}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
