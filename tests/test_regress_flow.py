"""Regress and predict flows end to end on the micro suite's fits."""

from __future__ import annotations

import numpy as np
import pytest
from prefect.artifacts import Artifact

from flows.fit import fit
from flows.predict import ArchitectureParams, predict
from flows.regress import regress
from massive_activations.errors import BadInputError
from massive_activations.regress.architecture import FEATURES
from massive_activations.regress.regress_run import PAPER_TABLE3, architecture_of, load_regressors, train
from massive_activations.regress.regression import CONFIGS, RAW_TARGETS, predict_layers
from massive_activations.sources.catalog import CatalogError
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
        (c, p) for c in ("paper", "project") for p in ("random_80_20", "leave_one_model_out")} | {
        ("project", "repeated_80_20")}
    # project: 12 targets × the 2 regressors asked for; paper: its 5 parameters × its 5 regressors; and
    # the repeated splits: 12 targets × (2 regressors + the nested choice)
    assert len(scores) == 2 * (12 * 2 + 5 * 5) + 12 * 3
    repeated = [r for r in scores if r["protocol"] == "repeated_80_20"]
    # 5 layers: a 20% test side holds 1 row, too few to score, in every split: said, not scored
    assert all(r["n_splits"] == 0 and r["r2"] != r["r2"] for r in repeated)
    assert {r["note"] for r in repeated if r["target"] == "K"} == {
        "not scored: no split had 3 or more varying test rows"}
    assert {r["regressor"] for r in scores if r["config"] == "paper"} == set(CONFIGS["paper"].regressors)
    paper = [r for r in scores if r["protocol"] == "random_80_20" and r["target"] in RAW_TARGETS]
    assert all(r["note"].startswith("not meaningful") for r in paper)  # 1 test row of 5: said plainly
    xgb = [r for r in paper if r["regressor"] == "xgboost"]
    assert [r["paper_r2"] for r in xgb] == [PAPER_TABLE3[r["target"]]["xgboost"] for r in xgb]
    assert fitted.read_dataset("regression_importance").num_rows == len(result["chosen"]) * len(FEATURES)
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
    assert "Project configuration, 20 repeated 80/20 splits" in summary.data

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


def test_learning_from_identified_fits_only(fitted):
    fits = fitted.read_dataset("fits", where={"series": "ratio"}).to_pylist()
    identified = {r["model"] for r in fits if r["identified"]}
    result = train(fitted, regressors=("ridge",), identified_only=True, n_splits=2)
    if len(identified) >= 2:
        assert result["status"] == "trained" and result["n_rows"] == sum(r["identified"] for r in fits)
    else:  # a single model left cannot teach anything across architectures: said, not trained
        assert result["status"] == "not trained" and "at least 2 models" in result["reason"]
    with pytest.raises(BadInputError, match="n_splits must be at least 2"):
        train(fitted, regressors=("ridge",), n_splits=1)


def test_predict_rejects_bad_architectures_before_work(fitted):
    with pytest.raises(CatalogError, match="n_heads=3 does not divide d_model=64"):
        predict(ArchitectureParams(n_layers=4, d_model=64, n_heads=3), store=fitted.url)
    with pytest.raises(CatalogError, match="cannot read architecture 'gpt-7'"):
        predict("gpt-7", store=fitted.url)


def test_predictions_are_named_from_what_they_predict(fitted, micro_root):
    """Two configs in folders both called step48 get two predictions; a name taken by another
    architecture is refused, not overwritten."""
    regress(store=fitted.url, regressors=("ridge", "random_forest"))  # skipped if another test trained them
    a = predict(str(micro_root / "nx-l2-d32-h2" / "step48" / "config.json"), store=fitted.url)
    b = predict(str(micro_root / "nx-l3-d32-h4" / "step48" / "config.json"), store=fitted.url)
    assert a["architecture"].startswith("config-l2-d32-h2-") and b["architecture"].startswith("config-l3-d32-h4-")
    assert len(fitted.read_dataset("predictions", where={"arch": [a["architecture"], b["architecture"]]})) == 2 + 3
    predict(ArchitectureParams(n_layers=4, d_model=32, n_heads=2, name="taken"), store=fitted.url)
    predict(ArchitectureParams(n_layers=4, d_model=32, n_heads=2, name="taken"), store=fitted.url)  # same: fine
    with pytest.raises(ValueError, match="already holds a different architecture"):
        predict(ArchitectureParams(n_layers=6, d_model=32, n_heads=2, name="taken"), store=fitted.url)
    assert len(fitted.read_dataset("predictions", where={"arch": "taken"})) == 4  # the first one, intact
    # a prediction stored before the architecture had its newer fields (KV heads, norm, …) is the same one
    part = {"arch": "taken"}
    meta = fitted.partition_metadata("predictions", part)
    older = {k: v for k, v in meta["inputs"]["architecture"].items()
             if k not in ("n_kv_heads", "tied_embeddings", "norm", "positions", "gated_mlp", "bias", "model_type",
                          "params")}
    fitted.write_partition("predictions", part, fitted.read_partition("predictions", part),
                           inputs={**meta["inputs"], "architecture": older}, overwrite=True)
    predict(ArchitectureParams(n_layers=4, d_model=32, n_heads=2, name="taken"), store=fitted.url)


def test_a_monitored_run_on_the_store_changes_nothing_regress_learns(fitted, tmp_path):
    """A run's fits without a known architecture (what `monitor` writes) are left out, not an error,
    and the regressors trained before it arrived stay current."""
    import shutil

    store = Store(tmp_path / "store")
    shutil.copytree(fitted.root, store.root)
    before = regress(store=store.url, regressors=("ridge", "random_forest"))
    scores_key = store.partition_key("regression_scores", {"series": "ratio"})
    written = store.fs.info(store.path(scores_key))["mtime"]
    run = store.read_partition("fits", {"model": "nx-l2-d32-h2"})
    store.write_partition("fits", {"model": "my-run"}, run, inputs={"monitored": True})
    after = regress(store=store.url, regressors=("ridge", "random_forest"))
    assert after["left_out"] == ["my-run"] and after["chosen"] == before["chosen"]
    assert store.fs.info(store.path(scores_key))["mtime"] == written  # same known fits: nothing retrained
    heard: list[str] = []  # minutes of work on a small CPU: each part is reported as it finishes
    train(store, regressors=("ridge",), force=True, report=heard.append)
    assert len(heard) == 12 + 5 + 2 and heard[0] == "project configuration, A: both protocols done"


def test_a_panel_series_is_learnt_as_its_own_targets_beside_the_ratio(fitted, tmp_path):
    """Kurtosis fits (from panel/) give regressors of their own, under series=kurtosis, from the
    kurtosis rows alone; the ratio's regressors are left as they were."""
    import shutil

    store = Store(tmp_path / "store")
    shutil.copytree(fitted.root, store.root)
    ratio = train(store, regressors=("ridge",), n_splits=2)
    fit(store=store.url, series=("ratio", "kurtosis"))
    kurtosis_fits = store.read_dataset("fits", where={"series": "kurtosis"}).to_pylist()
    assert len({r["model"] for r in kurtosis_fits}) >= 2
    result = train(store, series="kurtosis", regressors=("ridge",), n_splits=2)
    assert result["status"] == "trained" and result["n_rows"] == len(kurtosis_fits)
    bundle, metadata = load_regressors(store, series="kurtosis")
    assert metadata["inputs"]["series"] == "kurtosis" and "K" in bundle
    # learnt from the kurtosis rows: its predicted starting level is the kurtosis's (about 0), not the
    # ratio's (about 5)
    ratio_fits = store.read_dataset("fits", where={"series": "ratio"}).to_pylist()
    model = kurtosis_fits[0]["model"]
    predicted = [r["y_first"] for r in predict_layers(bundle, architecture_of(store, model), np.arange(0, 1441, 48))]
    def gap(fits):
        return np.mean(np.abs(predicted - np.array([r["y_first"] for r in sorted(
            (f for f in fits if f["model"] == model), key=lambda f: f["layer"])])))
    assert gap(kurtosis_fits) < gap(ratio_fits) / 5
    assert store.read_dataset("regression_scores", where={"series": "kurtosis"}).num_rows > 0
    assert train(store, regressors=("ridge",), n_splits=2)["chosen"] == ratio["chosen"]
