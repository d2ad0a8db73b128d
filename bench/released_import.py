"""The released flow on a full-size dataset: import and fit against the 10-minute budget.

A dataset the size of the paper's release (9 Pythia models, 36 checkpoints each, their 6 to 36 layers:
188 in all, 10 sequences, printed as the release prints them) is generated from emergence curves and
served by the project's loopback Hub (tests/hub_server.py). The released flow then lists, downloads,
parses, checks and writes every checkpoint, and fits the ratio, top1 and median series of every layer
(564 fits), as a user with a network would run it (regressors off: they are not in the budget).
Prints the seconds and their ratio to the 600 s budget.

Run: .venv/bin/python bench/released_import.py [--record]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # as make sets it

from massive_activations.sources.catalog import PYTHIA_STEPS, pythia_model  # noqa: E402
from massive_activations.sources.released import REPO, REVISION, SIZES  # noqa: E402
from tests.hub_server import FakeHub  # noqa: E402

BUDGET_S = 600.0
N_STEPS, N_SEQ = 36, 10


def steps() -> list[int]:
    """36 checkpoints spread over the run on a log scale, as the release has about 36 per model."""
    schedule = np.asarray(PYTHIA_STEPS)
    targets = np.unique(np.round(np.geomspace(1, schedule.max(), N_STEPS * 2)))
    picked = sorted({0, *(int(schedule[np.argmin(np.abs(schedule - t))]) for t in targets)})
    idx = np.round(np.linspace(0, len(picked) - 1, N_STEPS)).astype(int)
    return [picked[i] for i in idx]


def stats(step: int, n_layers: int, rng: np.random.Generator) -> str:
    out = np.empty((N_SEQ, 4, n_layers))
    for layer in range(n_layers):
        x = 4e-5 * (1 + layer / n_layers) * step + 1.05
        ratio = (200 + 30 * layer) * np.exp(-0.4 * x) * np.log(x) + 6.5
        median = rng.uniform(0.3, 0.6, N_SEQ)
        top1 = ratio * median * rng.uniform(0.95, 1.05, N_SEQ)
        out[:, :, layer] = np.stack([top1, 0.7 * top1, 0.5 * top1, median], axis=1)
    return json.dumps(np.round(out, 8).tolist())


def dataset() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for size in SIZES:
        n_layers = pythia_model(size).n_layers
        for step in steps():
            files[f"pythia_{size}/stats/exp2_pythia_{size}_step{step}"] = stats(step, n_layers, rng).encode()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()
    from flows.released import released

    files = dataset()
    layers = sum(pythia_model(s).n_layers for s in SIZES)
    hub = FakeHub()
    hub.add(REPO, REVISION, files, repo_type="dataset")
    hub.start()
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        result = released(endpoint=hub.url, store=f"{scratch}/store", cache_dir=f"{scratch}/cache",
                          train_regressors=False)
        seconds = time.perf_counter() - start
    hub.stop()
    imported = sum(len(r["imported"]) for r in result["imports"].values())
    line = (f"released import + fit: {len(SIZES)} models, {imported} checkpoints ({len(files)} files, "
            f"{sum(map(len, files.values())) / 2**20:.1f} MiB), {layers} layers × 3 series = {layers * 3} fits: "
            f"{seconds:.0f} s; budget {BUDGET_S:.0f} s; ratio {seconds / BUDGET_S:.2f}")
    print(line)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Released data: import and fit at full size ({datetime.date.today()})\n\n"
                     f"`bench/released_import.py`: {line}. Machine: 2 CPU cores, no GPU.\n")


if __name__ == "__main__":
    main()
