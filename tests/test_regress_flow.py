"""Regress and predict flows end to end on the micro suite's fits."""

from __future__ import annotations

import pytest
from prefect.artifacts import Artifact

from flows.fit import fit
from flows.predict import ArchitectureParams, predict
from flows.regress import regress
from massive_activations.catalog import CatalogError
from massive_activations.regress_run import PAPER_TABLE3, load_regressors
from massive_activations.regression import CONFIGS, RAW_TARGETS
from massive_activations.store import Store


@pytest.fixture(scope="module")
def fitted(prefect_server, captured_micro, micro_suite, tmp_path_factory) -> Store:
    """Captures and the suite's manifests (which carry the architectures) on one store, then fitted."""
    import shutil

    root = tmp_path_factory.mktemp("regress") / "store"
    shutil.copytree(captured_micro.root, root)
    shutil.copytree(f"{micro_suite.root}/suites", root / "suites")
    store = Store(root)
    fit(store=store.url, series=("ratio",))
    return store


def test_regress_then_predict(fitted):
    result = regress(store=fitted.url, regressors=("ridge", "random_forest"))
    assert {"A", "lam", "gamma", "t0", "K", "y_first", "y_last", "rise"} <= set(result["chosen"])
    scores = fitted.read_dataset("regression_scores").to_pylist()
    assert {(r["config"], r["protocol"]) for r in scores} == {
        (c, p) for c in ("paper", "project") for p in ("random_80_20", "leave_one_model_out")}
    # project: 12 targets × the 2 regressors asked for; paper: its 5 parameters × its 5 regressors
    assert len(scores) == 2 * (12 * 2 + 5 * 5)
    assert {r["regressor"] for r in scores if r["config"] == "paper"} == set(CONFIGS["paper"].regressors)
    paper = [r for r in scores if r["protocol"] == "random_80_20" and r["target"] in RAW_TARGETS]
    assert all(r["note"].startswith("not meaningful") for r in paper)  # 1 test row of 5: said plainly
    xgb = [r for r in paper if r["regressor"] == "xgboost"]
    assert [r["paper_r2"] for r in xgb] == [PAPER_TABLE3[r["target"]]["xgboost"] for r in xgb]
    assert fitted.read_dataset("regression_importance").num_rows == len(result["chosen"]) * 16
    classes = fitted.read_dataset("regression_classes").to_pylist()
    assert {c["protocol"] for c in classes} == {"random_80_20", "leave_one_model_out"}
    figures = fitted.list("plots/regression")
    assert len(figures) == len(result["chosen"])
    assert all(fitted.read_bytes(key)[:4] == b"\x89PNG" for key in figures)
    bundle, metadata = load_regressors(fitted)
    assert metadata["features"][0] == "rel_depth" and metadata["training_rows"] == 5
    assert "peak_class" in bundle
    summary = Artifact.get("regression-summary")
    assert summary is not None and "Paper configuration, paper protocol" in summary.data

    scores_key = fitted.partition_key("regression_scores", {"series": "ratio"})
    written = fitted.fs.info(fitted.path(scores_key))["mtime"]
    again = regress(store=fitted.url, regressors=("ridge", "random_forest"))
    assert again["chosen"] == result["chosen"] and fitted.fs.info(fitted.path(scores_key))["mtime"] == written
    regress(store=fitted.url, regressors=("ridge", "random_forest"), refresh=True)
    assert fitted.fs.info(fitted.path(scores_key))["mtime"] > written  # refresh retrains and rewrites

    out = predict(ArchitectureParams(n_layers=4, d_model=32, n_heads=2, name="new-l4"), store=fitted.url)
    assert [r["layer"] for r in out["rows"]] == [0, 1, 2, 3]
    stored = fitted.read_dataset("predictions", where={"arch": "new-l4"})
    assert stored.num_rows == 4 and {"curve_y", "y_last", "rise", "t_half", "peak_class"} <= set(stored.column_names)
    assert fitted.read_bytes(out["figure"])[:4] == b"\x89PNG"
    by_name = predict("pythia-160m", store=fitted.url)
    assert len(by_name["rows"]) == 12


def test_predict_rejects_bad_architectures_before_work(fitted):
    with pytest.raises(CatalogError, match="n_heads=3 does not divide d_model=64"):
        predict(ArchitectureParams(n_layers=4, d_model=64, n_heads=3), store=fitted.url)
    with pytest.raises(CatalogError, match="cannot read architecture 'gpt-7'"):
        predict("gpt-7", store=fitted.url)
