"""Fit one model's layers and render its figures; cached on the ratios' content hash."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task

from massive_activations.emergence import FitSettings
from massive_activations.fit_run import CODE_MODULES, FITS, fit_inputs, fit_model
from massive_activations.plots import plot_depth_curves, plot_layer_fits
from massive_activations.store import Store
from tasks.policy import task_options


@task(name="fit-model", task_run_name="fit-{model}",
      **task_options(("store", "model", "ratios_hash", "series", "settings"), CODE_MODULES, retries=2))
def fit_model_task(store: str, model: str, ratios_hash: str, series: list[str], settings: dict) -> dict:
    """``ratios_hash`` is here for the cache key: new ratios on the store mean a new fit."""
    target = Store(store)
    result = fit_model(target, model, series, FitSettings(**settings))
    get_run_logger().info("%s: %s", model, result["status"])
    return result


@task(name="plot-fits", task_run_name="plot-{model}",
      **task_options(("store", "model", "fits_hash", "series"), CODE_MODULES + ("massive_activations.plots",),
                     retries=2))
def plot_fits_task(store: str, model: str, fits_hash: str, series: list[str]) -> dict:
    """PNG figures next to the data: plots/fits/<model>-<series>-layers.png and -depth.png."""
    target = Store(store)
    fits = target.read_dataset(FITS, where={"model": model})
    keys = {}
    for name in series:
        for kind, render in (("layers", plot_layer_fits), ("depth", plot_depth_curves)):
            key = f"plots/fits/{model}-{name}-{kind}.png"
            target.write_bytes(key, render(fits, model, name))
            keys[f"{name}-{kind}"] = key
    return keys


def cache_inputs(store: Store, model: str, series: list[str], settings: FitSettings) -> dict:
    return {"ratios_hash": fit_inputs(store, model, series, settings)["ratios_hash"], "settings": asdict(settings)}
