"""The fit flow on captured micro-suite data: rows, figures, artifacts, and re-fitting only on change."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from prefect.artifacts import Artifact

from flows.fit import fit
from massive_activations.fit.emergence import classify
from massive_activations.store import Store

SERIES = ["ratio", "top1", "median", "ratio_excl0"]


@pytest.fixture
def store(captured_micro, tmp_path) -> Store:
    shutil.copytree(captured_micro.root, tmp_path / "store")
    return Store(tmp_path / "store")


def test_fit_flow_end_to_end(prefect_server, store):
    first = fit(store=store.url, series=SERIES)
    models = sorted(first["results"])
    assert models == ["nx-l2-d32-h2", "nx-l3-d32-h4"]
    assert all(r["status"] == "fitted" for r in first["results"].values())
    fits = store.read_dataset("fits")
    keys = set(zip(fits.column("model").to_pylist(), fits.column("layer").to_pylist(),
                   fits.column("series").to_pylist(), strict=True))
    expected = {(m, layer, s) for m, n in (("nx-l2-d32-h2", 2), ("nx-l3-d32-h4", 3))
                for layer in range(n) for s in SERIES}
    assert keys == expected
    for row in fits.to_pylist():
        assert row["n_points"] == 10 and len(row["curve_t"]) == len(row["curve_y"]) > 100
        # the stored class is the one its own parameters give, and t_peak exists only for an early peak
        assert row["peak_class"] == classify(row["A"], row["lam"], row["t_stationary"], np.array(row["steps"]))
        assert np.isfinite(row["t_peak"]) == (row["peak_class"] == "early peak")
        assert row["identified"] == (row["identification"] == "")
    comparison = store.read_dataset("fit_comparison")
    assert set(comparison.column("shape").to_pylist()) == {"emergence", "log", "step", "step2", "logistic"}
    for model in models:
        png = store.read_bytes(f"plots/fits/{model}-ratio-layers.png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    summary = Artifact.get("fit-summary")
    assert summary is not None and "Mean R²" in summary.data and "data:image/png;base64" in summary.data
    assert Artifact.get("fit-parameters") is not None and Artifact.get("fit-alternatives") is not None

    before = store.fs.info(store.path("fits/model=nx-l2-d32-h2/part-0.parquet"))["mtime"]
    second = fit(store=store.url, series=SERIES)
    assert all(r["status"] == "skipped" for r in second["results"].values())  # the store said so
    assert store.fs.info(store.path("fits/model=nx-l2-d32-h2/part-0.parquet"))["mtime"] == before

    refreshed = fit(store=store.url, series=SERIES, models=["nx-l2-d32-h2"], refresh=True)
    assert refreshed["results"]["nx-l2-d32-h2"]["status"] == "fitted"  # refresh refits and rewrites
    assert store.fs.info(store.path("fits/model=nx-l2-d32-h2/part-0.parquet"))["mtime"] > before
    before = store.fs.info(store.path("fits/model=nx-l2-d32-h2/part-0.parquet"))["mtime"]

    # New data for one model: that model is re-fitted, the other is not.
    other = store.fs.info(store.path("fits/model=nx-l3-d32-h4/part-0.parquet"))["mtime"]
    part = {"model": "nx-l2-d32-h2", "step": 48}
    ratios = store.read_partition("ratios", part)
    scaled = ratios.set_column(1, "ratio", [[v * 1.5 for v in ratios.column("ratio").to_pylist()]])
    store.write_partition("ratios", part, scaled, inputs={"edited": True}, overwrite=True)
    third = fit(store=store.url, series=SERIES)
    assert third["results"]["nx-l2-d32-h2"]["status"] == "fitted"
    assert store.fs.info(store.path("fits/model=nx-l2-d32-h2/part-0.parquet"))["mtime"] > before
    assert store.fs.info(store.path("fits/model=nx-l3-d32-h4/part-0.parquet"))["mtime"] == other


def test_fit_flow_rejects_bad_input(prefect_server, store):
    with pytest.raises(ValueError, match="unknown series"):
        fit(store=store.url, series=["ratio", "nope"])
    with pytest.raises(ValueError, match="no ratios .* for \\['pythia-70m'\\]"):
        fit(store=store.url, models=["pythia-70m"])
