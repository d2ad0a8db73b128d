"""Fit one model's layers and render its figures (the store decides whether they are current)."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.fit.emergence import FitSettings
from massive_activations.fit.fit_run import fit_model
from massive_activations.store import Store
from tasks.policy import task_options


@task(name="fit-model", task_run_name="fit-{model}", **task_options(retries=2))
def fit_model_task(store: str, model: str, series: list[str], settings: dict, force: bool = False) -> dict:
    result = fit_model(Store(store), model, series, FitSettings(**settings), force=force)
    get_run_logger().info("%s: %s", model, result["status"])
    return result
