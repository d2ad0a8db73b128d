"""Train and evaluate the architecture → parameter regressors from ``fits/``, and predict from them.

Writes ``regression_scores/`` (both configurations × both protocols), ``regression_classes/`` (the
four peak classes), ``regression_importance/`` (permutation importance of each chosen model, in-sample:
what the model uses, not what generalises), ``regressors/series=<series>/model.skops`` with its
``metadata.json``, and partial-dependence figures under ``plots/regression/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from massive_activations.errors import BadInputError
from massive_activations.fit.fit_run import FITS
from massive_activations.provenance import library_versions, module_version
from massive_activations.regress import regression as R
from massive_activations.regress.architecture import FEATURES, feature_matrix
from massive_activations.report.plots import plot_partial_dependence, plot_predicted_curves
from massive_activations.sources.catalog import PYTHIA, Architecture, architecture_key, pythia_model
from massive_activations.store import Store

CODE_MODULES = ("massive_activations.regress.regression", "massive_activations.regress.architecture",
                "massive_activations.regress.regress_run")
# Paper Table 3 (arXiv 2508.03616): test R² under the random 80/20 protocol.
PAPER_TABLE3 = {
    "A": {"ridge": 0.077, "lasso": 0.195, "random_forest": 0.476, "gradient_boosting": 0.274, "xgboost": 0.244},
    "lam": {"ridge": 0.031, "lasso": -0.015, "random_forest": 0.643, "gradient_boosting": 0.506, "xgboost": 0.664},
    "gamma": {"ridge": 0.056, "lasso": -0.006, "random_forest": 0.055, "gradient_boosting": -1.571,
              "xgboost": -0.089},
    "t0": {"ridge": 0.100, "lasso": 0.017, "random_forest": 0.447, "gradient_boosting": 0.266, "xgboost": 0.387},
    "K": {"ridge": 0.405, "lasso": 0.316, "random_forest": 0.803, "gradient_boosting": 0.824, "xgboost": 0.847},
}


def architecture_of(store: Store, model: str) -> Architecture:
    """A Pythia model from the catalogue, an offline-suite model from its manifest, or any captured
    model from the architecture its capture recorded (``architectures/<model>.json``)."""
    if model in PYTHIA:
        return pythia_model(model)
    for key in store.list("suites"):
        if key.endswith(f"/{model}/manifest.json"):
            return Architecture.from_dict(store.read_json(key)["architecture"])
    if store.exists(key := architecture_key(model)):
        return Architecture.from_dict(store.read_json(key))
    raise BadInputError(f"no architecture for {model!r}: not a Pythia model, no suite manifest and no {key} on "
                     f"{store.url}")


def train(store: Store, series: str = "ratio", seed: int = 0,
          regressors: tuple[str, ...] = tuple(R.REGRESSORS), force: bool = False,
          report: Callable[[str], None] = lambda _: None, n_splits: int = R.N_SPLITS,
          identified_only: bool = False) -> dict[str, Any]:
    """Both configurations under both protocols, the project configuration under ``n_splits`` repeated
    80/20 splits with a nested choice of regressor, the peak classifier, the chosen models (saved,
    from the project configuration's leave-one-model-out scores), importances and figures; skipped
    when the store holds them for the same fits and settings (``force``: anyway).
    ``identified_only``: learn only from the layers whose fit is identified.

    Only models whose architecture is known (Pythia, or a suite manifest on the store) are learnt
    from; the others (a monitored run, say) are returned as ``left_out``.

    ``regressors`` narrows the project configuration; the paper configuration keeps its own five.
    ``report`` hears of each finished part (it takes minutes on a small CPU)."""
    unknown = [r for r in regressors if r not in R.REGRESSORS]
    if unknown or not regressors:
        raise BadInputError(f"unknown regressors {unknown or regressors}; choose from {', '.join(R.REGRESSORS)}")
    if n_splits < 2:
        raise BadInputError(f"n_splits must be at least 2 (repeated 80/20 splits), got {n_splits}")
    project = dataclasses.replace(R.CONFIGS["project"], regressors=tuple(regressors))
    fits = store.read_dataset(FITS)
    rows = fits.filter(pc.equal(fits.column("series"), series)).to_pylist()
    if not rows:
        raise BadInputError(f"no fits of series {series!r} on {store.url}; run the fit flow first")
    known, left_out = {}, []
    for model in sorted({r["model"] for r in rows}):
        try:
            known[model] = architecture_of(store, model)
        except ValueError:
            left_out.append(model)  # e.g. a monitored training run: its fits do not change what is learnt
    rows = [r for r in rows if r["model"] in known and (r.get("identified", True) or not identified_only)]
    models = sorted({r["model"] for r in rows})
    if len(models) < 2:
        return {"series": series, "status": "not trained", "left_out": left_out, "n_rows": len(rows),
                "chosen": {}, "reason": f"learning across architectures needs fits of at least 2 models with a "
                                        f"known architecture; {store.url} has {models or 'none'}"}
    inputs = {"series": series, "seed": seed, "regressors": list(regressors),
              "fits_hash": store.partitions_hash(FITS, {"model": models}), "models": models,
              "n_splits": n_splits, "identified_only": identified_only}
    part = {"series": series}
    prefix = f"regressors/series={series}"
    if not force and store.current("regression_scores", part, inputs, CODE_MODULES) and has_regressors(store, series):
        meta = store.read_json(f"{prefix}/metadata.json")
        return {"series": series, "status": "skipped", "chosen": meta["chosen"], "scores": meta["scores"],
                "classes": meta["classes"], "figures": meta["figures"], "model_key": f"{prefix}/model.skops",
                "n_rows": meta["training_rows"], "left_out": left_out}
    data = R.build_dataset(rows, {m: known[m] for m in models})
    paper, lomo = [], []
    for config in (project, R.CONFIGS["paper"]):
        for target in config.targets:  # one target at a time, so that progress can be told
            one = dataclasses.replace(config, targets=(target,))
            paper += R.paper_protocol(data, one, seed)
            lomo += R.leave_one_model_out(data, one, seed)[0]
            report(f"{config.name} configuration, {target}: both protocols done")
    repeated = R.repeated_splits(data, project, n_splits, seed)
    report(f"project configuration: {n_splits} repeated 80/20 splits done")
    columns = dict.fromkeys(k for r in paper + lomo + repeated for k in r)  # one schema for every protocol
    paper, lomo, repeated = ([{k: r.get(k, float("nan")) for k in columns} for r in protocol_rows]
                             for protocol_rows in (paper, lomo, repeated))
    for row in paper + lomo + repeated:
        table3 = PAPER_TABLE3.get(row["target"], {})
        row["paper_r2"] = table3.get(row["regressor"], float("nan")) if row["protocol"] == "random_80_20" \
            else float("nan")
    classes = R.classify_peaks(data, seed)
    best = R.choose_best([r for r in lomo if r["config"] == "project"])
    bundle = R.fit_final(data, best, lomo, seed, project)
    report(f"chosen regressors refitted on all {len(data.groups)} rows")
    importance = _importance(bundle, data, seed)
    figures = {}
    for target in best:
        entry = bundle[target]
        top = [r["feature"] for r in sorted((r for r in importance if r["target"] == target),
                                            key=lambda r: -r["importance_mean"])[:2]]
        key = f"plots/regression/{series}-{target}-partial-dependence.png"
        store.write_bytes(key, plot_partial_dependence(entry["final"], data.X, [FEATURES.index(f) for f in top],
                                                       list(FEATURES), f"{target} ({entry['regressor']})"))
        figures[target] = key
    store.write_partition("regression_classes", part, pa.Table.from_pylist(classes), inputs=inputs,
                          code_modules=CODE_MODULES, overwrite=True)
    store.write_partition("regression_importance", part, pa.Table.from_pylist(importance), inputs=inputs,
                          code_modules=CODE_MODULES, overwrite=True)
    store.write_bytes(f"{prefix}/model.skops", R.dump_bundle(bundle))
    metadata = {"features": list(FEATURES), "targets": list(R.TARGETS), "chosen": best,
                "rmse_unseen": {t: bundle[t]["rmse_unseen"] for t in best}, "inputs": inputs,
                "training_rows": len(data.groups), "scores": paper + lomo + repeated, "classes": classes,
                "figures": figures, "max_step": max(max(r["steps"]) for r in rows),
                "code_version": module_version(*CODE_MODULES), "libraries": library_versions()}
    store.write_json(f"{prefix}/metadata.json", metadata)
    # last: its provenance is what marks this training as done (Store.current)
    store.write_partition("regression_scores", part, pa.Table.from_pylist(paper + lomo + repeated), inputs=inputs,
                          code_modules=CODE_MODULES, overwrite=True)
    return {"series": series, "status": "trained", "chosen": best, "scores": paper + lomo + repeated,
            "classes": classes,
            "figures": figures, "model_key": f"{prefix}/model.skops", "n_rows": len(data.groups),
            "left_out": left_out}


def _importance(bundle: dict[str, dict[str, Any]], data: R.Dataset, seed: int) -> list[dict[str, Any]]:
    out = []
    for target, entry in bundle.items():
        if target not in R.TARGETS:
            continue
        have = np.isfinite(data.y[target])
        if not np.all(np.isfinite(R.predictions(entry["final"], data.X[have]))):
            continue  # its scores say why (not finite); an importance of NaN predictions means nothing
        mean, sd = R.permutation_importance(entry["final"], data.X[have], data.y[target][have], n_repeats=10,
                                            seed=seed)
        for i, name in enumerate(FEATURES):
            out.append({"target": target, "regressor": entry["regressor"], "feature": name,
                        "importance_mean": float(mean[i]), "importance_std": float(sd[i])})
    return out


def has_regressors(store: Store, series: str = "ratio") -> bool:
    return store.exists(f"regressors/series={series}/model.skops")


def load_regressors(store: Store, series: str = "ratio") -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    prefix = f"regressors/series={series}"
    if not has_regressors(store, series):
        raise BadInputError(f"no trained regressors for series {series!r} on {store.url}; run the regress flow first")
    return R.load_bundle(store.read_bytes(f"{prefix}/model.skops")), store.read_json(f"{prefix}/metadata.json")


def predict(store: Store, arch: Architecture, total_steps: int | None = None, series: str = "ratio",
            ) -> dict[str, Any]:
    """Predicted parameters and curves per layer, written to ``predictions/arch=<name>/`` with a figure.

    ``total_steps`` defaults to the training horizon of the fits the regressors learned from: the
    time parameters (γ, t0) are in those steps, so a longer horizon is an extrapolation.
    """
    bundle, metadata = load_regressors(store, series)
    feature_matrix(arch)  # validates the architecture before anything is written
    total = int(total_steps or metadata["max_step"])
    if total < 1:
        raise BadInputError(f"total_steps must be >= 1, got {total}")
    steps = np.unique(np.concatenate([[0.0], np.geomspace(1, total, 60), np.linspace(0, total, 144)]))
    rows = R.predict_layers(bundle, arch, steps)
    table = pa.Table.from_pylist(rows)
    inputs = {"architecture": arch.as_dict(), "series": series, "total_steps": total,
              "regressors": metadata["inputs"]}
    part = {"arch": arch.name}
    stored = (store.partition_metadata("predictions", part) or {}).get("inputs", {}).get("architecture")
    # as the architecture, not as the dict: one stored before a field existed has that field's default
    if stored is not None and Architecture.from_dict(stored) != arch:
        raise BadInputError(f"predictions/arch={arch.name} already holds a different architecture ({stored}); "
                         "give this one another name")
    written = store.write_partition("predictions", part, table, inputs=inputs, code_modules=CODE_MODULES,
                                    overwrite=True)
    key = f"plots/predictions/{arch.name}-{series}.png"
    store.write_bytes(key, plot_predicted_curves(rows, arch.name, series))
    return {"architecture": arch.name, "rows": rows, "figure": key, "predictions_hash": written.content_hash}
