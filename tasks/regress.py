"""Train the regressors (cached on the fits' content hash) and predict for an architecture."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.architecture import resolve_architecture
from massive_activations.regress_run import CODE_MODULES, predict, train
from massive_activations.store import Store
from tasks.policy import task_options


@task(name="train-regressors", task_run_name="regress-{series}",
      **task_options(("store", "series", "seed", "regressors", "fits_hash"), CODE_MODULES, retries=1))
def train_regressors(store: str, series: str, seed: int, regressors: list[str], fits_hash: str) -> dict:
    """``fits_hash`` is here for the cache key: new fits mean new regressors."""
    result = train(Store(store), series, seed, tuple(regressors))
    get_run_logger().info("regressors for %s: %s (%d rows)", series, result["chosen"], result["n_rows"])
    return result


@task(name="predict-architecture", task_run_name="predict-{architecture}", retries=0, persist_result=False)
def predict_architecture(store: str, architecture: str | dict, total_steps: int | None, series: str) -> dict:
    result = predict(Store(store), resolve_architecture(architecture), total_steps, series)
    return {"architecture": result["architecture"], "figure": result["figure"],
            "rows": [{k: v for k, v in r.items() if k not in ("curve_t", "curve_y")} for r in result["rows"]]}
