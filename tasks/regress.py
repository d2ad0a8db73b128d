"""Train the regressors (the store decides whether they match the fits) and predict for an architecture."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.regress.architecture import resolve_architecture
from massive_activations.regress.regress_run import predict, train
from massive_activations.regress.regression import N_SPLITS
from massive_activations.store import Store
from tasks.policy import task_options


@task(name="train-regressors", task_run_name="regress-{series}", **task_options(retries=1))
def train_regressors(store: str, series: str, seed: int, regressors: list[str], force: bool = False,
                     n_splits: int = N_SPLITS, identified_only: bool = False) -> dict:
    logger = get_run_logger()
    result = train(Store(store), series, seed, tuple(regressors), force=force, report=logger.info,
                   n_splits=n_splits, identified_only=identified_only)
    logger.info("regressors for %s %s: %s (%d rows)", series, result["status"], result["chosen"], result["n_rows"])
    return result


@task(name="predict-architecture", task_run_name="predict-{architecture}", **task_options(retries=0, persist=False))
def predict_architecture(store: str, architecture: str | dict, total_steps: int | None, series: str) -> dict:
    result = predict(Store(store), resolve_architecture(architecture), total_steps, series)
    return {"architecture": result["architecture"], "figure": result["figure"],
            "rows": [{k: v for k, v in r.items() if k not in ("curve_t", "curve_y")} for r in result["rows"]]}
