"""Predict the emergence parameters from architecture alone: regressors, validation, persistence.

Rows are one per (model, layer) of one fitted series. Each target gets scikit-learn Pipelines
(standard scaling + a regressor) inside ``TransformedTargetRegressor`` (log1p for λ and t0, log for
γ, which spans decades, Yeo–Johnson for A and K, which can be negative), with a small grid search
nested inside the training folds. Two protocols:

1. the paper's: seeded random 80/20 split, 5-fold CV on the 80% for selection, R² on the 20%;
2. leave-one-model-out (GroupKFold by model), because layers of one model are not independent.

A score is flagged "not meaningful" when its test rows are fewer than 3 or their target is constant.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import (
    GradientBoostingRegressor,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, Ridge
from sklearn.metrics import accuracy_score, confusion_matrix, mean_absolute_error, mean_squared_error, r2_score
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, PowerTransformer, StandardScaler

from massive_activations.architecture import feature_matrix
from massive_activations.catalog import Architecture
from massive_activations.emergence import EARLY_PEAK, LOG_INCREASE, classify, curve_grid, emergence, peak_step

TARGETS = ("A", "lam", "gamma", "t0", "K")
CLASSES = (EARLY_PEAK, LOG_INCREASE)
REGRESSORS: dict[str, tuple[Any, dict[str, list[Any]]]] = {
    "ridge": (Ridge(), {"model__alpha": [0.1, 1.0, 10.0]}),
    "lasso": (Lasso(max_iter=20_000), {"model__alpha": [0.001, 0.01, 0.1]}),
    "random_forest": (RandomForestRegressor(n_estimators=100), {"model__max_depth": [None, 4]}),
    "gradient_boosting": (GradientBoostingRegressor(n_estimators=150), {"model__max_depth": [2, 3]}),
    "hist_gradient_boosting": (HistGradientBoostingRegressor(max_iter=150, min_samples_leaf=3),
                               {"model__max_depth": [2, None]}),
}
# Types a saved model may contain; anything else in a file from shared storage is refused.
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "builtins.")


@dataclass
class Dataset:
    X: np.ndarray
    y: dict[str, np.ndarray]
    groups: np.ndarray  # model name per row
    peak_class: np.ndarray
    architectures: dict[str, Architecture] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(np.unique(self.groups)) < 2:
            raise ValueError(f"need fits of at least 2 models to learn across architectures, got "
                             f"{sorted(set(self.groups.tolist()))}")


def build_dataset(fit_rows: list[dict[str, Any]], architectures: dict[str, Architecture]) -> Dataset:
    """Join fit rows (one series) with their models' architectures through the shared feature function."""
    missing = sorted({r["model"] for r in fit_rows} - set(architectures))
    if missing:
        raise ValueError(f"no architecture known for {missing}")
    rows = sorted(fit_rows, key=lambda r: (r["model"], r["layer"]))
    X = np.vstack([feature_matrix(architectures[r["model"]], [r["layer"]]) for r in rows])
    return Dataset(X=X, y={t: np.array([r[t] for r in rows], dtype=float) for t in TARGETS},
                   groups=np.array([r["model"] for r in rows]),
                   peak_class=np.array([r["peak_class"] for r in rows]), architectures=dict(architectures))


def target_transformer(target: str) -> Any:
    if target in ("lam", "t0"):
        return FunctionTransformer(np.log1p, np.expm1, check_inverse=False)
    if target == "gamma":
        return FunctionTransformer(np.log, np.exp, check_inverse=False)
    return PowerTransformer(method="yeo-johnson")


def quiet_convergence(fn):
    """Lasso at the small end of its alpha grid may stop at max_iter; the grid search scores that
    candidate like any other, so the warning is noise here."""
    from functools import wraps

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fn(*args, **kwargs)
    return wrapper


def make_regressor(name: str, target: str, inner_cv: Any, seed: int) -> TransformedTargetRegressor:
    estimator, grid = REGRESSORS[name]
    estimator = clone(estimator)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    search = GridSearchCV(Pipeline([("scale", StandardScaler()), ("model", estimator)]), grid, cv=inner_cv,
                          scoring="neg_mean_squared_error")
    return TransformedTargetRegressor(regressor=search, transformer=target_transformer(target))


def _meaningful(y_test: np.ndarray) -> str:
    if len(y_test) < 3:
        return f"not meaningful: {len(y_test)} test rows"
    if np.std(y_test) <= 1e-12 * max(1.0, np.abs(y_test).max()):
        return "not meaningful: constant target in the test rows"
    return ""


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    return {"r2": float(r2_score(y, pred)) if len(y) > 1 else float("nan"),
            "mae": float(mean_absolute_error(y, pred)), "rmse": float(np.sqrt(mean_squared_error(y, pred))),
            "note": _meaningful(y)}


def _inner_groups_cv(groups: np.ndarray) -> Any:
    """Selection folds inside a training set: by model when it holds several, else by row."""
    n = len(np.unique(groups))
    if n >= 2:
        return GroupKFold(n_splits=min(5, n))
    if len(groups) < 2:
        raise ValueError("a training fold holds a single row; too few layers to select a model")
    return KFold(n_splits=min(3, len(groups)))


@quiet_convergence
def paper_protocol(data: Dataset, seed: int = 0, regressors: tuple[str, ...] = tuple(REGRESSORS)) -> list[dict]:
    """Random 80/20 split, 5-fold CV on the 80% for selection, test scores on the 20%."""
    idx = np.arange(len(data.groups))
    train, test = train_test_split(idx, test_size=0.2, random_state=seed)
    inner = KFold(n_splits=min(5, len(train)), shuffle=True, random_state=seed)
    rows = []
    for target in TARGETS:
        y = data.y[target]
        for name in regressors:
            model = make_regressor(name, target, inner, seed).fit(data.X[train], y[train])
            rows.append({"protocol": "random_80_20", "target": target, "regressor": name,
                         **_scores(y[test], model.predict(data.X[test])), "n_test": len(test)})
    return rows


@quiet_convergence
def leave_one_model_out(data: Dataset, seed: int = 0, regressors: tuple[str, ...] = tuple(REGRESSORS),
                        ) -> tuple[list[dict], dict[tuple[str, str], list[Any]]]:
    """GroupKFold by model; scores pooled over the held-out models. Also returns the fold models
    (for inspection; they are not persisted)."""
    outer = GroupKFold(n_splits=len(np.unique(data.groups)))
    rows, fold_models = [], {}
    for target in TARGETS:
        y = data.y[target]
        for name in regressors:
            pred = np.empty_like(y)
            models = []
            for train, test in outer.split(data.X, y, data.groups):
                model = make_regressor(name, target, _inner_groups_cv(data.groups[train]), seed)
                model.fit(data.X[train], y[train], groups=data.groups[train])
                pred[test] = model.predict(data.X[test])
                models.append(model)
            fold_models[(target, name)] = models
            rows.append({"protocol": "leave_one_model_out", "target": target, "regressor": name,
                         **_scores(y, pred), "n_test": len(y)})
    return rows, fold_models


def classify_peaks(data: Dataset, seed: int = 0) -> list[dict]:
    """Early peak vs log increase from architecture, under both protocols: accuracy and confusion matrix."""
    labels = data.peak_class
    out = []
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=0.2, random_state=seed)
    splits = {"random_80_20": [(train, test)],
              "leave_one_model_out": list(GroupKFold(len(np.unique(data.groups))).split(data.X, labels, data.groups))}
    for protocol, folds in splits.items():
        truth, pred, notes = [], [], set()
        for tr, te in folds:
            if len(np.unique(labels[tr])) < 2:
                guess = np.full(len(te), labels[tr][0])
                notes.add("a training fold held one class only; it predicts that class")
            else:
                clf = RandomForestClassifier(n_estimators=200, random_state=seed).fit(data.X[tr], labels[tr])
                guess = clf.predict(data.X[te])
            truth.extend(labels[te])
            pred.extend(guess)
        matrix = confusion_matrix(truth, pred, labels=list(CLASSES))
        out.append({"protocol": protocol, "accuracy": float(accuracy_score(truth, pred)), "n_test": len(truth),
                    "confusion": matrix.tolist(), "labels": list(CLASSES),
                    "note": "; ".join(sorted(notes)) or _meaningful(np.array([c == EARLY_PEAK for c in truth],
                                                                             dtype=float))})
    return out


def choose_best(lomo_rows: list[dict]) -> dict[str, str]:
    """Per target, the regressor with the best leave-one-model-out R² (the stricter protocol)."""
    best: dict[str, tuple[float, str]] = {}
    for row in lomo_rows:
        score = row["r2"] if np.isfinite(row["r2"]) else -np.inf
        if row["target"] not in best or score > best[row["target"]][0]:
            best[row["target"]] = (score, row["regressor"])
    return {t: name for t, (_, name) in best.items()}


@quiet_convergence
def fit_final(data: Dataset, best: dict[str, str], lomo_rows: list[dict], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each target's chosen regressor refitted on all rows.

    Its uncertainty for a new architecture is the RMSE of its leave-one-model-out predictions:
    the error it made on models it had not seen.
    """
    rmse = {(r["target"], r["regressor"]): r["rmse"] for r in lomo_rows}
    bundle = {}
    for target, name in best.items():
        model = make_regressor(name, target, _inner_groups_cv(data.groups), seed)
        model.fit(data.X, data.y[target], groups=data.groups)
        bundle[target] = {"regressor": name, "final": model, "rmse_unseen": float(rmse[(target, name)])}
    return bundle


def predict_layers(bundle: dict[str, dict[str, Any]], arch: Architecture, steps: np.ndarray,
                   curve_points: int = 200) -> list[dict[str, Any]]:
    """Per layer: the five parameters (± the regressor's error on unseen models), t_peak, class, curve."""
    missing = [t for t in TARGETS if t not in bundle]
    if missing:
        raise ValueError(f"the saved regressors lack targets {missing}")
    X = feature_matrix(arch)
    params = {t: bundle[t]["final"].predict(X) for t in TARGETS}
    grid = curve_grid(steps, curve_points)
    rows = []
    for layer in range(arch.n_layers):
        p = {t: float(params[t][layer]) for t in TARGETS}
        p["lam"], p["gamma"], p["t0"] = max(p["lam"], 0.0), max(p["gamma"], 1e-12), max(p["t0"], 1e-9)
        t_peak = peak_step(p["lam"], p["gamma"], p["t0"])
        rows.append({"layer": layer, "rel_depth": (layer + 1) / arch.n_layers, **p,
                     **{f"{t}_err": bundle[t]["rmse_unseen"] for t in TARGETS}, "t_peak": t_peak,
                     "peak_class": classify(t_peak, steps), "curve_t": grid.tolist(),
                     "curve_y": emergence(grid, p["A"], p["lam"], p["gamma"], p["t0"], p["K"]).tolist()})
    return rows


def dump_bundle(bundle: dict[str, dict[str, Any]]) -> bytes:
    """skops, not pickle: loading it back cannot run arbitrary code from shared storage."""
    import skops.io as sio

    return sio.dumps(bundle)


def load_bundle(data: bytes) -> dict[str, dict[str, Any]]:
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=data)
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ValueError(f"refusing to load a model file with unexpected types: {refused}")
    return sio.loads(data, trusted=untrusted)

