"""Ranking the raw series before the trend fit, against the method (no ranks), on the same replicates.

Why it is asked: a rank transform first would make the partial ρ a rank statistic throughout, robust to
any monotone distortion of the metric. What it may cost: ranks are a non-linear mix of trend and
noise that no smooth curve in log step separates again (a peaked trend's ranks have a cusp at the peak).

The worlds, their seeds and the replicate order are those of bench/inference_calibration.py at 24
checkpoints (AR(1) noise). A replicate is flagged when p < 0.05, the method's own rule (that bench flags
an interval that excludes 0; in the null worlds they disagree on at most about 2 replicates in 1,000).
``rank first``: ``correlations_with_ci(rank(metric), rank(ratio), step)``.

    .venv/bin/python bench/rank_first.py [--reps 2000] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed
from scipy.stats import rankdata

sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference_calibration import PHIS, PLANTED, SIZES, TRENDS, world  # noqa: E402

from massive_activations.evals.rank_stats import correlations_with_ci  # noqa: E402

N = 24


def rates(kind: str, phi: float, planted: float, reps: int) -> dict[str, tuple[float, float]]:
    """Per method: the share of replicates flagged (p < 0.05) and the share whose 95% interval holds 0."""
    rng = np.random.default_rng([SIZES.index(N), PHIS.index(phi), TRENDS.index(kind), int(planted * 10)])
    hits = {"ours": np.zeros(2), "rank first": np.zeros(2)}
    for _ in range(reps):
        metric, ratio, step = world(rng, kind, N, phi, planted)
        for name, (m, r) in (("ours", (metric, ratio)), ("rank first", (rankdata(metric), rankdata(ratio)))):
            row = correlations_with_ci(m, r, step)
            hits[name] += (row["partial_rho_p"] < 0.05, row["partial_rho_low"] <= 0 <= row["partial_rho_high"])
    return {name: tuple(v / reps) for name, v in hits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2000, help="replicates per world")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    jobs = [(kind, phi, planted) for planted in (0.0, PLANTED) for kind in TRENDS for phi in PHIS]
    out = Parallel(n_jobs=2)(delayed(rates)(*job, args.reps) for job in jobs)
    lines = [f"`.venv/bin/python bench/rank_first.py --reps {args.reps}` ({time.perf_counter() - start:.0f} s; "
             f"{N} checkpoints, AR(1) noise)", "",
             "| trend | φ | null: flagged, ours / rank first | null: 95% interval holds 0 | "
             f"planted {PLANTED}: power, ours / rank first | power ratio |", "|---|---|---|---|---|---|"]
    for kind in TRENDS:
        for phi in PHIS:
            null, planted = (out[jobs.index((kind, phi, p))] for p in (0.0, PLANTED))
            lines.append(f"| {kind} | {phi} | {null['ours'][0]:.3f} / {null['rank first'][0]:.3f} | "
                         f"{null['ours'][1]:.3f} / {null['rank first'][1]:.3f} | "
                         f"{planted['ours'][0]:.3f} / {planted['rank first'][0]:.3f} | "
                         f"{planted['rank first'][0] / planted['ours'][0]:.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.record:
        with open(Path(__file__).resolve().parent / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Ranking the raw series first — {datetime.date.today()}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
