"""Predict emergence from architecture alone: regressors, validation, persistence.

Rows are one per (model, layer) of one fitted series. Targets are the five raw parameters and the
identified descriptors of the fitted curve (``emergence.DESCRIPTORS``; a descriptor that does not
exist for a row, such as t_peak without an early peak, leaves that row out of its target). Each
target gets scikit-learn Pipelines (standard scaling + a regressor) inside
``TransformedTargetRegressor``, with a small grid search nested inside the training folds.

Two configurations (``CONFIGS``): ``project`` (all features, transforms chosen per target, all
regressors, all targets) and ``paper`` (the paper's ten features, its transforms — log1p, Yeo–Johnson
for K — and its five regressors, raw parameters only). Two protocols:

1. the paper's: seeded random 80/20 split, 5-fold CV on the 80% for selection, R² on the 20%;
   kept as the reference column beside the paper's Table 3;
2. leave-one-model-out (GroupKFold by model), because layers of one model are not independent.
   It chooses the saved model;
3. ``repeated_splits``: the random 80/20 split repeated over ``N_SPLITS`` seeds, with each score's
   mean and sd, R² on the learning scale (the transformed target the regressor is fitted to) and on
   the raw scale, and a "nested choice" row: in each split the regressor with the best inner-CV score
   on the training rows, scored on the test rows, so the number reported is never a best-of-many
   picked on test. One split of ~30 rows is too noisy to rank six regressors.

``identified_only`` narrows a dataset to the rows whose fit is identified (emergence.py), so that
an unidentified parameter (an A of 10¹⁷ where A and λ trade off) neither trains nor scores.

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
from xgboost import XGBRegressor

from massive_activations.fit.emergence import (
    DESCRIPTORS,
    EARLY_PEAK,
    PEAK_CLASSES,
    classify,
    curve_grid,
    emergence,
    peak_step,
)
from massive_activations.regress.architecture import FEATURES, PAPER_FEATURES, feature_matrix
from massive_activations.sources.catalog import Architecture

RAW_TARGETS = ("A", "lam", "gamma", "t0", "K")
TARGETS = RAW_TARGETS + DESCRIPTORS
CLASSES = PEAK_CLASSES
MIN_TARGET_ROWS = 4  # fewer rows with a value (or fewer than 2 models) and a target is not trained
REGRESSORS: dict[str, tuple[Any, dict[str, list[Any]]]] = {
    "ridge": (Ridge(), {"model__alpha": [0.1, 1.0, 10.0]}),
    "lasso": (Lasso(max_iter=20_000), {"model__alpha": [0.001, 0.01, 0.1]}),
    "random_forest": (RandomForestRegressor(n_estimators=100), {"model__max_depth": [None, 4]}),
    "gradient_boosting": (GradientBoostingRegressor(n_estimators=150), {"model__max_depth": [2, 3]}),
    "hist_gradient_boosting": (HistGradientBoostingRegressor(max_iter=150, min_samples_leaf=3),
                               {"model__max_depth": [2, None]}),
    # xgboost-cpu: the CPU wheel (the xgboost package pulls a 351 MB NCCL wheel)
    "xgboost": (XGBRegressor(n_estimators=150, learning_rate=0.1, n_jobs=1, verbosity=0),
                {"model__max_depth": [2, 4]}),
}


@dataclass(frozen=True)
class Config:
    """What a regression run learns from and how: features, per-target transforms, regressors, targets."""

    name: str
    features: tuple[str, ...]
    transforms: dict[str, str]  # target -> log1p | log | yeo-johnson
    regressors: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def columns(self) -> list[int]:
        return [FEATURES.index(f) for f in self.features]


CONFIGS = {c.name: c for c in (
    Config("project", FEATURES,
           {"A": "yeo-johnson", "lam": "log1p", "gamma": "log", "t0": "log1p", "K": "yeo-johnson",
            "y_first": "yeo-johnson", "y_last": "yeo-johnson", "rise": "log1p", "t_half": "log1p",
            "t_peak": "log1p", "peak_value": "yeo-johnson", "K_identified": "yeo-johnson"},
           tuple(REGRESSORS), TARGETS),
    Config("paper", PAPER_FEATURES,
           {"A": "log1p", "lam": "log1p", "gamma": "log1p", "t0": "log1p", "K": "yeo-johnson"},
           ("ridge", "lasso", "random_forest", "gradient_boosting", "xgboost"), RAW_TARGETS),
)}
# Beyond the types skops trusts by default, the exact ones a saved bundle holds (collected from bundles
# of every regressor and transform); anything else in a file from shared storage is refused.
TRUSTED_TYPES = frozenset({
    "massive_activations.regress.regression.signed_expm1", "massive_activations.regress.regression.signed_log1p",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.metrics._regression.mean_squared_error", "sklearn.metrics._scorer._Scorer",
    "sklearn.model_selection._split.GroupKFold", "sklearn.tree._tree.Tree",
    "xgboost.core.Booster", "xgboost.sklearn.XGBRegressor",
})


@dataclass
class Dataset:
    X: np.ndarray
    y: dict[str, np.ndarray]
    groups: np.ndarray  # model name per row
    peak_class: np.ndarray
    architectures: dict[str, Architecture] = field(default_factory=dict)
    identified: np.ndarray | None = None  # per row, whether its fit is identified (None: all are)

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
    value = lambda r, t: np.nan if r.get(t) is None else r[t]  # noqa: E731 - a descriptor absent for a row
    return Dataset(X=X, y={t: np.array([value(r, t) for r in rows], dtype=float) for t in TARGETS},
                   groups=np.array([r["model"] for r in rows]),
                   peak_class=np.array([r["peak_class"] for r in rows]), architectures=dict(architectures),
                   identified=np.array([bool(r.get("identified", True)) for r in rows]))


def identified_only(data: Dataset) -> Dataset:
    """The rows whose fit is identified; refused when fewer than 2 models keep one."""
    keep = np.ones(len(data.groups), bool) if data.identified is None else data.identified
    return Dataset(X=data.X[keep], y={t: v[keep] for t, v in data.y.items()}, groups=data.groups[keep],
                   peak_class=data.peak_class[keep], architectures=data.architectures,
                   identified=np.ones(int(keep.sum()), bool))


def signed_log1p(y: np.ndarray) -> np.ndarray:
    return np.sign(y) * np.log1p(np.abs(y))


def signed_expm1(z: np.ndarray) -> np.ndarray:
    return np.sign(z) * np.expm1(np.abs(z))


def target_transformer(kind: str, y: np.ndarray) -> tuple[Any, str]:
    """The transformer for a target's values, and a note when the one asked for cannot apply.

    log1p of values ≤ −1 (an A < 0 of a dip) is undefined: the sign-preserving log1p is used instead;
    log of values ≤ 0 likewise falls back to Yeo–Johnson.
    """
    if kind == "log" and np.all(y > 0):
        return FunctionTransformer(np.log, np.exp, check_inverse=False), ""
    if kind == "log1p" and np.all(y > -1):
        return FunctionTransformer(np.log1p, np.expm1, check_inverse=False), ""
    if kind == "log1p":
        return (FunctionTransformer(signed_log1p, signed_expm1, check_inverse=False),
                "values <= -1: sign-preserving log1p in place of log1p")
    note = "" if kind == "yeo-johnson" else f"values outside the domain of {kind}: Yeo-Johnson instead"
    return PowerTransformer(method="yeo-johnson"), note


def quiet_single_thread(fn):
    """Lasso at the small end of its alpha grid may stop at max_iter; the grid search scores that
    candidate like any other, so the warning is noise here. The fit also runs on one BLAS/OpenMP
    thread: on a few dozen rows, HistGradientBoosting's thread pool made a grid search 11 s where one
    thread takes 1 s, and the fits already run one per core (``N_JOBS``).

    scikit-learn's parameter validation is skipped inside: it re-checks the same fixed parameters of
    ``REGRESSORS`` on every tree of every boosting stage (a third of a gradient-boosting fit on a few
    dozen rows); tests/test_regression.py validates each regressor at each grid value once instead."""
    from functools import wraps

    from sklearn import config_context
    from threadpoolctl import threadpool_limits

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings(), threadpool_limits(limits=1), config_context(skip_parameter_validation=True):
            warnings.simplefilter("ignore", ConvergenceWarning)
            return fn(*args, **kwargs)
    return wrapper


def make_regressor(name: str, transformer: Any, inner_cv: Any, seed: int) -> TransformedTargetRegressor:
    estimator, grid = REGRESSORS[name]
    estimator = clone(estimator)
    if "random_state" in estimator.get_params():
        estimator.set_params(random_state=seed)
    search = GridSearchCV(Pipeline([("scale", StandardScaler()), ("model", estimator)]), grid, cv=inner_cv,
                          scoring="neg_mean_squared_error")
    # check_inverse off: the transforms are exact inverses in arithmetic; where floating point cannot invert
    # (Yeo-Johnson on a narrow or huge range) the predictions are NaN, which _scores reports per score
    return TransformedTargetRegressor(regressor=search, transformer=clone(transformer), check_inverse=False)


N_JOBS = 2  # worker processes the protocols' fits run in (joblib's loky, as scikit-learn's n_jobs)


@quiet_single_thread
def _fit_predict(name: str, transformer: Any, inner: Any, fit_args: dict[str, Any], seed: int, X_train: np.ndarray,  # noqa: N803
                 y_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, Any]:  # noqa: N803
    model = make_regressor(name, transformer, inner, seed).fit(X_train, y_train, **fit_args)
    return predictions(model, X_test), model


def _in_parallel(tasks: list[tuple], n_jobs: int | None) -> list[tuple[np.ndarray, Any]]:
    """``_fit_predict`` on each task's arguments, in worker processes: every fit is seeded and
    independent of the others, so the results are those of fitting one after another."""
    from joblib import Parallel, delayed

    workers = N_JOBS if n_jobs is None else n_jobs
    if workers == 1 or len(tasks) < 2:
        return [_fit_predict(*task) for task in tasks]
    return Parallel(n_jobs=workers, backend="loky")(delayed(_fit_predict)(*task) for task in tasks)


def _target_rows(data: Dataset, target: str) -> tuple[np.ndarray, str]:
    """Rows where the target has a value, and why the target cannot be learnt ("" when it can)."""
    rows = np.flatnonzero(np.isfinite(data.y[target]))
    n_models = len(np.unique(data.groups[rows]))
    if len(rows) < MIN_TARGET_ROWS or n_models < 2:
        return rows, f"not trained: {len(rows)} rows from {n_models} models have a value"
    return rows, ""


def _skipped(protocol: str, config: Config, target: str, name: str, note: str) -> dict[str, Any]:
    return {"protocol": protocol, "config": config.name, "target": target, "regressor": name, "r2": float("nan"),
            "mae": float("nan"), "rmse": float("nan"), "note": note, "n_test": 0}


def _count_undefined(rows: list[dict], data: Dataset) -> list[dict]:
    """Each score with how many rows were left out because its target has no value there (a descriptor
    that does not exist for the row, a parameter that is not finite): no NaN reaches scikit-learn."""
    for row in rows:
        row["n_undefined"] = int(np.sum(~np.isfinite(data.y[row["target"]])))
    return rows


def _meaningful(y_test: np.ndarray) -> str:
    if len(y_test) < 3:
        return f"not meaningful: {len(y_test)} test rows"
    if np.std(y_test) <= 1e-12 * max(1.0, np.abs(y_test).max()):
        return "not meaningful: constant target in the test rows"
    return ""


def _scores(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """R², MAE, RMSE; none where a prediction is not finite (the target transform's inverse can overflow
    on a target spanning many decades, e.g. an unidentified A), which the note says."""
    if not np.all(np.isfinite(pred)):
        bad = int(np.sum(~np.isfinite(pred)))
        return {"r2": float("nan"), "mae": float("nan"), "rmse": float("nan"),
                "note": f"not scored: {bad} of {len(pred)} predictions are not finite (the target transform's "
                        "inverse overflowed)"}
    return {"r2": float(r2_score(y, pred)) if len(y) > 1 else float("nan"),
            "mae": float(mean_absolute_error(y, pred)), "rmse": float(np.sqrt(mean_squared_error(y, pred))),
            "note": _meaningful(y)}


def predictions(model: Any, X: np.ndarray) -> np.ndarray:  # noqa: N803
    """Predictions, NaN where the target transform's inverse is undefined: ``_scores`` reports those, so
    scikit-learn's warning about them is not repeated on the console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some values in column .* inverse-transformed data are NaN")
        warnings.filterwarnings("ignore", message="(invalid value|overflow) encountered in power",
                                category=RuntimeWarning)
        return model.predict(X)


def permutation_importance(model: Any, X: np.ndarray, y: np.ndarray, n_repeats: int,  # noqa: N803
                           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's permutation importance (the mean and sd per feature of the drop in R² when its
    column is shuffled), with the shuffles scikit-learn draws for ``seed``, but every shuffled copy
    predicted in one call: the fitted models predict row by row, so the scores are the same
    (tests/test_regression.py), where one prediction per copy (1 + features × repeats, ~6 ms each
    for a gradient-boosting model) took 16 of the micro suite's 45 s regress stage."""
    from sklearn.inspection import permutation_importance as drawn_by_sklearn

    copies: list[np.ndarray] = []

    def keep(_model: Any, X_shuffled: np.ndarray, _y: np.ndarray) -> float:  # noqa: N803
        copies.append(np.array(X_shuffled, copy=True))  # scikit-learn shuffles the next repeat in place
        return 0.0

    drawn_by_sklearn(model, X, y, scoring=keep, n_repeats=n_repeats, random_state=seed)
    predicted = predictions(model, np.concatenate(copies)).reshape(len(copies), len(X))
    scores = np.array([r2_score(y, p) for p in predicted])  # the baseline first, then feature by feature
    drop = scores[0] - scores[1:].reshape(X.shape[1], n_repeats)
    return drop.mean(axis=1), drop.std(axis=1)


def _inner_groups_cv(groups: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Selection folds inside a training set, and the fit arguments they need: by model (the groups go
    to ``fit``) when it holds several, else by row (no groups: KFold ignores them)."""
    n = len(np.unique(groups))
    if n >= 2:
        return GroupKFold(n_splits=min(5, n)), {"groups": groups}
    if len(groups) < 2:
        raise ValueError("a training fold holds a single row; too few layers to select a model")
    return KFold(n_splits=min(3, len(groups))), {}


def paper_protocol(data: Dataset, config: Config = CONFIGS["project"], seed: int = 0,
                   n_jobs: int | None = None) -> list[dict]:
    """Random 80/20 split, 5-fold CV on the 80% for selection, test scores on the 20%.

    One split of all rows; a target without a value on some rows uses the rest of each side.
    ``n_jobs``: worker processes for the fits (None: N_JOBS)."""
    train_all, test_all = train_test_split(np.arange(len(data.groups)), test_size=0.2, random_state=seed)
    X = data.X[:, config.columns]
    rows: list[dict | None] = []
    tasks, places, notes = [], [], {}
    for target in config.targets:
        have, why = _target_rows(data, target)
        train, test = np.intersect1d(train_all, have), np.intersect1d(test_all, have)
        if why or len(train) < 2 or len(test) == 0:
            why = why or f"not trained: {len(train)} training and {len(test)} test rows have a value"
            rows += [_skipped("random_80_20", config, target, n, why) for n in config.regressors]
            continue
        y = data.y[target]
        transformer, notes[target] = target_transformer(config.transforms[target], y[have])
        inner = KFold(n_splits=min(5, len(train)), shuffle=True, random_state=seed)
        for name in config.regressors:
            tasks.append((name, transformer, inner, {}, seed, X[train], y[train], X[test]))
            places.append((len(rows), target, name, y[test]))
            rows.append(None)
    for (pred, _), (at, target, name, truth) in zip(_in_parallel(tasks, n_jobs), places, strict=True):
        score = _scores(truth, pred)
        score["note"] = "; ".join(n for n in (score["note"], notes[target]) if n)
        rows[at] = {"protocol": "random_80_20", "config": config.name, "target": target, "regressor": name,
                    **score, "n_test": len(truth)}
    return _count_undefined(rows, data)


def leave_one_model_out(data: Dataset, config: Config = CONFIGS["project"], seed: int = 0,
                        n_jobs: int | None = None) -> tuple[list[dict], dict[tuple[str, str], list[Any]]]:
    """GroupKFold by model; scores pooled over the held-out models. Also returns the fold models
    (for inspection; they are not persisted). ``n_jobs``: worker processes for the fits (None: N_JOBS)."""
    X = data.X[:, config.columns]
    rows: list[dict | None] = []
    tasks, places, notes = [], [], {}
    for target in config.targets:
        have, why = _target_rows(data, target)
        if why:
            rows += [_skipped("leave_one_model_out", config, target, n, why) for n in config.regressors]
            continue
        Xh, y, groups = X[have], data.y[target][have], data.groups[have]  # noqa: N806
        transformer, notes[target] = target_transformer(config.transforms[target], y)
        folds = list(GroupKFold(n_splits=len(np.unique(groups))).split(Xh, y, groups))
        for name in config.regressors:
            for train, test in folds:
                inner, fit_args = _inner_groups_cv(groups[train])
                tasks.append((name, transformer, inner, fit_args, seed, Xh[train], y[train], Xh[test]))
            places.append((len(rows), target, name, y, folds))
            rows.append(None)
    results = iter(_in_parallel(tasks, n_jobs))
    fold_models: dict[tuple[str, str], list[Any]] = {}
    for at, target, name, y, folds in places:
        pred = np.empty_like(y)
        models = fold_models[(target, name)] = []
        for _, test in folds:
            pred[test], model = next(results)
            models.append(model)
        score = _scores(y, pred)
        score["note"] = "; ".join(n for n in (score["note"], notes[target]) if n)
        rows[at] = {"protocol": "leave_one_model_out", "config": config.name, "target": target,
                    "regressor": name, **score, "n_test": len(y)}
    return _count_undefined(rows, data), fold_models


N_SPLITS = 20  # seeds of the repeated 80/20 split


@quiet_single_thread
def _split_task(name: str, transformer: Any, seed: int, X_train: np.ndarray, y_train: np.ndarray,  # noqa: N803
                X_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:  # noqa: N803
    """One regressor on one split: raw-scale predictions, learning-scale truth and predictions, and its
    inner-CV score on the training rows (what the nested choice may look at)."""
    inner = KFold(n_splits=min(5, len(y_train)), shuffle=True, random_state=seed)
    model = make_regressor(name, transformer, inner, seed).fit(X_train, y_train)
    return {"raw": predictions(model, X_test),
            "learn": model.regressor_.predict(X_test),
            "learn_truth": model.transformer_.transform(y_test.reshape(-1, 1)).ravel(),
            "inner": float(model.regressor_.best_score_)}


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(r2_score(y, pred)) if len(y) > 1 and np.all(np.isfinite(pred)) else float("nan")


def _spread(values: list[float]) -> tuple[float, float, int]:
    """Mean and sd over the splits that scored, and how many did."""
    v = np.array([x for x in values if np.isfinite(x)])
    return (float(v.mean()) if len(v) else float("nan"), float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            len(v))


def repeated_splits(data: Dataset, config: Config = CONFIGS["project"], n_splits: int = N_SPLITS, seed: int = 0,
                    n_jobs: int | None = None) -> list[dict]:
    """The random 80/20 split over ``n_splits`` seeds (seed, seed + 1, …): per (target, regressor) the
    mean and sd of R² on the raw and on the learning scale, and per target a ``nested choice`` row.

    A split whose test rows are fewer than 3 or constant in the target is not scored (``n_splits``
    of the row says how many were)."""
    if n_splits < 2:
        raise ValueError(f"repeated splits need n_splits >= 2, got {n_splits}")
    X = data.X[:, config.columns]
    tasks, places, rows, notes = [], [], [], {}
    for target in config.targets:
        have, why = _target_rows(data, target)
        if why:
            rows += [{**_skipped("repeated_80_20", config, target, n, why), "n_splits": 0}
                     for n in (*config.regressors, "nested choice")]
            continue
        y = data.y[target]
        transformer, notes[target] = target_transformer(config.transforms[target], y[have])
        for s in range(seed, seed + n_splits):
            train_all, test_all = train_test_split(np.arange(len(data.groups)), test_size=0.2, random_state=s)
            train, test = np.intersect1d(train_all, have), np.intersect1d(test_all, have)
            if len(train) < 2 or _meaningful(y[test]):
                continue
            for name in config.regressors:
                tasks.append((name, transformer, s, X[train], y[train], X[test], y[test]))
                places.append((target, s, name, y[test]))
    workers = N_JOBS if n_jobs is None else n_jobs
    if workers == 1 or len(tasks) < 2:
        results = [_split_task(*t) for t in tasks]
    else:
        from joblib import Parallel, delayed
        results = Parallel(n_jobs=workers, backend="loky")(delayed(_split_task)(*t) for t in tasks)
    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    splits: dict[tuple[str, int], list[tuple[str, dict, np.ndarray]]] = {}
    for (target, s, name, truth), out in zip(places, results, strict=True):
        splits.setdefault((target, s), []).append((name, out, truth))
    for (target, _), entries in splits.items():
        for name, out, truth in entries:
            score = per.setdefault((target, name), {"raw": [], "learn": [], "n_test": []})
            score["n_test"].append(len(truth))
            score["raw"].append(_r2(truth, out["raw"]))
            score["learn"].append(_r2(out["learn_truth"], out["learn"]))
        name, out, truth = max(entries, key=lambda e: e[1]["inner"])  # chosen on the training rows only
        nested = per.setdefault((target, "nested choice"), {"raw": [], "learn": [], "chosen": [], "n_test": []})
        nested["n_test"].append(len(truth))
        nested["raw"].append(_r2(truth, out["raw"]))
        nested["learn"].append(_r2(out["learn_truth"], out["learn"]))
        nested["chosen"].append(name)
    for target in config.targets:
        for name in (*config.regressors, "nested choice"):
            if target not in notes:
                continue  # not trained: its rows are in already
            if (target, name) not in per:
                rows.append({**_skipped("repeated_80_20", config, target, name,
                                        "not scored: no split had 3 or more varying test rows"), "n_splits": 0})
                continue
            score = per[(target, name)]
            r2, r2_sd, scored = _spread(score["raw"])
            learn, learn_sd, _ = _spread(score["learn"])
            chosen = score.get("chosen", [])
            note = "; ".join(n for n in (notes.get(target, ""), (
                "chosen per split: " + ", ".join(f"{c} {chosen.count(c)}" for c in sorted(set(chosen))))
                if chosen else "") if n)
            rows.append({"protocol": "repeated_80_20", "config": config.name, "target": target, "regressor": name,
                         "r2": r2, "r2_sd": r2_sd, "r2_learning": learn, "r2_learning_sd": learn_sd,
                         "n_splits": scored, "mae": float("nan"), "rmse": float("nan"), "note": note,
                         "n_test": int(round(np.mean(score["n_test"])))})  # per split, on average
    return _count_undefined(rows, data)


def _classifier(seed: int) -> RandomForestClassifier:
    return RandomForestClassifier(n_estimators=200, random_state=seed)


def classify_peaks(data: Dataset, seed: int = 0) -> list[dict]:
    """The peak class from architecture, under both protocols: accuracy and confusion matrix."""
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
                guess = _classifier(seed).fit(data.X[tr], labels[tr]).predict(data.X[te])
            truth.extend(labels[te])
            pred.extend(guess)
        matrix = confusion_matrix(truth, pred, labels=list(CLASSES))
        majority = max(CLASSES, key=list(truth).count)
        out.append({"protocol": protocol, "accuracy": float(accuracy_score(truth, pred)), "n_test": len(truth),
                    "majority_share": list(truth).count(majority) / len(truth),
                    "confusion": matrix.tolist(), "labels": list(CLASSES),
                    "note": "; ".join(sorted(notes)) or _meaningful(np.array([CLASSES.index(c) for c in truth],
                                                                             dtype=float))})
    return out


def choose_best(lomo_rows: list[dict]) -> dict[str, str]:
    """Per target, the regressor with the best leave-one-model-out R² (the stricter protocol).

    Targets that were not trained (no finite score) get none."""
    best: dict[str, tuple[float, str]] = {}
    for row in lomo_rows:
        if not np.isfinite(row["r2"]):
            continue
        if row["target"] not in best or row["r2"] > best[row["target"]][0]:
            best[row["target"]] = (row["r2"], row["regressor"])
    return {t: name for t, (_, name) in best.items()}


@quiet_single_thread
def fit_final(data: Dataset, best: dict[str, str], lomo_rows: list[dict], seed: int = 0,
              config: Config = CONFIGS["project"]) -> dict[str, dict[str, Any]]:
    """Each target's chosen regressor refitted on all its rows, and the peak classifier on all rows.

    A regressor's uncertainty for a new architecture is the RMSE of its leave-one-model-out
    predictions: the error it made on models it had not seen.
    """
    rmse = {(r["target"], r["regressor"]): r["rmse"] for r in lomo_rows}
    X = data.X[:, config.columns]
    bundle: dict[str, dict[str, Any]] = {}
    for target, name in best.items():
        have, _ = _target_rows(data, target)
        transformer, _ = target_transformer(config.transforms[target], data.y[target][have])
        inner, fit_args = _inner_groups_cv(data.groups[have])
        model = make_regressor(name, transformer, inner, seed)
        model.fit(X[have], data.y[target][have], **fit_args)
        bundle[target] = {"regressor": name, "final": model, "rmse_unseen": float(rmse[(target, name)])}
    if len(np.unique(data.peak_class)) > 1:
        bundle["peak_class"] = {"regressor": "random_forest_classifier",
                                "final": _classifier(seed).fit(X, data.peak_class)}
    else:
        bundle["peak_class"] = {"regressor": "constant", "constant": str(data.peak_class[0])}
    return bundle


def predict_layers(bundle: dict[str, dict[str, Any]], arch: Architecture, steps: np.ndarray,
                   curve_points: int = 200) -> list[dict[str, Any]]:
    """Per layer: the five parameters and the descriptors (± the regressor's error on unseen models),
    the predicted class, and the curve of the predicted parameters.

    ``t_peak`` and ``peak_value`` are given only where the class is an early peak; the curve's own
    stationary point is ``t_stationary`` and its class ``curve_class``."""
    missing = [t for t in RAW_TARGETS if t not in bundle]
    if missing:
        raise ValueError(f"the saved regressors lack targets {missing}")
    X = feature_matrix(arch)
    values = {t: bundle[t]["final"].predict(X) if t in bundle else np.full(arch.n_layers, np.nan) for t in TARGETS}
    clf = bundle.get("peak_class", {})
    classes = clf["final"].predict(X) if "final" in clf else np.full(arch.n_layers, clf.get("constant", ""))
    grid = curve_grid(steps, curve_points)
    rows = []
    for layer in range(arch.n_layers):
        p = {t: float(values[t][layer]) for t in TARGETS}
        p["lam"], p["gamma"], p["t0"] = max(p["lam"], 0.0), max(p["gamma"], 1e-12), max(p["t0"], 1e-9)
        t_stat = peak_step(p["lam"], p["gamma"], p["t0"])
        if classes[layer] != EARLY_PEAK:
            p["t_peak"] = p["peak_value"] = float("nan")
        rows.append({"layer": layer, "rel_depth": (layer + 1) / arch.n_layers, **p,
                     **{f"{t}_err": bundle[t]["rmse_unseen"] if t in bundle else float("nan") for t in TARGETS},
                     "peak_class": str(classes[layer]), "t_stationary": t_stat,
                     "curve_class": classify(p["A"], p["lam"], t_stat, steps), "curve_t": grid.tolist(),
                     "curve_y": emergence(grid, p["A"], p["lam"], p["gamma"], p["t0"], p["K"]).tolist()})
    return rows


def dump_bundle(bundle: dict[str, dict[str, Any]]) -> bytes:
    """skops, not pickle: loading it back cannot run arbitrary code from shared storage."""
    import skops.io as sio

    return sio.dumps(bundle)


def load_bundle(data: bytes) -> dict[str, dict[str, Any]]:
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=data)
    refused = [t for t in untrusted if t not in TRUSTED_TYPES]
    if refused:
        raise ValueError(f"refusing to load a model file with unexpected types: {refused}")
    return sio.loads(data, trusted=untrusted)

