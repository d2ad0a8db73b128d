"""Record one forecast of a monitored run (with the architecture prior when regressors exist)."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.fit.forecast import forecast_to_store
from massive_activations.store import Store
from tasks.policy import task_options


@task(name="forecast", task_run_name="forecast-{model}-step{latest_step}", **task_options(retries=2, persist=False))
def forecast_task(store: str, model: str, latest_step: int, config_path: str) -> dict:
    result = forecast_to_store(Store(store), model, latest_step, config_path)
    if not result["with_prior"]:
        get_run_logger().info("no regressors on %s yet: forecasting from the fit alone", store)
    return result
